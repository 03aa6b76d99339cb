//! `data.format`: the shape of the data files. The two tasks read different files (SFT:
//! JSONL in dolly, alpaca or chat shape; STS: sentence pairs in JSONL, CSV or TSV), so the
//! value is one of the union, and [`FormatChoice::check`] says whether the run's task reads
//! it. A value that is neither is a config error naming the key, its line and the allowed
//! values.
use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, Result};

use super::TaskKind;

/// A data file format, as a config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatChoice {
    /// Each loader decides (SFT: per file from its first object; STS: by the extension).
    #[default]
    Auto,
    /// SFT: `instruction`, `context`, `response`.
    Dolly,
    /// SFT: `instruction`, `input`, `output`.
    Alpaca,
    /// SFT: a `messages` list (the value may be spelt `messages` too).
    Chat,
    /// STS: JSON lines (also spelt `json`).
    Jsonl,
    /// STS: comma-separated with a header.
    Csv,
    /// STS: tab-separated with a header.
    Tsv,
}

use FormatChoice::*;

/// Every format, in the order error messages list them.
const ALL: [FormatChoice; 7] = [Auto, Dolly, Alpaca, Chat, Jsonl, Csv, Tsv];
const SFT: [FormatChoice; 4] = [Auto, Dolly, Alpaca, Chat];
const STS: [FormatChoice; 4] = [Auto, Jsonl, Csv, Tsv];

impl FormatChoice {
    /// What a config may write, for error messages.
    pub const ALLOWED: &'static str =
        "auto, dolly, alpaca or chat (task = \"sft\"); auto, jsonl, csv or tsv (task = \"sts\")";

    /// The name a config writes.
    pub fn name(self) -> &'static str {
        match self {
            Auto => "auto",
            Dolly => "dolly",
            Alpaca => "alpaca",
            Chat => "chat",
            Jsonl => "jsonl",
            Csv => "csv",
            Tsv => "tsv",
        }
    }

    /// The formats `task` reads.
    pub fn of_task(task: TaskKind) -> &'static [FormatChoice] {
        match task {
            TaskKind::Sft => &SFT,
            TaskKind::Sts => &STS,
        }
    }

    /// `auto, dolly, alpaca or chat`: the formats `task` reads, for error messages.
    pub fn allowed_for(task: TaskKind) -> String {
        let names: Vec<&str> = Self::of_task(task).iter().map(|f| f.name()).collect();
        let (last, rest) = names.split_last().expect("every task reads some format");
        format!("{} or {last}", rest.join(", "))
    }

    /// An error unless `task` reads this format.
    pub fn check(self, task: TaskKind) -> Result<()> {
        if Self::of_task(task).contains(&self) {
            Ok(())
        } else {
            Err(self.not_read_by(task))
        }
    }

    /// The error for a format that `task` does not read.
    pub fn not_read_by(self, task: TaskKind) -> anyhow::Error {
        anyhow!("data.format `{self}`: expected {}", Self::allowed_for(task))
    }
}

impl fmt::Display for FormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FormatChoice {
    type Err = anyhow::Error;
    /// Case-insensitive; `messages` is `chat`, `json` is `jsonl`.
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase();
        let alias = match key.as_str() {
            "messages" => Some(Chat),
            "json" => Some(Jsonl),
            _ => None,
        };
        alias
            .or_else(|| ALL.into_iter().find(|f| f.name() == key))
            .ok_or_else(|| anyhow!("unknown data format `{s}`, expected {}", Self::ALLOWED))
    }
}

super::serde_as_string!(FormatChoice);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_accepted_before_parses() {
        let parse = |s: &str| s.parse::<FormatChoice>().unwrap();
        for f in ALL {
            assert_eq!(parse(f.name()), f);
        }
        assert_eq!(parse("messages"), Chat);
        assert_eq!(parse("json"), Jsonl);
        assert_eq!(parse(" CSV "), Csv);
        let err = "xml".parse::<FormatChoice>().unwrap_err().to_string();
        assert!(
            err.contains("`xml`") && err.contains(FormatChoice::ALLOWED),
            "{err}"
        );
    }

    #[test]
    fn each_task_reads_its_own_formats() {
        assert_eq!(
            FormatChoice::allowed_for(TaskKind::Sft),
            "auto, dolly, alpaca or chat"
        );
        assert_eq!(
            FormatChoice::allowed_for(TaskKind::Sts),
            "auto, jsonl, csv or tsv"
        );
        assert!(Auto.check(TaskKind::Sft).is_ok() && Auto.check(TaskKind::Sts).is_ok());
        assert!(Dolly.check(TaskKind::Sft).is_ok() && Tsv.check(TaskKind::Sts).is_ok());
        let err = Csv.check(TaskKind::Sft).unwrap_err().to_string();
        assert_eq!(
            err,
            "data.format `csv`: expected auto, dolly, alpaca or chat"
        );
        let err = Chat.check(TaskKind::Sts).unwrap_err().to_string();
        assert_eq!(err, "data.format `chat`: expected auto, jsonl, csv or tsv");
    }
}

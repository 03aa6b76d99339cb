//! Sentence pairs with a similarity score (STS): JSONL, CSV or TSV.
//!
//! The shapes of the common datasets are read as they are:
//!
//! | shape | file | fields |
//! |---|---|---|
//! | JGLUE JSTS, ftlab's `data/sts/` | JSONL | `sentence1`, `sentence2`, `label` (0–5); other fields (`lang`, `sentence_pair_id`, ...) are ignored, `lang` is kept |
//! | STS-B (GLUE) | TSV with a header | `sentence1`, `sentence2`, `score` (0–5); quotes are plain characters |
//! | STS-B / JSTS exported as CSV | CSV with a header | `sentence1`, `sentence2`, `label` or `score`; RFC 4180 quoting |
//!
//! The label column may be called `label`, `score` or `similarity_score`; it must be a
//! number in [0, 5] (a numeric string is accepted). Like the SFT loader, every malformed
//! line of every file is collected with its file and line and reported at once as a
//! [`DataError`].
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde_json::Value;

use super::example::{DataError, Problem};
use crate::config::{FormatChoice, TaskKind};

/// Gold similarity labels lie in `[0, LABEL_MAX]`.
pub const LABEL_MAX: f32 = 5.0;

/// Names the label column may have.
pub const LABEL_FIELDS: [&str; 3] = ["label", "score", "similarity_score"];

/// One sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct StsPair {
    pub sentence1: String,
    pub sentence2: String,
    /// Gold similarity in [0, 5].
    pub label: f32,
    /// `lang` field of the line, if any (`en`, `ja`).
    pub lang: Option<String>,
    /// `file:line` the pair came from.
    pub origin: String,
}

// The scale is part of the run's config; the targets are computed here.
pub use crate::config::LabelScale;

/// The cosine similarity a label is trained towards under a [`LabelScale`].
pub trait LabelTarget {
    fn target(self, label: f32) -> f32;
}

impl LabelTarget for LabelScale {
    fn target(self, label: f32) -> f32 {
        match self {
            Self::Signed => rescale_label(label),
            Self::Unit => label / LABEL_MAX,
        }
    }
}

/// `label` in [0, 5] → [−1, 1] (`LabelScale::Signed`).
pub fn rescale_label(label: f32) -> f32 {
    label / (LABEL_MAX / 2.0) - 1.0
}

/// File shape of a pair file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StsFormat {
    /// From the extension: `.csv` → CSV, `.tsv` / `.txt` → TSV, anything else → JSONL.
    #[default]
    Auto,
    Jsonl,
    Csv,
    Tsv,
}

/// The STS formats of `data.format` (the others are SFT files).
impl TryFrom<FormatChoice> for StsFormat {
    type Error = anyhow::Error;
    fn try_from(f: FormatChoice) -> Result<Self> {
        Ok(match f {
            FormatChoice::Auto => Self::Auto,
            FormatChoice::Jsonl => Self::Jsonl,
            FormatChoice::Csv => Self::Csv,
            FormatChoice::Tsv => Self::Tsv,
            other => return Err(other.not_read_by(TaskKind::Sts)),
        })
    }
}

impl FromStr for StsFormat {
    type Err = anyhow::Error;
    /// The names (and aliases) `data.format` accepts for STS.
    fn from_str(s: &str) -> Result<Self> {
        match s.parse::<FormatChoice>().map(Self::try_from) {
            Ok(Ok(f)) => Ok(f),
            _ => bail!(
                "STS data format `{}`: expected {}",
                s.trim().to_ascii_lowercase(),
                FormatChoice::allowed_for(TaskKind::Sts)
            ),
        }
    }
}

impl StsFormat {
    /// The concrete format of `path` (`Auto` decided by the extension).
    pub fn resolve(self, path: &Path) -> Self {
        if self != Self::Auto {
            return self;
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("csv") => Self::Csv,
            Some("tsv") | Some("txt") => Self::Tsv,
            _ => Self::Jsonl,
        }
    }
}

/// Reads the pairs of one file. Every problem is collected; if there is any, the error is a
/// [`DataError`] listing them with file and line. A file without pairs is an error.
pub fn load_pairs(path: &Path, format: StsFormat) -> Result<Vec<StsPair>> {
    let file = path.display().to_string();
    let bytes = match crate::builtin::read(path) {
        Ok(b) => b,
        Err(e) => {
            return Err(DataError {
                stage: "loading sentence pairs".into(),
                problems: vec![Problem {
                    file,
                    line: None,
                    message: format!("cannot read the file: {e}"),
                }],
            }
            .into())
        }
    };
    parse_pairs(&bytes, &file, format.resolve(path))
}

/// Parses pair data (`file` names it in messages). `format` must not be `Auto`
/// (JSONL is assumed then).
pub fn parse_pairs(bytes: &[u8], file: &str, format: StsFormat) -> Result<Vec<StsPair>> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut problems = Vec::new();
    let pairs = match format {
        StsFormat::Csv => parse_delimited(bytes, file, b',', true, &mut problems),
        StsFormat::Tsv => parse_delimited(bytes, file, b'\t', false, &mut problems),
        StsFormat::Jsonl | StsFormat::Auto => parse_jsonl(bytes, file, &mut problems),
    };
    if pairs.is_empty() && problems.is_empty() {
        problems.push(Problem {
            file: file.to_string(),
            line: None,
            message: "no sentence pairs in the file".into(),
        });
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(DataError {
            stage: "loading sentence pairs".into(),
            problems,
        }
        .into())
    }
}

/// A label value: a number, or a string holding one, in [0, 5].
fn parse_label(v: &Value) -> std::result::Result<f32, String> {
    let x = match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("label {n} is not a number"))?,
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("label {s:?} is not a number"))?,
        other => return Err(format!("label must be a number, found {other}")),
    };
    check_label(x)
}

fn check_label(x: f64) -> std::result::Result<f32, String> {
    if !x.is_finite() || !(0.0..=LABEL_MAX as f64).contains(&x) {
        return Err(format!(
            "label {x} is outside [0, {LABEL_MAX}] (rescale 0–1 scores by 5)"
        ));
    }
    Ok(x as f32)
}

fn check_sentence(name: &str, s: &str) -> std::result::Result<String, String> {
    if s.trim().is_empty() {
        Err(format!("`{name}` is empty"))
    } else {
        Ok(s.to_string())
    }
}

fn parse_jsonl(bytes: &[u8], file: &str, problems: &mut Vec<Problem>) -> Vec<StsPair> {
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let mut problem = |message: String| {
            problems.push(Problem {
                file: file.to_string(),
                line: Some(line),
                message,
            })
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                problem(format!(
                    "not valid UTF-8 (invalid byte at column {})",
                    e.valid_up_to() + 1
                ));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                problem("expected a JSON object with sentence1, sentence2 and label".into());
                continue;
            }
            Err(e) => {
                problem(format!("invalid JSON: {e}"));
                continue;
            }
        };
        let field = |name: &str| -> std::result::Result<String, String> {
            match obj.get(name) {
                Some(Value::String(s)) => check_sentence(name, s),
                Some(other) => Err(format!("`{name}` must be a string, found {other}")),
                None => Err(format!("missing field `{name}`")),
            }
        };
        let label = match LABEL_FIELDS.iter().find_map(|k| obj.get(*k)) {
            Some(v) => parse_label(v),
            None => Err("missing field `label` (or `score`)".to_string()),
        };
        match (field("sentence1"), field("sentence2"), label) {
            (Ok(sentence1), Ok(sentence2), Ok(label)) => out.push(StsPair {
                sentence1,
                sentence2,
                label,
                lang: obj.get("lang").and_then(Value::as_str).map(str::to_string),
                origin: format!("{file}:{line}"),
            }),
            (a, b, c) => {
                let msgs: Vec<String> = [a.err(), b.err(), c.err()].into_iter().flatten().collect();
                problem(msgs.join("; "));
            }
        }
    }
    out
}

/// CSV (quoted) or TSV (GLUE style: quotes are ordinary characters) with a header naming
/// the columns.
fn parse_delimited(
    bytes: &[u8],
    file: &str,
    delimiter: u8,
    quoting: bool,
    problems: &mut Vec<Problem>,
) -> Vec<StsPair> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .flexible(true)
        .has_headers(false)
        .from_reader(bytes);
    let mut out = Vec::new();
    let mut records = reader.byte_records();
    let problem = |problems: &mut Vec<Problem>, line: Option<usize>, message: String| {
        problems.push(Problem {
            file: file.to_string(),
            line,
            message,
        })
    };
    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            problem(problems, Some(1), format!("cannot read the header: {e}"));
            return out;
        }
        None => return out,
    };
    let names: Vec<String> = header
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase())
        .collect();
    let col = |n: &str| names.iter().position(|c| c == n);
    let (s1, s2) = (col("sentence1"), col("sentence2"));
    let lab = LABEL_FIELDS.iter().find_map(|n| col(n));
    let lang = col("lang");
    let (Some(s1), Some(s2), Some(lab)) = (s1, s2, lab) else {
        problem(
            problems,
            Some(1),
            format!(
                "the header must name the columns sentence1, sentence2 and label (or score); found {:?}",
                names
            ),
        );
        return out;
    };
    let width = names.len();
    for rec in records {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize);
                problem(problems, line, format!("malformed record: {e}"));
                continue;
            }
        };
        let line = rec.position().map(|p| p.line() as usize);
        if rec.len() == 1
            && rec
                .get(0)
                .is_some_and(|f| f.iter().all(u8::is_ascii_whitespace))
        {
            continue; // blank line
        }
        if rec.len() != width {
            problem(
                problems,
                line,
                format!(
                    "expected {width} fields (as in the header), found {}",
                    rec.len()
                ),
            );
            continue;
        }
        let text = |i: usize, name: &str| -> std::result::Result<String, String> {
            let raw = rec.get(i).unwrap_or_default();
            let s = std::str::from_utf8(raw).map_err(|_| format!("`{name}` is not valid UTF-8"))?;
            check_sentence(name, s)
        };
        let label = text(lab, "label").and_then(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("label {:?} is not a number", s.trim()))
                .and_then(check_label)
        });
        match (text(s1, "sentence1"), text(s2, "sentence2"), label) {
            (Ok(sentence1), Ok(sentence2), Ok(label)) => out.push(StsPair {
                sentence1,
                sentence2,
                label,
                lang: lang
                    .and_then(|i| rec.get(i))
                    .and_then(|f| std::str::from_utf8(f).ok())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
                origin: format!("{file}:{}", line.unwrap_or(0)),
            }),
            (a, b, c) => {
                let msgs: Vec<String> = [a.err(), b.err(), c.err()].into_iter().flatten().collect();
                problem(problems, line, msgs.join("; "));
            }
        }
    }
    out
}

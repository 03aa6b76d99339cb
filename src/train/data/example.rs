//! Instruction-tuning examples and the JSONL files they come from.
//!
//! Three shapes are read, the ones Hugging Face datasets for SFT commonly use:
//!
//! | format | fields |
//! |---|---|
//! | [`DataFormat::Dolly`] | `instruction`, `context` (optional), `response` |
//! | [`DataFormat::Alpaca`] | `instruction`, `input` (optional), `output` |
//! | [`DataFormat::Chat`] | `messages`: `[{"role", "content"}, ...]`, roles `system` / `user` / `assistant` |
//!
//! [`DataFormat::Auto`] decides per file from its first line that is a JSON object: `messages`
//! → chat, `output` or `input` → alpaca, `response` or `context` → dolly. Every other field of
//! a line (`lang`, `category`, `short_answer`, ...) is kept in the example's `extra` map for
//! evaluation.
//!
//! Loading never stops at the first bad line: every problem of every file (bad JSON, a missing
//! field, a field of the wrong type, an empty response, an unknown role, ...) is collected with
//! its file and line number and returned at once as a [`DataError`], so that all of them can be
//! fixed before training starts.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use crate::config::{FormatChoice, TaskKind};
use crate::infer::chat_template::ChatMessage;

// The located-error type is shared with inference (search corpora, documents folders).
pub use crate::located::{DataError, Problem, MAX_LISTED_PROBLEMS};

/// The JSONL shape of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataFormat {
    /// Decide per file from its first JSON object line.
    #[default]
    Auto,
    /// `instruction`, `context` (optional, may be empty), `response`.
    Dolly,
    /// `instruction`, `input` (optional, may be empty), `output`.
    Alpaca,
    /// `messages`: a list of `{"role", "content"}`.
    Chat,
}

impl DataFormat {
    /// Lower-case name (`auto`, `dolly`, `alpaca`, `chat`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Dolly => "dolly",
            Self::Alpaca => "alpaca",
            Self::Chat => "chat",
        }
    }

    /// What a line of this format must look like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            Self::Auto => "a dolly, alpaca or chat object",
            Self::Dolly => {
                r#"dolly: {"instruction": string, "context": string (optional), "response": string}"#
            }
            Self::Alpaca => {
                r#"alpaca: {"instruction": string, "input": string (optional), "output": string}"#
            }
            Self::Chat => {
                r#"chat: {"messages": [{"role": "system"|"user"|"assistant", "content": string}, ...]}"#
            }
        }
    }

    /// The format a JSON object's keys point to, if any.
    pub fn detect(object: &Map<String, Value>) -> Option<Self> {
        if object.contains_key("messages") {
            Some(Self::Chat)
        } else if object.contains_key("output") || object.contains_key("input") {
            Some(Self::Alpaca)
        } else if object.contains_key("response") || object.contains_key("context") {
            Some(Self::Dolly)
        } else {
            None
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The SFT formats of `data.format` (the others are STS files).
impl TryFrom<FormatChoice> for DataFormat {
    type Error = anyhow::Error;
    fn try_from(f: FormatChoice) -> Result<Self> {
        Ok(match f {
            FormatChoice::Auto => Self::Auto,
            FormatChoice::Dolly => Self::Dolly,
            FormatChoice::Alpaca => Self::Alpaca,
            FormatChoice::Chat => Self::Chat,
            other => return Err(other.not_read_by(TaskKind::Sft)),
        })
    }
}

impl FromStr for DataFormat {
    type Err = anyhow::Error;
    /// The names (and aliases) `data.format` accepts for SFT.
    fn from_str(s: &str) -> Result<Self> {
        match s.parse::<FormatChoice>().map(Self::try_from) {
            Ok(Ok(f)) => Ok(f),
            _ => bail!(
                "unknown data format `{}`; expected {}",
                s.trim().to_ascii_lowercase(),
                FormatChoice::allowed_for(TaskKind::Sft)
            ),
        }
    }
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// An instruction with an optional context passage and the target response (dolly and
    /// alpaca lines; alpaca's `input` becomes `context`, `output` becomes `response`).
    Instruction {
        instruction: String,
        /// `""` when the line has none.
        context: String,
        response: String,
        /// The line's other fields (`lang`, `category`, `short_answer`, ...).
        extra: Map<String, Value>,
    },
    /// A conversation ending with an assistant message. Every assistant message is a
    /// training target.
    Chat {
        messages: Vec<ChatMessage>,
        /// The line's other fields.
        extra: Map<String, Value>,
    },
}

impl Example {
    /// An instruction example without extra fields.
    pub fn instruction(
        instruction: impl Into<String>,
        context: impl Into<String>,
        response: impl Into<String>,
    ) -> Self {
        Self::Instruction {
            instruction: instruction.into(),
            context: context.into(),
            response: response.into(),
            extra: Map::new(),
        }
    }

    /// A chat example without extra fields.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::Chat {
            messages,
            extra: Map::new(),
        }
    }

    /// The fields of the line that are not part of its format.
    pub fn extra(&self) -> &Map<String, Value> {
        match self {
            Self::Instruction { extra, .. } | Self::Chat { extra, .. } => extra,
        }
    }

    /// An extra field, when it is a string.
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra().get(key).and_then(Value::as_str)
    }

    /// `short_answer`, the string a correct response contains (ftlab's own dataset).
    pub fn short_answer(&self) -> Option<&str> {
        self.extra_str("short_answer")
    }

    /// The reference response: `response`, or the content of the last assistant message.
    pub fn response(&self) -> &str {
        match self {
            Self::Instruction { response, .. } => response,
            Self::Chat { messages, .. } => messages
                .iter()
                .rev()
                .find(|m| m.role == "assistant")
                .map(|m| m.content.as_str())
                .unwrap_or(""),
        }
    }
}

/// An example with the file and line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub example: Example,
    /// The file as given to the loader (`<memory>` for [`Record::in_memory`]).
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

impl Record {
    /// A record not read from a file; `index` is 0-based and shown as line `index + 1`.
    pub fn in_memory(example: Example, index: usize) -> Self {
        Self {
            example,
            file: "<memory>".to_string(),
            line: index + 1,
        }
    }

    /// `file:line`.
    pub fn origin(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// Reads one JSONL file. Every problem is collected; if there is any, the error is a
/// [`DataError`] (reachable with `err.downcast_ref::<DataError>()`) listing them. A file with no
/// examples is an error.
pub fn load_jsonl(path: impl AsRef<Path>, format: DataFormat) -> Result<Vec<Record>> {
    load_files(&[path], format)
}

/// The records whose `lang` field is one of `languages` (all when it is empty); a filter
/// that keeps nothing is an error naming the file and the languages it has.
pub fn keep_languages(
    records: Vec<Record>,
    languages: &[String],
    path: &Path,
) -> Result<Vec<Record>> {
    if languages.is_empty() {
        return Ok(records);
    }
    let mut seen = std::collections::BTreeSet::new();
    let kept: Vec<Record> = records
        .into_iter()
        .filter(|r| {
            let lang = r.example.extra_str("lang");
            seen.insert(lang.unwrap_or("(none)").to_string());
            lang.is_some_and(|l| languages.iter().any(|want| want == l))
        })
        .collect();
    if kept.is_empty() {
        bail!(
            "{}: data.languages = {languages:?} keeps no example (the `lang` fields here: {})",
            path.display(),
            seen.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(kept)
}

/// Reads several JSONL files (each detected on its own with [`DataFormat::Auto`]); the
/// problems of all files are reported together.
pub fn load_files<P: AsRef<Path>>(paths: &[P], format: DataFormat) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let file = path.display().to_string();
        match crate::builtin::read(path) {
            Ok(bytes) => parse_jsonl_into(&bytes, &file, format, &mut records, &mut problems),
            Err(e) => problems.push(Problem {
                file,
                line: None,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    finish(records, problems, "loading training data")
}

/// Parses JSONL text (`file` names it in messages), like [`load_jsonl`].
pub fn parse_jsonl(text: &str, file: &str, format: DataFormat) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    parse_jsonl_into(text.as_bytes(), file, format, &mut records, &mut problems);
    finish(records, problems, "loading training data")
}

fn finish(records: Vec<Record>, problems: Vec<Problem>, stage: &str) -> Result<Vec<Record>> {
    if problems.is_empty() {
        Ok(records)
    } else {
        Err(DataError {
            stage: stage.to_string(),
            problems,
        }
        .into())
    }
}

/// A line parsed as a JSON object, or what is wrong with it.
type ParsedLine = std::result::Result<Map<String, Value>, String>;

fn parse_jsonl_into(
    bytes: &[u8],
    file: &str,
    format: DataFormat,
    records: &mut Vec<Record>,
    problems: &mut Vec<Problem>,
) {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let problem = |line: usize, message: String| Problem {
        file: file.to_string(),
        line: Some(line),
        message,
    };

    // First pass: parse each non-blank line.
    let mut parsed: Vec<(usize, ParsedLine)> = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                parsed.push((line_no, Err(format!("not valid UTF-8 ({e})"))));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let result = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(format!(
                "expected a JSON object, found {} ({})",
                kind(&other),
                format.expected()
            )),
            Err(e) => Err(format!(
                "not valid JSON ({e}); expected one JSON object per line ({})",
                format.expected()
            )),
        };
        parsed.push((line_no, result));
    }

    if parsed.is_empty() {
        problems.push(Problem {
            file: file.to_string(),
            line: None,
            message: "the file has no examples (it is empty)".to_string(),
        });
        return;
    }

    // The format: forced, or from the first object line that shows one.
    let (format, detected_at) = match format {
        DataFormat::Auto => {
            let found = parsed.iter().find_map(|(line, r)| {
                r.as_ref()
                    .ok()
                    .and_then(|m| DataFormat::detect(m).map(|f| (f, *line)))
            });
            match found {
                Some((f, line)) => (f, Some(line)),
                None => {
                    let first = parsed.iter().find_map(|(line, r)| {
                        r.as_ref()
                            .ok()
                            .map(|m| (*line, m.keys().cloned().collect::<Vec<_>>()))
                    });
                    for (line, r) in &parsed {
                        if let Err(msg) = r {
                            problems.push(problem(*line, msg.clone()));
                        }
                    }
                    if let Some((line, keys)) = first {
                        let hint = if keys.iter().any(|k| k == "conversations") {
                            " (ShareGPT `conversations` is not read; convert it to `messages` \
                             with roles system/user/assistant)"
                        } else {
                            ""
                        };
                        problems.push(problem(
                            line,
                            format!(
                                "cannot tell the data format from the fields {keys:?}{hint}; \
                                 expected one of: {}; {}; {}",
                                DataFormat::Dolly.expected(),
                                DataFormat::Alpaca.expected(),
                                DataFormat::Chat.expected()
                            ),
                        ));
                    }
                    return;
                }
            }
        }
        f => (f, None),
    };
    let how = match detected_at {
        Some(l) => format!("{} (detected from line {l})", format.expected()),
        None => format.expected().to_string(),
    };

    for (line, r) in parsed {
        let object = match r {
            Ok(m) => m,
            Err(msg) => {
                problems.push(problem(line, msg));
                continue;
            }
        };
        match example_from_object(object, format) {
            Ok(example) => {
                records.push(Record {
                    example,
                    file: file.to_string(),
                    line,
                });
            }
            Err(msgs) => {
                for m in msgs {
                    problems.push(problem(line, format!("{m}; expected {how}")));
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Takes a required string field out of `m`.
fn take_string(m: &mut Map<String, Value>, key: &str, errors: &mut Vec<String>) -> Option<String> {
    match m.remove(key) {
        None => {
            errors.push(format!("missing field `{key}`"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(format!(
                "field `{key}` should be a string, found {}",
                kind(&other)
            ));
            None
        }
    }
}

/// Takes an optional string field (absent or null → `""`).
fn take_opt_string(
    m: &mut Map<String, Value>,
    key: &str,
    errors: &mut Vec<String>,
) -> Option<String> {
    match m.remove(key) {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(format!(
                "field `{key}` should be a string, found {}",
                kind(&other)
            ));
            None
        }
    }
}

fn example_from_object(
    mut m: Map<String, Value>,
    format: DataFormat,
) -> std::result::Result<Example, Vec<String>> {
    let mut errors = Vec::new();
    match format {
        DataFormat::Dolly | DataFormat::Alpaca => {
            let (ctx_key, resp_key) = if format == DataFormat::Dolly {
                ("context", "response")
            } else {
                ("input", "output")
            };
            let instruction = take_string(&mut m, "instruction", &mut errors);
            let context = take_opt_string(&mut m, ctx_key, &mut errors);
            let response = take_string(&mut m, resp_key, &mut errors);
            if let Some(i) = &instruction {
                if i.trim().is_empty() {
                    errors.push("`instruction` is empty".to_string());
                }
            }
            if let Some(r) = &response {
                if r.trim().is_empty() {
                    errors.push(format!("`{resp_key}` is empty"));
                }
            }
            match (instruction, context, response) {
                (Some(instruction), Some(context), Some(response)) if errors.is_empty() => {
                    Ok(Example::Instruction {
                        instruction,
                        context,
                        response,
                        extra: m,
                    })
                }
                _ => Err(errors),
            }
        }
        DataFormat::Chat => {
            let messages = match m.remove("messages") {
                None => {
                    return Err(vec!["missing field `messages`".to_string()]);
                }
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(vec![format!(
                        "field `messages` should be an array, found {}",
                        kind(&other)
                    )]);
                }
            };
            if messages.is_empty() {
                return Err(vec!["`messages` is empty".to_string()]);
            }
            let mut out = Vec::with_capacity(messages.len());
            for (i, item) in messages.into_iter().enumerate() {
                let Value::Object(mut msg) = item else {
                    errors.push(format!(
                        "messages[{i}] should be an object {{\"role\", \"content\"}}, found {}",
                        kind(&item)
                    ));
                    continue;
                };
                let mut field_errors = Vec::new();
                let role = take_string(&mut msg, "role", &mut field_errors);
                let content = take_string(&mut msg, "content", &mut field_errors);
                errors.extend(
                    field_errors
                        .into_iter()
                        .map(|e| format!("messages[{i}]: {e}")),
                );
                let (Some(role), Some(content)) = (role, content) else {
                    continue;
                };
                match role.as_str() {
                    "system" if i != 0 => errors.push(format!(
                        "messages[{i}] is a system message; only the first message may be one"
                    )),
                    "system" | "user" | "assistant" => {}
                    other => errors.push(format!(
                        "messages[{i}].role is {other:?}; expected \"system\", \"user\" or \
                         \"assistant\""
                    )),
                }
                if role == "assistant" && content.trim().is_empty() {
                    errors.push(format!("messages[{i}] (assistant) has empty content"));
                }
                out.push(ChatMessage { role, content });
            }
            if errors.is_empty() {
                match out.last() {
                    Some(last) if last.role == "assistant" => {}
                    Some(last) => errors.push(format!(
                        "the last message is from {:?}; a training conversation must end with an \
                         assistant message",
                        last.role
                    )),
                    None => {}
                }
                if !out.iter().any(|m| m.role == "user") {
                    errors.push("the conversation has no user message".to_string());
                }
            }
            if errors.is_empty() {
                Ok(Example::Chat {
                    messages: out,
                    extra: m,
                })
            } else {
                Err(errors)
            }
        }
        DataFormat::Auto => Err(vec!["internal: format not resolved".to_string()]),
    }
}

//! What search and retrieval read: corpus files (one document per line or per JSONL
//! object), folders of `.txt` / `.md` documents split into chunks, and the ranked
//! [`Hit`]s both return. Bad lines and files are reported like bad training data: every
//! problem with its file and line, in one [`DataError`].
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::split::{split_text, SplitConfig};
use crate::located::{DataError, Problem};

/// A document (or chunk) of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// Where it came from: `file:line`, a file name, or the `source` of a JSONL line.
    pub source: String,
    pub text: String,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// 1-based.
    pub rank: usize,
    /// Position of the document in the index.
    pub id: usize,
    pub source: String,
    /// Cosine similarity of query and document.
    pub score: f32,
    pub text: String,
}

/// A document of a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file name (relative to the folder).
    pub source: String,
    pub text: String,
}

/// A chunk of a document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocChunk {
    pub source: String,
    /// Byte range in the document.
    pub start: usize,
    pub end: usize,
    /// The chunk's text, without leading and trailing whitespace.
    pub text: String,
}

/// The `.txt` and `.md` files of `dir` (not recursive), sorted by name. Files that are not
/// UTF-8 are a [`DataError`] naming each with the line of its first bad byte.
pub fn load_documents(dir: &Path) -> Result<Vec<Document>> {
    let entries: Vec<PathBuf> = match crate::builtin::folder(dir) {
        // `builtin:docs`: the files are read from the binary by `crate::builtin::read`.
        Some(files) => files.iter().map(|(name, _)| dir.join(name)).collect(),
        None => std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read the documents folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
    };
    let mut paths: Vec<_> = entries
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "txt" | "md"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{}: no .txt or .md documents in this folder", dir.display());
    }
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for p in &paths {
        let bytes =
            crate::builtin::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
        match String::from_utf8(bytes) {
            Ok(text) => docs.push(Document {
                source: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                text: text.trim_start_matches('\u{feff}').to_string(),
            }),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                problems.push(Problem {
                    file: p.display().to_string(),
                    line: Some(line),
                    message: "not valid UTF-8".into(),
                });
            }
        }
    }
    DataError::check("reading the documents folder", problems)?;
    Ok(docs)
}

/// Splits every document; chunks that are only whitespace are dropped.
pub fn chunk_documents(docs: &[Document], split: &SplitConfig) -> Result<Vec<DocChunk>> {
    let mut out = Vec::new();
    for d in docs {
        for c in split_text(&d.text, split)? {
            let text = c.text.trim();
            if !text.is_empty() {
                out.push(DocChunk {
                    source: d.source.clone(),
                    start: c.start,
                    end: c.end,
                    text: text.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Reads a corpus: a `.jsonl` file (`text`, optional `source` or `id`), a text file (one
/// document per non-blank line), or a directory of `.txt` / `.md` files (split into chunks
/// with `split`).
pub fn read_corpus(path: &Path, split: &SplitConfig) -> Result<Vec<Doc>> {
    if crate::builtin::is_dir(path) {
        let docs = load_documents(path)?;
        return chunk_documents(&docs, split).map(|chunks| {
            chunks
                .into_iter()
                .map(|c| Doc {
                    source: c.source,
                    text: c.text,
                })
                .collect()
        });
    }
    let bytes =
        crate::builtin::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file = path.display().to_string();
    let jsonl = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = format!("{file}:{}", i + 1);
        match corpus_line(raw, i == 0, jsonl, &at) {
            Ok(Some(doc)) => docs.push(doc),
            Ok(None) => {}
            Err(message) => problems.push(Problem {
                file: file.clone(),
                line: Some(i + 1),
                message,
            }),
        }
    }
    DataError::check("reading the corpus", problems)?;
    if docs.is_empty() {
        bail!("{file}: no documents (the corpus is empty)");
    }
    Ok(docs)
}

/// One line of a corpus file: its document, `None` for a blank line, or what is wrong with
/// it. `at` (`file:line`) is the document's source unless a JSONL line names one.
fn corpus_line(
    raw: &[u8],
    first: bool,
    jsonl: bool,
    at: &str,
) -> std::result::Result<Option<Doc>, String> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let line = std::str::from_utf8(raw).map_err(|e| {
        format!(
            "not valid UTF-8 (invalid byte at column {})",
            e.valid_up_to() + 1
        )
    })?;
    let line = if first {
        line.trim_start_matches('\u{feff}')
    } else {
        line
    };
    if line.trim().is_empty() {
        return Ok(None);
    }
    if !jsonl {
        return Ok(Some(Doc {
            source: at.to_string(),
            text: line.trim().to_string(),
        }));
    }
    let object = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return Err("expected a JSON object".into()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    match object.get("text").and_then(|t| t.as_str()) {
        Some(t) if !t.trim().is_empty() => {
            let source = object
                .get("source")
                .or_else(|| object.get("id"))
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| at.to_string());
            Ok(Some(Doc {
                source,
                text: t.to_string(),
            }))
        }
        _ => Err("expected a non-empty string field `text`".into()),
    }
}

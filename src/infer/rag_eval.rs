//! RAG evaluation over a question file: for each question, is the source document among
//! the retrieved chunks (retrieval hit rate), and does the greedy answer contain the
//! expected short answer (the same contained-answer metric as `ftlab eval`)?
//!
//! Question files are JSON lines with `question`, `answer` and optional `source` (the
//! document's file name) and `lang`, like `data/docs/questions.jsonl`. `"answer": null`
//! marks a question the documents do not answer: the answer is right when it says so
//! (one of [`NOT_STATED`]).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::answer::contains_answer;
use super::rag::Rag;

/// Phrases that say the context does not answer the question (ftlab's SFT data uses the
/// first and the Japanese ones; the others are common phrasings of the same refusal).
pub const NOT_STATED: &[&str] = &[
    "does not say",
    "doesn't say",
    "does not mention",
    "does not specify",
    "does not provide",
    "does not contain the answer",
    "not mentioned",
    "not specified",
    "記載がありません",
    "記載されていません",
    "書かれていません",
];

/// Whether `output` answers like `expected` would: contains it, or (for an unanswerable
/// question, `None`) says that the context does not say.
pub fn rag_answer_correct(output: &str, expected: Option<&str>) -> bool {
    match expected {
        Some(e) => contains_answer(output, e),
        None => NOT_STATED.iter().any(|p| contains_answer(output, p)),
    }
}

/// One question with its expected answer (None: the documents do not answer it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RagQuestion {
    pub question: String,
    pub answer: Option<String>,
    /// The document (file name in the folder) that holds the answer.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub lang: Option<String>,
}

/// Reads a question file. Every bad line is reported (file, line, what was expected)
/// before anything is evaluated.
pub fn load_questions(path: &Path) -> Result<Vec<RagQuestion>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read question file", path.display()))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            errors.push(format!("{}:{}: not valid UTF-8", path.display(), i + 1));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RagQuestion>(line) {
            Ok(q)
                if q.question.trim().is_empty()
                    || q.answer.as_deref().is_some_and(|a| a.trim().is_empty()) =>
            {
                errors.push(format!(
                    "{}:{}: `question` and `answer` must not be empty (`\"answer\": null` \
                     for a question the documents do not answer)",
                    path.display(),
                    i + 1
                ))
            }
            Ok(q) => out.push(q),
            Err(e) => errors.push(format!(
                "{}:{}: expected a JSON object with a string `question`, an `answer` (string, or \
                 null when the documents do not answer) and optional `source`, `lang`: {e}",
                path.display(),
                i + 1
            )),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    if out.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(out)
}

/// What happened to one question.
#[derive(Debug, Clone, Serialize)]
pub struct RagSample {
    pub question: String,
    /// None: the documents do not answer the question.
    pub expected: Option<String>,
    pub answer: String,
    /// Sources of the retrieved chunks, best first.
    pub retrieved: Vec<String>,
    /// The expected source is among them (None: the question names no source).
    pub source_found: Option<bool>,
    pub correct: bool,
    pub lang: String,
}

/// Counts for a group of questions.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RagCounts {
    pub questions: usize,
    pub correct: usize,
    /// Questions that name a source, and those whose source was retrieved.
    pub with_source: usize,
    pub source_found: usize,
}

impl RagCounts {
    fn add(&mut self, s: &RagSample) {
        self.questions += 1;
        self.correct += s.correct as usize;
        if let Some(found) = s.source_found {
            self.with_source += 1;
            self.source_found += found as usize;
        }
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.questions.max(1) as f64
    }

    pub fn hit_rate(&self) -> f64 {
        self.source_found as f64 / self.with_source.max(1) as f64
    }
}

/// The result over a question file.
#[derive(Debug, Clone, Serialize)]
pub struct RagEval {
    pub total: RagCounts,
    pub by_lang: BTreeMap<String, RagCounts>,
    /// "answerable" and "unanswerable".
    pub by_kind: BTreeMap<String, RagCounts>,
    pub samples: Vec<RagSample>,
}

/// Answers every question with `rag`, using its own sampling settings
/// ([`SamplingParams::greedy`](super::sampling::SamplingParams::greedy) gives a
/// reproducible score), and scores retrieval and answers. `progress(i, n, sample)` runs
/// after each question.
pub fn evaluate(
    rag: &Rag,
    questions: &[RagQuestion],
    mut progress: impl FnMut(usize, usize, &RagSample),
) -> Result<RagEval> {
    let mut out = RagEval {
        total: RagCounts::default(),
        by_lang: BTreeMap::new(),
        by_kind: BTreeMap::new(),
        samples: Vec::new(),
    };
    for (i, q) in questions.iter().enumerate() {
        let answer = rag
            .answer(&q.question, &mut |_| Ok(()))
            .with_context(|| format!("question {}: {:?}", i + 1, q.question))?;
        let retrieved: Vec<String> = answer.chunks.iter().map(|h| h.source.clone()).collect();
        let sample = RagSample {
            question: q.question.clone(),
            expected: q.answer.clone(),
            correct: rag_answer_correct(&answer.answer, q.answer.as_deref()),
            source_found: q.source.as_ref().map(|s| retrieved.contains(s)),
            retrieved,
            answer: answer.answer,
            lang: q.lang.clone().unwrap_or_else(|| "-".into()),
        };
        out.total.add(&sample);
        out.by_lang
            .entry(sample.lang.clone())
            .or_default()
            .add(&sample);
        let kind = match q.answer {
            Some(_) => "answerable",
            None => "unanswerable",
        };
        out.by_kind.entry(kind.into()).or_default().add(&sample);
        progress(i + 1, questions.len(), &sample);
        out.samples.push(sample);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn answers_are_scored_by_containment_or_by_saying_the_context_does_not_say() {
        assert!(rag_answer_correct(
            "Bins go out on  TUESDAYS.",
            Some("Tuesdays")
        ));
        assert!(!rag_answer_correct("On Mondays.", Some("Tuesdays")));
        assert!(rag_answer_correct("The context does not say.", None));
        assert!(rag_answer_correct("文脈には記載がありません。", None));
        assert!(!rag_answer_correct("It is 0161 496 0000.", None));
        // An answerable question is not answered by refusing.
        assert!(!rag_answer_correct(
            "The context does not say.",
            Some("38 pounds")
        ));
    }

    #[test]
    fn question_files_load_and_every_bad_line_names_file_and_line() {
        let (_d, path) = file(
            "{\"question\": \"Q1?\", \"answer\": \"A1\", \"source\": \"a.txt\", \"lang\": \"en\"}\n\
             \n\
             {\"question\": \"Q2?\", \"answer\": null, \"source\": null}\n"
                .as_bytes(),
        );
        let qs = load_questions(&path).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].source.as_deref(), Some("a.txt"));
        assert_eq!(qs[1].answer, None);
        assert_eq!(qs[1].lang, None);

        let mut bad = b"{\"question\": \"Q1?\", \"answer\": \"A1\"}\n".to_vec();
        bad.extend_from_slice(b"{\"question\": \"Q2?\"\n");
        bad.extend_from_slice(b"{\"question\": \" \", \"answer\": \"x\"}\n");
        bad.extend_from_slice(b"{\"question\": \"Q\xff\", \"answer\": \"x\"}\n");
        let (_d, path) = file(&bad);
        let err = format!("{:#}", load_questions(&path).unwrap_err());
        let name = path.display().to_string();
        for line in [2, 3, 4] {
            assert!(
                err.contains(&format!("{name}:{line}:")),
                "line {line}: {err}"
            );
        }
        assert!(!err.contains(&format!("{name}:1:")), "{err}");
        assert!(err.contains("not valid UTF-8"), "{err}");

        let (_d, path) = file(b"\n\n");
        assert!(format!("{:#}", load_questions(&path).unwrap_err()).contains("no questions"));
    }
}

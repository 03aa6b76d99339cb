//! Held-out answer accuracy: generate (greedy) for each instruction example with the
//! training prompt format and count responses that contain the example's `short_answer`
//! (case-insensitive) — the "contained answer" metric of ftlab's own SFT data.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;

use super::data::{PromptTemplate, Record, SftTokenizer};
use crate::infer::answer::contains_answer;
use crate::infer::sampling::SamplingParams;
use crate::infer::LanguageModel;

#[derive(Debug, Clone, Serialize)]
pub struct AnswerSample {
    pub origin: String,
    pub category: String,
    pub expected: String,
    pub output: String,
    pub correct: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnswerAccuracy {
    pub examples: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// category → (correct, examples)
    pub by_category: BTreeMap<String, (usize, usize)>,
    pub samples: Vec<AnswerSample>,
}

/// Evaluates the records that carry a `short_answer` (and, if given, one of `categories`).
pub fn answer_accuracy(
    lm: &LanguageModel,
    records: &[Record],
    template: PromptTemplate,
    categories: &[String],
    max_new_tokens: usize,
    mut progress: impl FnMut(usize, usize, &AnswerSample),
) -> Result<AnswerAccuracy> {
    let tok = SftTokenizer::new(lm, template)?;
    let chosen: Vec<&Record> = records
        .iter()
        .filter(|r| r.example.short_answer().is_some())
        .filter(|r| {
            categories.is_empty()
                || r.example
                    .extra_str("category")
                    .is_some_and(|c| categories.iter().any(|x| x == c))
        })
        .collect();
    if chosen.is_empty() {
        bail!("no examples with a `short_answer` field (and the requested categories) to evaluate");
    }
    let mut out = AnswerAccuracy {
        examples: 0,
        correct: 0,
        accuracy: 0.0,
        by_category: BTreeMap::new(),
        samples: Vec::new(),
    };
    let greedy = SamplingParams::greedy();
    for (i, r) in chosen.iter().enumerate() {
        let (ids, _) = lm.stream(
            tok.prompt_ids(&r.example)?,
            max_new_tokens,
            &greedy,
            &mut |_| Ok(()),
        )?;
        let output = lm.decode(&ids)?;
        let expected = r.example.short_answer().unwrap_or_default().to_string();
        let correct = contains_answer(&output, &expected);
        let category = r
            .example
            .extra_str("category")
            .unwrap_or("uncategorised")
            .to_string();
        let entry = out.by_category.entry(category.clone()).or_insert((0, 0));
        entry.1 += 1;
        if correct {
            entry.0 += 1;
            out.correct += 1;
        }
        out.examples += 1;
        let sample = AnswerSample {
            origin: r.origin(),
            category,
            expected,
            output,
            correct,
        };
        progress(i + 1, chosen.len(), &sample);
        out.samples.push(sample);
    }
    out.accuracy = out.correct as f64 / out.examples as f64;
    Ok(out)
}

//! Retrieval-augmented generation over a folder of documents: load and split the documents
//! into overlapping chunks ([`super::corpus`], [`super::split`]), embed them with a sentence encoder, retrieve the
//! chunks most similar to the question (exact cosine search — a folder's chunks are few),
//! fill a prompt template with them and the question, and generate the answer with a
//! causal LM (streamed).
//!
//! For a UI: [`Rag::retrieve`] returns the ranked chunks to show at once, and
//! [`Rag::generate`] streams the answer to them piece by piece through a callback;
//! [`Rag::answer`] does both.
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

use super::chat_template::ChatMessage;
use super::corpus::{chunk_documents, load_documents, DocChunk, Hit};
use super::embed::Embedder;
use super::sampling::SamplingParams;
use super::split::SplitConfig;
use super::LanguageModel;

/// The prompt used unless another is given: `{context}` and `{question}` are replaced.
pub const DEFAULT_TEMPLATE: &str = "Answer the question using only the context below. \
If the context does not contain the answer, say that the context does not say.

Context:
{context}

Question: {question}";

/// Chunks with their embeddings, searched exactly by cosine similarity.
pub struct Retriever {
    pub encoder: Embedder,
    pub chunks: Vec<DocChunk>,
    /// (n, h), rows L2-normalised.
    embeddings: Tensor,
}

impl Retriever {
    /// Embeds `chunks` with `encoder`.
    pub fn build(encoder: Embedder, chunks: Vec<DocChunk>) -> Result<Self> {
        if chunks.is_empty() {
            bail!("no text to retrieve from (the documents are empty)");
        }
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        let rows = encoder.embed_texts(&texts, 32)?;
        let h = encoder.hidden_size();
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        let embeddings = Tensor::from_vec(flat, (chunks.len(), h), encoder.device())?;
        Ok(Self {
            encoder,
            chunks,
            embeddings,
        })
    }

    /// Loads, splits and embeds the documents of `dir`.
    pub fn from_dir(encoder: Embedder, dir: &Path, split: &SplitConfig) -> Result<Self> {
        let docs = load_documents(dir)?;
        Self::build(encoder, chunk_documents(&docs, split)?)
    }

    /// The `k` chunks most similar to `question`, best first.
    pub fn retrieve(&self, question: &str, k: usize) -> Result<Vec<Hit>> {
        let q = self.encoder.embed_query(question)?;
        let q = Tensor::from_vec(q, (self.encoder.hidden_size(), 1), self.encoder.device())?;
        let scores: Vec<f32> = self
            .embeddings
            .matmul(&q)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        Ok(order
            .into_iter()
            .take(k)
            .enumerate()
            .map(|(r, i)| Hit {
                rank: r + 1,
                id: i,
                source: self.chunks[i].source.clone(),
                score: scores[i],
                text: self.chunks[i].text.clone(),
            })
            .collect())
    }
}

/// The context block of a prompt: each chunk numbered, with its source.
pub fn format_context(hits: &[Hit]) -> String {
    hits.iter()
        .map(|h| format!("[{}] ({})\n{}", h.rank, h.source, h.text))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Fills `{context}` and `{question}` in `template`. The template must contain both.
pub fn fill_template(template: &str, hits: &[Hit], question: &str) -> Result<String> {
    for slot in ["{context}", "{question}"] {
        if !template.contains(slot) {
            bail!("the prompt template has no {slot} placeholder");
        }
    }
    // The question goes in last, so that braces inside retrieved text are left alone.
    let context = format_context(hits);
    let (before, after) = template.split_once("{context}").expect("checked above");
    Ok(format!(
        "{}{}{}",
        before.replace("{question}", question),
        context,
        after.replace("{question}", question)
    ))
}

/// How answers are produced.
#[derive(Debug, Clone)]
pub struct RagOptions {
    /// Chunks put into the prompt.
    pub top_k: usize,
    /// Prompt with `{context}` and `{question}`.
    pub template: String,
    /// Wrap the prompt as a user message in the model's chat template.
    pub chat: bool,
    /// System message (with `chat`).
    pub system: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
}

impl Default for RagOptions {
    fn default() -> Self {
        Self {
            top_k: 3,
            template: DEFAULT_TEMPLATE.to_string(),
            chat: true,
            system: None,
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
        }
    }
}

impl RagOptions {
    /// At least one chunk, a template with both placeholders, valid sampling settings.
    pub fn validate(&self) -> Result<()> {
        if self.top_k == 0 {
            bail!("top-k must be at least 1");
        }
        fill_template(&self.template, &[], "")?;
        self.sampling.validate()?;
        Ok(())
    }
}

/// An answer with what it was made from.
#[derive(Debug, Clone, Serialize)]
pub struct RagAnswer {
    pub question: String,
    pub answer: String,
    pub chunks: Vec<Hit>,
    /// The text given to the LM (after the chat template).
    pub prompt: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub tokens_per_sec: f64,
    /// Whether the model ended its answer (rather than reaching the token limit).
    pub stopped: bool,
}

/// A retriever and a language model.
pub struct Rag {
    pub retriever: Retriever,
    pub lm: LanguageModel,
    pub opts: RagOptions,
}

impl Rag {
    pub fn new(retriever: Retriever, lm: LanguageModel, opts: RagOptions) -> Result<Self> {
        opts.validate()?;
        Ok(Self {
            retriever,
            lm,
            opts,
        })
    }

    /// The chunks for `question`, best first.
    pub fn retrieve(&self, question: &str) -> Result<Vec<Hit>> {
        self.retriever.retrieve(question, self.opts.top_k)
    }

    /// The LM's input text for `question` with `hits` as context.
    pub fn prompt(&self, question: &str, hits: &[Hit]) -> Result<String> {
        prompt(&self.lm, &self.opts, question, hits)
    }

    /// Generates the answer to `question` from `hits`, calling `on_piece` with each new
    /// piece of text as it is produced.
    pub fn generate(
        &self,
        question: &str,
        hits: Vec<Hit>,
        on_piece: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<RagAnswer> {
        let prompt = RagPrompt::build(&self.lm, &self.opts, question, &hits)?;
        generate_answer(&self.lm, &self.opts, question, hits, prompt, on_piece)
    }

    /// Retrieves, then generates (streaming through `on_piece`).
    pub fn answer(
        &self,
        question: &str,
        on_piece: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<RagAnswer> {
        if question.trim().is_empty() {
            bail!("the question is empty");
        }
        let hits = self.retrieve(question)?;
        self.generate(question, hits, on_piece)
    }
}

/// The LM's input text for `question` with `hits` as context: the template filled, then
/// (with `opts.chat`) wrapped as a user message in the model's chat template.
pub fn prompt(
    lm: &LanguageModel,
    opts: &RagOptions,
    question: &str,
    hits: &[Hit],
) -> Result<String> {
    let filled = fill_template(&opts.template, hits, question)?;
    if !opts.chat {
        return Ok(filled);
    }
    let mut messages = Vec::new();
    if let Some(s) = &opts.system {
        messages.push(ChatMessage::new("system", s));
    }
    messages.push(ChatMessage::new("user", &filled));
    lm.render_chat(&messages, true)
}

/// The LM's input for a question: its text and token ids.
pub struct RagPrompt {
    pub text: String,
    pub ids: Vec<u32>,
}

impl RagPrompt {
    /// [`prompt`], tokenised.
    pub fn build(
        lm: &LanguageModel,
        opts: &RagOptions,
        question: &str,
        hits: &[Hit],
    ) -> Result<Self> {
        let text = prompt(lm, opts, question, hits)?;
        let ids = lm.encode_prompt(&text)?;
        Ok(Self { text, ids })
    }
}

/// Generates `lm`'s answer to `question` from `prompt` (built from `hits` by
/// [`RagPrompt::build`]), calling `on_piece` with each new piece of text as it is produced
/// (an error from `on_piece` stops generation).
pub fn generate_answer(
    lm: &LanguageModel,
    opts: &RagOptions,
    question: &str,
    hits: Vec<Hit>,
    prompt: RagPrompt,
    on_piece: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<RagAnswer> {
    let (ids, stats) = lm.stream(prompt.ids, opts.max_new_tokens, &opts.sampling, on_piece)?;
    let answer = lm.decode(&ids)?;
    Ok(RagAnswer {
        question: question.to_string(),
        answer: answer.trim().to_string(),
        chunks: hits,
        prompt: prompt.text,
        prompt_tokens: stats.prompt_tokens,
        generated_tokens: stats.generated_tokens,
        tokens_per_sec: stats.tokens_per_sec(),
        stopped: stats.stopped,
    })
}

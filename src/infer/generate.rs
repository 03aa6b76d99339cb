//! Autoregressive generation with a KV cache and streamed, UTF-8-safe text pieces.
use std::time::Instant;

use anyhow::Result;
use candle_core::{Tensor, D};
use tokenizers::Tokenizer;

use super::sampling::{Sampler, SamplingParams};
use crate::model::CausalLm;

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these tokens (EOS, end-of-turn); it is not emitted.
    pub stop_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Stopped on a stop token rather than the token limit.
    pub stopped: bool,
}

impl GenerateStats {
    /// Decode speed in generated tokens per second (after the prompt was processed).
    pub fn tokens_per_sec(&self) -> f64 {
        self.rate().unwrap_or(0.0)
    }

    /// [`Self::tokens_per_sec`], or None when no token was generated (there is no speed to
    /// report, and 0.0 tokens/s would be a wrong one).
    pub fn rate(&self) -> Option<f64> {
        (self.generated_tokens > 0 && self.decode_secs > 0.0)
            .then(|| self.generated_tokens as f64 / self.decode_secs)
    }
}

/// What generation had done when the token callback stopped it (a cancelled answer, a
/// reader gone): the context of the callback's error, so that the caller can still report
/// the tokens produced and their real speed (`error.downcast_ref::<Interrupted>()`). The
/// counts cover the tokens the callback accepted, timed up to the last of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted(pub GenerateStats);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation stopped after {} tokens",
            self.0.generated_tokens
        )
    }
}

/// Turns a growing list of token ids into text increments, holding back bytes that do
/// not yet form complete UTF-8 characters.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self
            .tokenizer
            .decode(&self.ids, true)
            .map_err(anyhow::Error::msg)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted {
            return Ok(None);
        }
        let piece = text.get(self.emitted..).map(str::to_string);
        self.emitted = text.len();
        Ok(piece)
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Runs generation, calling `on_token(id)` for every new token. Returns the generated
/// ids (without the stop token) and timing. An error from `on_token` stops generation and
/// is returned with what was done so far as its [`Interrupted`] context.
pub fn generate(
    model: &CausalLm,
    req: &GenerateRequest,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerateStats)> {
    if req.prompt_ids.is_empty() {
        anyhow::bail!("the prompt is empty: at least one token is needed to generate from");
    }
    let max_pos = model.max_positions();
    if req.prompt_ids.len() >= max_pos {
        anyhow::bail!(
            "the prompt has {} tokens but the model handles at most {max_pos} positions",
            req.prompt_ids.len()
        );
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let device = model.device().clone();
    let mut cache = model.new_cache();
    let mut context = req.prompt_ids.clone();
    let mut generated = Vec::new();
    let t0 = Instant::now();
    let input = Tensor::new(req.prompt_ids.as_slice(), &device)?.unsqueeze(0)?;
    let mut logits = last_logits(model, &input, 0, &mut cache)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut stopped = false;
    let budget = req.max_new_tokens.min(max_pos - req.prompt_ids.len());
    let stats = |generated: usize, decode_secs: f64, stopped: bool| GenerateStats {
        prompt_tokens: req.prompt_ids.len(),
        generated_tokens: generated,
        prefill_secs,
        decode_secs,
        stopped,
    };
    // When the last token accepted by `on_token` was handed over.
    let mut delivered_secs = 0.0;
    for _ in 0..budget {
        let next = sampler.sample(&logits, &context);
        if req.stop_ids.contains(&next) {
            stopped = true;
            break;
        }
        if let Err(e) = on_token(next) {
            let done = stats(generated.len(), delivered_secs, false);
            return Err(e.context(Interrupted(done)));
        }
        delivered_secs = t1.elapsed().as_secs_f64();
        generated.push(next);
        context.push(next);
        if generated.len() == budget {
            break;
        }
        let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        let pos = context.len() - 1;
        logits = last_logits(model, &input, pos, &mut cache)?;
    }
    let stats = stats(generated.len(), t1.elapsed().as_secs_f64(), stopped);
    Ok((generated, stats))
}

fn last_logits(
    model: &CausalLm,
    input: &Tensor,
    start: usize,
    cache: &mut crate::model::kv_cache::KvCache,
) -> Result<Vec<f32>> {
    let logits = model.forward(input, start, Some(cache))?;
    let t = logits.dim(1)?;
    let last = logits.narrow(1, t - 1, 1)?.squeeze(1)?.squeeze(0)?;
    Ok(last.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

/// Index of the most likely next token at each position: (b, t) from (b, t, vocab).
pub fn greedy_ids(logits: &Tensor) -> candle_core::Result<Tensor> {
    logits.argmax(D::Minus1)
}

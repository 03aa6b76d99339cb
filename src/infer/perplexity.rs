//! Mean next-token negative log-likelihood of a text: the numerical contract that tests
//! and evaluations rely on.
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::model::ops::log_softmax_last;
use crate::model::CausalLm;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Perplexity {
    /// Number of scored (predicted) tokens.
    pub tokens: usize,
    /// Mean negative log-likelihood in nats.
    pub nll: f64,
    pub ppl: f64,
}

/// Scores `ids` in windows of at most `window` tokens advancing by `stride` (≤ window):
/// each window is scored only on the tokens not scored by the previous one, with the
/// overlap as extra context (the sliding-window evaluation of HF's perplexity guide).
/// The first token has no context and is never scored.
pub fn perplexity(
    model: &CausalLm,
    ids: &[u32],
    window: usize,
    stride: usize,
    device: &Device,
) -> Result<Perplexity> {
    if ids.len() < 2 {
        bail!(
            "the text has {} token(s); at least 2 are needed to score",
            ids.len()
        );
    }
    if window < 2 || stride == 0 || stride > window {
        bail!("invalid window {window} / stride {stride}: need 2 ≤ window and 0 < stride ≤ window");
    }
    let window = window.min(model.max_positions());
    let stride = stride.min(window);
    let mut total = 0.0f64;
    let mut count = 0usize;
    let mut scored_upto = 1; // index of the first token not yet scored
    let mut begin = 0usize;
    loop {
        let end = (begin + window).min(ids.len());
        let chunk = &ids[begin..end];
        let input = Tensor::new(chunk, device)?.unsqueeze(0)?;
        let logits = model
            .forward(&input, 0, None)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        let logp = log_softmax_last(&logits)?.to_vec2::<f32>()?;
        // Position p of the chunk predicts token begin + p + 1.
        for target in scored_upto.max(begin + 1)..end {
            let p = target - begin - 1;
            total -= logp[p][ids[target] as usize] as f64;
            count += 1;
        }
        scored_upto = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let nll = total / count as f64;
    Ok(Perplexity {
        tokens: count,
        nll,
        ppl: nll.exp(),
    })
}

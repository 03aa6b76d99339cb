//! One micro-batch: forward, masked loss, backward — plainly, or with per-block
//! recomputation (gradient checkpointing) — accumulating gradients per parameter.
use anyhow::{anyhow, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::model::grad_sink::{self, Sink};
use crate::model::head_loss::linear_cross_entropy;
use crate::model::linear::recompute::{self, Tape};
use crate::model::ops::{causal_mask, masked_cross_entropy};
use crate::model::CausalLm;
use crate::train::data::Batch;

/// Extra noise on the embedding output (NEFTune), applied only in training.
pub type EmbedNoise<'a> = Option<&'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

fn loss_from_logits(logits: &Tensor, batch: &Batch) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    let logits = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    Ok(masked_cross_entropy(
        &logits,
        &batch.targets,
        &batch.loss_mask,
    )?)
}

/// Mean loss of the last hidden states `x` (b, t, h): through the fused chunked LM-head
/// loss (`model::head_loss`) where the architecture's head is a plain dense matrix, so
/// that no (tokens × vocab) logits are kept; otherwise through the logits.
fn head_loss(model: &CausalLm, x: &Tensor, batch: &Batch) -> Result<(Tensor, usize)> {
    let Some((normed, weight)) = model.head_split(x)? else {
        return loss_from_logits(&model.head(x)?, batch);
    };
    let (b, t, h) = normed.dims3()?;
    let rows = normed.narrow(1, 0, t - 1)?.reshape((b * (t - 1), h))?;
    Ok(linear_cross_entropy(
        &rows,
        &weight,
        &batch.targets,
        &batch.loss_mask,
    )?)
}

/// The last hidden states (b, t, h) of `embeds` through every block. With `keep_graph`
/// false each block's output is detached, so no block's intermediates outlive it: an
/// evaluation forward then holds one block's transients at a time, as the memory plan's
/// forward-only peak assumes, instead of every block's kept activations (trainable LoRA
/// factors would otherwise make candle record the whole graph).
fn last_hidden(model: &CausalLm, embeds: Tensor, keep_graph: bool) -> Result<Tensor> {
    let mut x = embeds;
    let mask = model.mask(x.dim(1)?, 0, &x)?;
    for i in 0..model.num_blocks() {
        x = model.block(i, &x, 0, mask.as_ref(), None)?;
        if !keep_graph {
            x = x.detach();
        }
    }
    Ok(x)
}

/// Mean loss over counted tokens, without gradients.
pub fn eval_loss(model: &CausalLm, batch: &Batch) -> Result<(f64, usize)> {
    let x = last_hidden(
        model,
        model.embed(&batch.input_ids.detach())?.detach(),
        false,
    )?;
    let (loss, n) = head_loss(model, &x, batch)?;
    Ok((loss.to_scalar::<f32>()? as f64, n))
}

/// The gradients of one backward pass: candle's store, and the weight gradients the ops
/// handed to the sink instead (`model::grad_sink`).
pub struct Grads {
    pub store: GradStore,
    sink: Sink,
}

impl From<GradStore> for Grads {
    /// A plain `backward()`'s gradients (no sink was open).
    fn from(store: GradStore) -> Self {
        Self {
            store,
            sink: Sink::default(),
        }
    }
}

/// `loss.backward()` with a gradient sink open.
pub fn backward(loss: &Tensor) -> Result<Grads> {
    let (store, sink) = grad_sink::collect(|| loss.backward())?;
    Ok(Grads { store, sink })
}

/// Adds the gradients of `params` found in `grads` (the store's and the sink's) into
/// `accum` (aligned with `params`).
pub fn accumulate(
    grads: &mut Grads,
    params: &[(String, Var)],
    accum: &mut [Option<Tensor>],
) -> Result<()> {
    for ((_, var), acc) in params.iter().zip(accum.iter_mut()) {
        let g = match (grads.store.get(var.as_tensor()), grads.sink.remove(var)) {
            // A tied table: the head's gradient from the sink (the step's own), the
            // embedding's from the store, added in place.
            (Some(a), Some(mut b)) => {
                grad_sink::add_into(&mut b, a)?;
                Some(b)
            }
            (Some(a), None) => Some(a.clone()),
            (None, b) => b,
        };
        if let Some(g) = g {
            *acc = Some(match acc.take() {
                Some(a) => add_in_f32(a, g)?,
                None => g,
            });
        }
    }
    Ok(())
}

/// `a + g` in f32 (a no-op cast for f32 tensors): the micro-batches of one step add up in
/// f32 (as PyTorch's mixed precision accumulates into f32 `.grad`s), so that a bf16
/// model's gradients lose no more than each micro-batch's own rounding.
fn add_in_f32(a: Tensor, g: Tensor) -> Result<Tensor> {
    Ok((a.to_dtype(DType::F32)? + g.to_dtype(DType::F32)?)?)
}

/// What a training step keeps for its backward pass, and so what it recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointing {
    /// Every block's activations are kept; nothing is recomputed.
    Off,
    /// Each block's input is kept and the whole block recomputed (gradient checkpointing).
    Full,
    /// Each block's input and its frozen-weight matmul outputs are kept; the rest of the
    /// block is recomputed (`model.selective_checkpointing`).
    Selective,
}

impl Checkpointing {
    pub fn of(model: &crate::config::ModelConfig) -> Self {
        match (model.gradient_checkpointing, model.selective_checkpointing) {
            (false, _) => Self::Off,
            (true, false) => Self::Full,
            (true, true) => Self::Selective,
        }
    }
}

impl From<bool> for Checkpointing {
    /// Gradient checkpointing on (full recomputation) or off.
    fn from(on: bool) -> Self {
        if on {
            Self::Full
        } else {
            Self::Off
        }
    }
}

/// Forward + backward of one micro-batch. Returns the mean loss and counted tokens.
pub fn forward_backward(
    model: &CausalLm,
    params: &[(String, Var)],
    batch: &Batch,
    checkpointing: impl Into<Checkpointing>,
    noise: EmbedNoise,
    accum: &mut [Option<Tensor>],
) -> Result<(f64, usize)> {
    let embeds = model.embed(&batch.input_ids)?;
    let embeds = match noise {
        Some(f) => f(&embeds)?,
        None => embeds,
    };
    let checkpointing = checkpointing.into();
    if checkpointing == Checkpointing::Off {
        let x = last_hidden(model, embeds, true)?;
        let (loss, n) = head_loss(model, &x, batch)?;
        let mut grads = backward(&loss)?;
        accumulate(&mut grads, params, accum)?;
        return Ok((loss.to_scalar::<f32>()? as f64, n));
    }
    let t = embeds.dim(1)?;
    let mask = if t > 1 {
        Some(causal_mask(t, 0, embeds.dtype(), embeds.device())?)
    } else {
        None
    };
    let (loss, n) = checkpointed_backward(
        &embeds,
        checkpointing == Checkpointing::Selective,
        model.num_blocks(),
        |i, x| model.block(i, x, 0, mask.as_ref(), None),
        |x| head_loss(model, x, batch),
        params,
        accum,
    )?;
    Ok((loss.to_scalar::<f32>()? as f64, n))
}

/// Backward through a stack of blocks with per-block recomputation (gradient
/// checkpointing), for any architecture whose forward is `embeds → block 0 … block n−1 →
/// head`.
///
/// The forward pass keeps only each block's detached input. The backward pass first runs
/// the head (`head` returns the scalar loss and whatever the caller wants back) from a `Var`
/// of the last hidden state, then rebuilds one block at a time from a `Var` of its input
/// and back-propagates `(out · upstream).sum()`, whose gradient with respect to the block
/// and its input is the chain rule's. Finally the gradient reaches `embeds` and whatever is
/// trainable before the first block. Gradients are added into `accum` (aligned with
/// `params`); the loss is returned with `head`'s extra value. The result equals a plain
/// backward (bit for bit on CPU).
///
/// With `keep_frozen_matmuls` (selective checkpointing) the forward pass also keeps each
/// block's frozen-weight matmul outputs, and the recomputation takes them instead of
/// multiplying again (`model::linear::recompute`); the result is the same.
pub fn checkpointed_backward<R>(
    embeds: &Tensor,
    keep_frozen_matmuls: bool,
    num_blocks: usize,
    block: impl Fn(usize, &Tensor) -> candle_core::Result<Tensor>,
    head: impl FnOnce(&Tensor) -> Result<(Tensor, R)>,
    params: &[(String, Var)],
    accum: &mut [Option<Tensor>],
) -> Result<(Tensor, R)> {
    let mut inputs = Vec::with_capacity(num_blocks);
    let mut tapes = Vec::with_capacity(num_blocks);
    let mut x = embeds.detach();
    for i in 0..num_blocks {
        inputs.push(x.clone());
        let (out, tape) = if keep_frozen_matmuls {
            recompute::record(|| block(i, &x))?
        } else {
            (block(i, &x)?, Tape::default())
        };
        tapes.push(tape);
        x = out.detach();
    }
    let top = Var::from_tensor(&x)?;
    let (loss, extra) = head(top.as_tensor())?;
    let mut grads = backward(&loss)?;
    accumulate(&mut grads, params, accum)?;
    let mut upstream = grads
        .store
        .remove(top.as_tensor())
        .ok_or_else(|| anyhow!("no gradient reached the last hidden state"))?;
    drop(grads);
    for i in (0..num_blocks).rev() {
        let input = Var::from_tensor(&inputs[i])?;
        let tape = tapes.pop().unwrap_or_default();
        let out = if keep_frozen_matmuls {
            recompute::replay(tape, || block(i, input.as_tensor()))?
        } else {
            block(i, input.as_tensor())?
        };
        let mut grads = backward(&(out * &upstream)?.sum_all()?)?;
        accumulate(&mut grads, params, accum)?;
        upstream = grads
            .store
            .remove(input.as_tensor())
            .ok_or_else(|| anyhow!("no gradient reached the input of block {i}"))?;
    }
    // The embeddings (and anything trainable before the first block).
    let mut grads = backward(&(embeds * &upstream)?.sum_all()?)?;
    accumulate(&mut grads, params, accum)?;
    Ok((loss.detach(), extra))
}

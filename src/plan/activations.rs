//! What candle's autograd keeps alive, derived from ftlab's own forward code
//! (`model/llama.rs`, `model/gpt_neox.rs`, `model/ops.rs`, `model/linear/`) and from candle-core 0.11's `backprop.rs`.
//!
//! Two facts about candle's CPU autograd decide everything here:
//!
//! 1. **Every tensor produced by a tracked op is kept** until the loss tensor is dropped.
//!    A tracked op (one with an input that is a `Var` or itself tracked) stores its input
//!    tensors in its `BackpropOp`, so the loss transitively owns *every* intermediate of the
//!    forward pass, not only what the backward formulas need (PyTorch frees e.g. the input
//!    of `sum` or `exp`'s input; candle keeps both). Views (reshape of a contiguous tensor,
//!    transpose, narrow, broadcast_as, `detach`, `to_dtype` to the same dtype) share
//!    storage and cost nothing; `contiguous()` of a strided view and `reshape` of a
//!    strided tensor copy.
//! 2. **`backward()` computes a gradient for every input of every tracked op, tracked or
//!    not, and never removes the untracked ones** from the returned `GradStore`: `Matmul`
//!    always computes `lhs.t().matmul(grad)` for its right-hand side, binary ops always
//!    compute both sides. So a broadcast frozen norm weight gets a (b, t, hidden)
//!    gradient, the RoPE cos/sin tables and the causal mask get gradients of their
//!    broadcast shapes — all alive until the trainer drops the store (`train/step.rs`
//!    drops it after accumulating the `Var` gradients). We call these *stray gradients*.
//!    (A frozen weight `W.t()` in a plain matmul would get a W-sized one; ftlab's frozen
//!    linears and frozen LM head go through `linear::matmul_t`'s custom op, whose backward
//!    yields the input gradient only, dense or 4-bit alike.)
//!
//! Counts below are in elements ("floats"); `plan` multiplies by bytes per element.
use super::shape::{LinearSpec, ModelShape};
use crate::model::RowOps;

/// LoRA as the activation model needs it.
#[derive(Debug, Clone)]
pub(crate) struct LoraOverlay {
    pub r: usize,
    pub dropout: bool,
}

/// Per-token elements kept by one block's forward pass, excluding attention scores.
///
/// LLaMA block (`Block::forward`), per token, h = hidden, qd = heads·hd, kvd = kv·hd,
/// I = intermediate:
/// - `rms_norm` (input): `x.sqr()` h, `mean_keepdim` 1, `+eps` 1, `sqrt` 1,
///   `broadcast_div` h, `broadcast_mul(weight)` h → 3h + 3 composed; the fused kernel
///   (`model::fused_rows`, f32 on the CPU: [`RowOps::Fused`]) keeps its output, h
/// - q/k/v `Linear::forward`: matmul output (qd | kvd); with biases + `broadcast_add`
///   (qd | kvd); then `reshape → transpose(1,2) → contiguous()` copies → 2qd + 4kvd
///   (+ qd + 2kvd with biases)
/// - `Rope::apply` (`rotate`): `x2.neg()` d/2, `cat` d, `x·cos` d, `rotated·sin` d,
///   `add` d → 4.5 per rotated element, for q and k; a partial rotation (GPT-NeoX) adds
///   the final `cat` with the pass-through part (+ the full width); fused (a whole head
///   rotated), the output: 1 per element
/// - attention (`model::fused_attention` f32 on the CPU, `model::generic_attention`
///   otherwise): the merged output qd and two per head (a log-sum-exp, or a maximum and
///   a normaliser); no score-sized tensor (`ModelShape::attention_kept_per_token`)
/// - o_proj matmul h, residual add h
/// - `rms_norm` (post-attention) 3h + 3
/// - MLP: gate matmul I, `silu` I, up matmul I, `gate·up` I, down matmul h → 4I + h
///   (fused SwiGLU: no `silu` tensor, 3I + h)
/// - residual add h
///
/// SmolLM2 (h 576, qd 576, kvd 192, I 1536): 17,880 floats per token per block composed, 11,346 with
/// the fused kernels.
///
/// GPT-NeoX block (`NeoxBlock::forward`), heads = kv heads, qd = h:
/// - `layer_norm` ×2: `centered` h, `sqr` h, `broadcast_div` h, `·weight` h, `+bias` h
///   (+ 3 per-token scalars) → 5h + 3 each
/// - qkv matmul 3h + bias 3h; three `narrow(..).contiguous()` copies 3h
/// - RoPE on q and k as above
/// - attention as above: its output h and two per head
/// - dense matmul h + bias h
/// - MLP: h_to_4h I + bias I, GELU I, 4h_to_h h + bias h → 3I + 2h
/// - two residual adds 2h
///
/// LoRA on a targeted linear without dropout: one op of x, A and B adds the update to
/// the base output (`LoraAdapter::add_update`), keeping nothing beyond the output the base
/// keeps anyway → 0. With dropout in training, the composed form (`Linear::forward` +
/// `LoraAdapter::forward`), per token: `x·Aᵀ` r, `·scale` r, `·Bᵀ` out, `y + lora` out →
/// 2r + 2·out; `candle_nn::ops::dropout` keeps its f32 mask and the product (2·in), and
/// the freed uniform draw and its f32 cast (2·in more) stay resident between the kept
/// tensors (glibc cannot return them): + 4·in. Each adapter draws its own mask, so q/k/v
/// (and gate/up) pay it separately. Measured on SmolLM2, r 8, 1×256: dropout 0.05 costs
/// ~860 MiB (`measure_lora_dropout_backward`).
pub(crate) fn block_retained_per_token(
    s: &ModelShape,
    layer_linears: &[&LinearSpec],
    lora: Option<&LoraOverlay>,
    lora_targets: &dyn Fn(&LinearSpec) -> bool,
    ops: RowOps,
) -> f64 {
    let base = s.block_kept_per_token(ops);
    let lora_extra: f64 = match lora {
        Some(l) if l.dropout => layer_linears
            .iter()
            .filter(|lin| lora_targets(lin))
            .map(|lin| 2.0 * l.r as f64 + 2.0 * lin.out_f as f64 + 4.0 * lin.in_f as f64)
            .sum(),
        _ => 0.0,
    };
    base + lora_extra
}

/// Stray gradients of one block that stay in the `GradStore` (see the module docs), in
/// elements.
///
/// RoPE, composed: `x.broadcast_mul(cos)` and `rotated.broadcast_mul(sin)` with untracked
/// tables give cos and sin gradients of the broadcast (b, heads, t, rot) shape, for q and
/// k (the fused kernel returns none). The mask gets no gradient (the fused softmax returns
/// none for it). Frozen norms (LoRA/QLoRA), composed: `broadcast_mul(weight)` (and
/// `+bias`) → h per token each (the fused RMSNorm returns one vector);
/// frozen biases of linears → out per token. Dropout masks (LoRA dropout) are untracked
/// inputs of a `Mul` → in per token. Frozen linear weights: none (custom op).
pub(crate) fn block_stray(
    s: &ModelShape,
    layer_linears: &[&LinearSpec],
    tokens: usize,
    frozen_base: bool,
    lora: Option<&LoraOverlay>,
    lora_targets: &dyn Fn(&LinearSpec) -> bool,
    ops: RowOps,
) -> f64 {
    let n = tokens as f64;
    let rot = s.rotary_dim.min(s.head_dim) as f64;
    // The fused kernels return no gradient for the tables and one vector for a norm weight.
    let fused_rope = ops == RowOps::Fused && s.rotary_dim >= s.head_dim;
    let fused_norms = ops == RowOps::Fused && s.rms_norms();
    let mut per_token = if fused_rope {
        0.0
    } else {
        2.0 * (s.heads as f64 * rot) + 2.0 * (s.kv_heads as f64 * rot)
    };
    if frozen_base {
        if !fused_norms {
            per_token += s.block_small_params() as f64;
        }
        per_token += layer_linears
            .iter()
            .filter(|lin| lin.bias)
            .map(|lin| lin.out_f as f64)
            .sum::<f64>();
    }
    if let Some(l) = lora {
        if l.dropout {
            per_token += layer_linears
                .iter()
                .filter(|lin| lora_targets(lin))
                .map(|lin| lin.in_f as f64)
                .sum::<f64>();
        }
    }
    per_token * n
}

/// Gradients alive at once inside one block's backward, besides the kept activations:
/// the in-flight gradient of the node being processed, the accumulated gradients of its
/// inputs and `or_insert`'s zero tensors. Worst around attention (a few score-sized
/// tensors: `ModelShape::attention_backward_scores`) and the MLP (a few (t, I)
/// tensors). An estimate: those score tensors + 2I + 3h per token.
pub(crate) fn block_backward_transient(s: &ModelShape, b: usize, t: usize, ops: RowOps) -> f64 {
    let n = (b * t) as f64;
    s.attention_backward_scores(ops, b, t)
        + n * (2.0 * s.intermediate as f64 + 3.0 * s.hidden as f64)
}

/// Rows of one chunk of the fused LM-head loss (`model::head_loss`), at most the scored
/// tokens.
fn head_chunk_rows(s: &ModelShape, scored: f64) -> f64 {
    (crate::model::head_loss::chunk_rows(s.vocab) as f64).min(scored)
}

/// Elements the head keeps (`DecoderEnds::head_split` + `train::step::head_loss` +
/// `model::head_loss`), t tokens per row, t−1 scored: the final norm (3h + 3 | 5h + 3)
/// per token; for b > 1 the `narrow(1, 0, t−1).reshape(..)` of the normed states is
/// strided and copies (h per scored token). The fused loss keeps no logits: its backward
/// recomputes them from the hidden states and the head weight, which exist anyway.
pub(crate) fn head_retained(s: &ModelShape, b: usize, t: usize, ops: RowOps) -> f64 {
    let (n, scored) = ((b * t) as f64, (b * t.saturating_sub(1).max(1)) as f64);
    let copy = if b > 1 { s.hidden as f64 } else { 0.0 };
    n * s.final_norm_kept_per_token(ops) + scored * copy
}

/// Stray gradients of the head: a frozen final norm → h (| 2h) per token, composed (the
/// fused RMSNorm's is one vector). (The fused loss returns no gradient for a frozen head
/// weight: nothing.)
pub(crate) fn head_stray(
    s: &ModelShape,
    b: usize,
    t: usize,
    frozen_base: bool,
    ops: RowOps,
) -> f64 {
    let n = (b * t) as f64;
    let mut e = 0.0;
    if frozen_base && !(ops == RowOps::Fused && s.rms_norms()) {
        e += n * s.top_small_params() as f64;
    }
    e
}

/// Gradients alive at once while the backward pass crosses the head, beyond the stray
/// gradients of [`head_stray`]. Inside the fused loss's backward: one chunk's recomputed
/// logits (turned into their gradient in place) and a few hidden-sized tensors (the
/// chunks' d hidden, their `cat`, its `index_add` into zeros, candle's accumulated copy,
/// then the gradient through the `narrow`/reshape and the norm): 4 × (b·t·h). For a
/// trainable head weight, the (V, h) accumulator plus one chunk's (V, h) term while it is
/// added; then candle's `or_insert` + `add` makes the table's own gradient while the
/// returned one is alive: 2 × V·h either way.
pub(crate) fn head_backward_transient(
    s: &ModelShape,
    b: usize,
    t: usize,
    head_trainable: bool,
) -> f64 {
    let scored = (b * t.saturating_sub(1).max(1)) as f64;
    let chunk = head_chunk_rows(s, scored) * s.vocab as f64;
    let hidden = (b * t * s.hidden) as f64;
    let vh = (s.vocab * s.hidden) as f64;
    let tables = if head_trainable { 2.0 * vh } else { 0.0 };
    chunk + 4.0 * hidden + tables
}

/// Elements alive at the loss of a forward pass without gradients (evaluation): one
/// chunk's logits and its per-row losses, next to the normed states (and their strided
/// copy for b > 1).
pub(crate) fn head_forward_transient(s: &ModelShape, b: usize, t: usize) -> f64 {
    let scored = (b * t.saturating_sub(1).max(1)) as f64;
    let n = (b * t) as f64;
    let copy = if b > 1 { scored } else { 0.0 };
    head_chunk_rows(s, scored) * s.vocab as f64 + (n + copy) * s.hidden as f64
}

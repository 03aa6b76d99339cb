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
/// - `rms_norm` (input): its output, h — the fused kernel (`model::fused_rows`, f32 on
///   the CPU: [`RowOps::Fused`]) and the generic definition (`model::generic_rows`) alike
///   (composed: `x.sqr()` h, `mean_keepdim` 1, `+eps` 1, `sqrt` 1, `broadcast_div` h,
///   `broadcast_mul(weight)` h → 3h + 3, and in bf16 the f32 copy of x besides; only
///   untracked)
/// - q/k/v `Linear::forward`: matmul output (qd | kvd); with biases + `broadcast_add`
///   (qd | kvd); then `reshape → transpose(1,2) → contiguous()` copies → 2qd + 4kvd
///   (+ qd + 2kvd with biases)
/// - `Rope::apply`: the output, 1 per element, for q and k (fused or generic); a partial
///   rotation (GPT-NeoX) adds the final `cat` with the pass-through part (+ the full
///   width), and on the CPU in f32 it is composed: `x2.neg()` d/2, `cat` d, `x·cos` d,
///   `rotated·sin` d, `add` d → 4.5 per rotated element
/// - attention (`model::fused_attention` f32 on the CPU, `model::generic_attention`
///   otherwise): the merged output qd and two per head (a log-sum-exp, or a maximum and
///   a normaliser); no score-sized tensor (`ModelShape::attention_kept_per_token`)
/// - o_proj matmul h, residual add h
/// - `rms_norm` (post-attention) h
/// - MLP: gate matmul I, up matmul I, SwiGLU's `silu(gate)·up` I (fused or generic; the
///   composed ops would keep `silu` too), down matmul h → 3I + h
/// - residual add h
///
/// SmolLM2 (h 576, qd 576, kvd 192, I 1536): 11,346 floats per token per block on either
/// path (17,880 when the generic path ran the composed ops).
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
/// RoPE, composed (a partial rotation on the CPU in f32): `x.broadcast_mul(cos)` and
/// `rotated.broadcast_mul(sin)` with untracked tables give cos and sin gradients of the
/// broadcast (b, heads, t, rot) shape, for q and k (the fused kernel and the generic
/// definition return none). The mask gets no gradient. A frozen norm's weight gets none
/// or one vector (the fused RMSNorm), where the composed ops' `broadcast_mul(weight)` gave
/// h per token;
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
    // The fused kernels and the generic definitions return no gradient for the tables and
    // at most one vector for a norm weight; only a partial rotation on the CPU in f32 is
    // composed.
    let composed_rope = ops == RowOps::Fused && s.rotary_dim < s.head_dim;
    let mut per_token = if composed_rope {
        2.0 * (s.heads as f64 * rot) + 2.0 * (s.kv_heads as f64 * rot)
    } else {
        0.0
    };
    if frozen_base {
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

/// Rows of one chunk of the fused LM-head loss (`model::head_loss`) on a GPU (`gpu`) or
/// the CPU, at most the scored tokens.
fn head_chunk_rows(s: &ModelShape, scored: f64, gpu: bool) -> f64 {
    (crate::model::head_loss::chunk_rows_on(s.vocab, gpu) as f64).min(scored)
}

/// Bytes of one chunk's logits-sized tensors alive at once in the LM-head loss: the CPU
/// kernel turns one f32 chunk into its gradient in place; the generic definition holds
/// two f32 chunks (each step's input until its output exists) and, at the matmuls, one
/// in the compute dtype (`db` bytes).
fn head_chunk_bytes(s: &ModelShape, scored: f64, ops: RowOps, db: f64, gpu: bool) -> f64 {
    let chunk = head_chunk_rows(s, scored, gpu) * s.vocab as f64;
    match ops {
        RowOps::Fused => 4.0 * chunk,
        RowOps::Generic => (2.0 * 4.0 + db) * chunk,
    }
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

/// Bytes alive at once while the backward pass crosses the head. Inside the fused loss's backward: one chunk's logits-sized
/// tensors ([`head_chunk_bytes`]) and a few hidden-sized tensors (the chunks' d hidden,
/// their `cat`, its `index_add` into zeros, candle's accumulated copy, then the gradient
/// through the `narrow`/reshape and the norm): 4 × (b·t·h) in the compute dtype. For a
/// trainable head weight, the (V, h) accumulator (f32) plus one chunk's (V, h) term while
/// it is added; then candle's `or_insert` + `add` makes the table's own gradient while the
/// returned one is alive: 2 × V·h in f32 either way.
pub(crate) fn head_backward_transient(
    s: &ModelShape,
    b: usize,
    t: usize,
    head_trainable: bool,
    (ops, db, gpu): (RowOps, f64, bool),
) -> f64 {
    let scored = (b * t.saturating_sub(1).max(1)) as f64;
    let hidden = (b * t * s.hidden) as f64;
    let vh = (s.vocab * s.hidden) as f64;
    let tables = if head_trainable { 2.0 * 4.0 * vh } else { 0.0 };
    head_chunk_bytes(s, scored, ops, db, gpu) + 4.0 * hidden * db + tables
}

/// Bytes alive at the loss of a forward pass without gradients (evaluation): one chunk's
/// logits-sized tensors ([`head_chunk_bytes`]) and its per-row losses, next to the normed
/// states (and their strided copy for b > 1).
pub(crate) fn head_forward_transient(
    s: &ModelShape,
    b: usize,
    t: usize,
    (ops, db, gpu): (RowOps, f64, bool),
) -> f64 {
    let scored = (b * t.saturating_sub(1).max(1)) as f64;
    let n = (b * t) as f64;
    let copy = if b > 1 { scored } else { 0.0 };
    head_chunk_bytes(s, scored, ops, db, gpu) + (n + copy) * s.hidden as f64 * db
}

//! The device-generic definition of `fused_attention`: attention that keeps no
//! score-sized tensor for its backward, written with candle tensor ops so that it holds on
//! every device (the GPU's path, and the CPU's when the generic path is forced or the
//! dtype is not f32).
//!
//! The forward runs on detached inputs: the scores, softmax(scale · q·kᵀ + mask) and its
//! product with v are transients, and only each row's maximum and normaliser (two values
//! per query and head) are kept beside q, k and v, which the graph holds anyway. The
//! backward recomputes the probabilities from them, P = exp(scale · q·kᵀ + mask − max) /
//! Σ, and forms
//! dv = Pᵀ·dy, dP = dy·vᵀ, dS = P ⊙ (dP − Σ dP ⊙ P), dq = scale · dS·k, dk = scale · dSᵀ·q
//! (the key/value heads' gradients summed over their groups of query heads). Composed,
//! the graph would keep the scores and the probabilities of every layer until the
//! backward reached it: two (b, heads, t, s) tensors per layer, the largest activations of
//! a long sequence. Here a few such tensors live only while one layer's backward runs.
//!
//! Matmuls run in the inputs' dtype (bf16 on the GPU), the softmax and its gradient in
//! f32, as the composed ops do. A query row that sees no key gives zeros and no gradient.
use candle_core::{DType, Result, Tensor, D};

use super::generic::attach3;
use super::ops::{merge_heads, repeat_kv, split_heads};

/// softmax(scale · q·kᵀ + mask)·v for q (b, h, t, d) over k/v (b, kv, s, d), h a multiple
/// of kv, mask additive and broadcastable to (b, h, t, s); the heads merged: (b, t, h·d).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (h, d) = (q.dim(1)?, q.dim(3)?);
    let n_rep = h / k.dim(1)?;
    let mask = mask.map(|m| m.detach().to_dtype(DType::F32)).transpose()?;
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let scores = masked_scores(&qd, &repeat_kv(&kd, n_rep)?, mask.as_ref(), scale)?;
    let norm = RowNorm::of(&scores)?;
    let probs = norm.probs(scores)?;
    let y = merge_heads(
        &probs
            .to_dtype(vd.dtype())?
            .matmul(&repeat_kv(&vd, n_rep)?.contiguous()?)?,
    )?;
    drop(probs);
    attach3("recomputed-attention", (q, k, v), &y, move |q, k, v, g| {
        let dtype = q.dtype();
        let (k_rep, v_rep) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?.contiguous()?);
        let dy = split_heads(g, h, d)?.to_dtype(dtype)?;
        let probs = norm.probs(masked_scores(q, &k_rep, mask.as_ref(), scale)?)?;
        let p = probs.to_dtype(dtype)?;
        let dv = group_sum(&p.t()?.matmul(&dy)?, n_rep)?;
        drop(p);
        let ds = {
            let dp = dy.matmul(&v_rep.t()?)?.to_dtype(DType::F32)?;
            let dot = (&dp * &probs)?.sum_keepdim(D::Minus1)?;
            (dp.broadcast_sub(&dot)? * probs)?
        }
        .to_dtype(dtype)?;
        let dq = (ds.matmul(&k_rep.contiguous()?)? * scale)?;
        let dk = group_sum(&(ds.t()?.matmul(q)? * scale)?, n_rep)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    })
}

/// scale · q·kᵀ + mask in f32, (b, h, t, s).
fn masked_scores(q: &Tensor, k: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let scores = (q
        .contiguous()?
        .matmul(&k.t()?.contiguous()?)?
        .to_dtype(DType::F32)?
        * scale)?;
    match mask {
        Some(m) => scores.broadcast_add(m),
        None => Ok(scores),
    }
}

/// What the softmax of each row needs besides its scores: their maximum and the
/// reciprocal of Σ exp(score − maximum), (…, 1) each, f32. Kept apart rather than as one
/// log-sum-exp, so that the probabilities are exact to a few ulps however large the
/// scores (exp(s − lse) loses the ulps of a large lse).
struct RowNorm {
    max: Tensor,
    inv_sum: Tensor,
}

impl RowNorm {
    /// A row of −∞ only (a query that sees no key) gets `f32::MIN` as its maximum and a
    /// tiny sum, so that its probabilities are 0, not NaN.
    fn of(scores: &Tensor) -> Result<Self> {
        let max = scores.max_keepdim(D::Minus1)?.maximum(f32::MIN)?;
        let sum = scores.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
        let inv_sum = sum.maximum(f32::MIN_POSITIVE)?.recip()?;
        Ok(Self { max, inv_sum })
    }

    /// softmax of `scores` (f32) by these row statistics.
    fn probs(&self, scores: Tensor) -> Result<Tensor> {
        scores
            .broadcast_sub(&self.max)?
            .exp()?
            .broadcast_mul(&self.inv_sum)
    }
}

/// The gradient of `repeat_kv`: (b, kv·n_rep, s, d) → (b, kv, s, d), each key/value head
/// the sum over the query heads of its group.
fn group_sum(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.reshape((b, h / n_rep, n_rep, s, d))?.sum(2)
}

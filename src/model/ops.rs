//! Tensor ops written with candle primitives that all have a backward pass.
//!
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope` kernels are
//! applied without a backward op: `backward()` succeeds but nothing upstream gets a
//! gradient (see CANDLE_NOTES.md). Every model in ftlab goes through this module instead.
use candle_core::{DType, Device, Result, Tensor, D};

/// Rows of an embedding table (vocab, h) for token ids (b, t) → (b, t, h).
///
/// A trained table's gradient goes to the training step's sink when one is open
/// (`grad_sink::scatter_rows`: the rows added in place, into the tied head's gradient
/// where there is one) instead of candle's `index_add` into a zero table, itself added
/// into another zero table.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let h = table.dim(1)?;
    let flat = ids.flatten_all()?;
    let rows = if table.is_variable() && ids.dtype() == DType::U32 {
        let ids_v: Vec<u32> = flat.to_vec1()?;
        let y = table.detach().index_select(&flat, 0)?;
        let var = table.clone();
        super::generic::attach1_opt("embedding", table, &y, move |_, _, g| {
            if super::grad_sink::scatter_rows(&var, &ids_v, &g.contiguous()?)? {
                return Ok(None);
            }
            let idx = Tensor::from_slice(&ids_v, ids_v.len(), g.device())?;
            Ok(Some(var.detach().zeros_like()?.index_add(&idx, g, 0)?))
        })?
    } else {
        table.index_select(&flat, 0)?
    };
    rows.reshape((b, t, h))
}

/// Log-softmax over the last dimension (max-shifted for stability).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    super::fused::log_softmax(x)
}

/// Root-mean-square norm: `x / sqrt(mean(x²) + eps) * weight`, computed in f32 (the fused
/// kernel of `fused_rows` where it applies).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    super::fused_rows::rms_norm(x, weight, eps)
}

/// [`rms_norm`] composed of candle ops: the fused kernel's twin, and the path of other
/// devices and dtypes.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)
}

/// Layer norm over the last dimension with weight and bias, computed in f32: its
/// device-generic definition when an input is tracked (`generic_rows::layer_norm`, which
/// keeps no intermediate), the composed ops otherwise.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if x.track_op() || weight.track_op() || bias.track_op() {
        return super::generic_rows::layer_norm(x, weight, bias, eps);
    }
    layer_norm_composed(x, weight, bias, eps)
}

/// [`layer_norm`] composed of candle ops: the generic definition's twin, and the path of
/// inference.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)?
        .broadcast_add(&bias.to_dtype(dtype)?)
}

/// Positions whose cos/sin rows are computed once at load; later ones are computed when
/// used. (A table for all of Gemma 3's 32 768 positions × 256 dims would be 67 MB.)
const ROPE_TABLE_POSITIONS: usize = 4096;

/// Cos/sin tables for rotary position embeddings in the half-split (HF) layout.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// 1/θ^(2i/d), (1, rot_dim/2), for positions past the tables.
    inv_freq: Tensor,
    max_pos: usize,
    /// Number of leading head dimensions that are rotated (GPT-NeoX rotates a fraction).
    rot_dim: usize,
}

impl Rope {
    pub fn new(
        rot_dim: usize,
        theta: f64,
        max_pos: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let half = rot_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / rot_dim as f64) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), dev)?;
        let (cos, sin) = Self::rows(&inv_freq, 0, max_pos.min(ROPE_TABLE_POSITIONS), dtype)?;
        Ok(Self {
            cos,
            sin,
            inv_freq,
            max_pos,
            rot_dim,
        })
    }

    /// cos/sin rows (n, rot_dim) for positions `start..start + n`.
    fn rows(inv_freq: &Tensor, start: usize, n: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = Tensor::arange(start as u32, (start + n) as u32, inv_freq.device())?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = pos.broadcast_mul(inv_freq)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }

    pub fn max_positions(&self) -> usize {
        self.max_pos
    }

    /// Applies the rotation to `x` of shape (batch, heads, seq, head_dim) for positions
    /// `start..start + seq`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_b, _h, t, head_dim) = x.dims4()?;
        let (cos, sin) = self.tables(start, t)?;
        if self.rot_dim == head_dim {
            return super::fused_rows::rope(x, &cos, &sin);
        }
        let rot = x.narrow(D::Minus1, 0, self.rot_dim)?;
        let pass = x.narrow(D::Minus1, self.rot_dim, head_dim - self.rot_dim)?;
        Tensor::cat(
            &[&super::fused_rows::rope_unfused(&rot, &cos, &sin)?, &pass],
            D::Minus1,
        )
    }

    /// The cos/sin rows (t, rot_dim) of positions `start..start + t`.
    pub fn tables(&self, start: usize, t: usize) -> Result<(Tensor, Tensor)> {
        if start + t > self.max_positions() {
            candle_core::bail!(
                "sequence position {} exceeds the model's maximum of {} positions",
                start + t,
                self.max_positions()
            );
        }
        if start + t <= self.cos.dim(0)? {
            Ok((self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?))
        } else {
            Self::rows(&self.inv_freq, start, t, self.cos.dtype())
        }
    }
}

/// The half-split rotation `x·cos + rotate_half(x)·sin` composed of candle ops: the fused
/// kernel's twin (`fused_rows::rope`), and the path of other devices and dtypes.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?
        .broadcast_add(&rotated.broadcast_mul(sin)?)
}

/// Additive causal mask of shape (t, start + t): 0 where a query may attend, -inf elsewhere.
pub fn causal_mask(t: usize, start: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    window_mask(t, start, 0, start + t, None, dtype, dev)
}

/// Additive mask of shape (t, n_keys) for `t` queries at positions `start..start + t`
/// over keys at positions `first..first + n_keys`: a query sees the keys at or before it
/// and, with `window = Some(w)`, only the `w` most recent of them (itself included) — HF's
/// sliding window (`kv_idx > q_idx - w`).
pub fn window_mask(
    t: usize,
    start: usize,
    first: usize,
    n_keys: usize,
    window: Option<usize>,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let q = start + i;
            (0..n_keys).map(move |j| {
                let k = first + j;
                let visible = k <= q && window.is_none_or(|w| q - k < w);
                if visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, n_keys), dev)?.to_dtype(dtype)
}

/// Scaled dot-product attention with an optional additive mask, scaled by 1/√d.
/// q: (b, h, t, d), k/v: (b, h, s, d) with the same number of heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    attention_scaled(q, k, v, mask, 1.0 / (d as f64).sqrt())
}

/// [`attention`] with the score scale given (Gemma scales by `query_pre_attn_scalar^-½`).
pub fn attention_scaled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    let mask = mask.map(|m| m.to_dtype(DType::F32)).transpose()?;
    // The softmax computes in f32 and answers in the scores' dtype (16-bit scores keep
    // 16-bit probabilities for the backward).
    let probs =
        super::fused::scaled_masked_softmax(&scores, mask.as_ref(), scale)?.to_dtype(v.dtype())?;
    probs.matmul(&v.contiguous()?)
}

/// (b, t, heads·d) → (b, heads, t, d), contiguous: a projection's output split into heads.
pub fn split_heads(y: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, t, _) = y.dims3()?;
    y.reshape((b, t, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()
}

/// (b, heads, t, head_dim) → (b, t, heads·head_dim): the heads of attention's output
/// merged back, the inverse of [`split_heads`].
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = y.dims4()?;
    y.transpose(1, 2)?.reshape((b, t, h * d))
}

/// Grouped-query attention: q (b, h, t, d) over k/v (b, kv, s, d) with h a multiple of kv,
/// scores scaled by `scale`; the heads merged back to (b, t, h·d). A decoding step (a few
/// queries, nothing tracked, on the CPU) goes through `decode_attention`'s kernel, a
/// sequence (training, prompts) in f32 on the CPU through `fused_attention`'s, one tracked
/// for backward on any other device or dtype through its device-generic definition
/// (`generic_attention`: no score-sized tensor kept), and the composed ops otherwise.
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if super::decode_attention::applies(q, k, v, mask) {
        return super::decode_attention::attend(q, k, v, mask, scale);
    }
    if super::fused_attention::applies(q, k, v, mask) {
        return super::fused_attention::attend(q, k, v, mask, scale);
    }
    if q.track_op() || k.track_op() || v.track_op() {
        return super::generic_attention::attend(q, k, v, mask, scale);
    }
    grouped_attention_composed(q, k, v, mask, scale)
}

/// [`grouped_attention`] composed of candle ops (with a backward): the twin of the
/// decoding, fused and generic kernels, and the untracked path of other devices and dtypes.
pub fn grouped_attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?;
    let v = repeat_kv(v, n_rep)?;
    merge_heads(&attention_scaled(q, &k, &v, mask, scale)?)
}

/// Repeats key/value heads for grouped-query attention: (b, kv, s, d) → (b, kv·n_rep, s, d).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// Mean cross entropy over the positions whose `mask` is 1.
///
/// `logits`: (n, vocab); `targets`: (n,) u32; `mask`: (n,) f32 of 0/1. Masked positions
/// (prompt tokens, padding) contribute neither loss nor gradient — the ignore-index of
/// PyTorch's cross entropy, which candle-nn's lacks. Returns (mean loss, number of counted
/// tokens).
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, usize)> {
    let logp = log_softmax_last(&logits.to_dtype(DType::F32)?)?;
    let picked = logp
        .gather(&targets.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?;
    let mask = mask.to_dtype(DType::F32)?;
    let count = mask.sum_all()?.to_scalar::<f32>()? as usize;
    if count == 0 {
        candle_core::bail!("no target tokens to score: every position is masked");
    }
    let loss = ((picked * &mask)?.sum_all()?.neg()? / count as f64)?;
    Ok((loss, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn dev() -> Device {
        Device::Cpu
    }

    #[test]
    fn rms_norm_matches_candle_fused_kernel() -> Result<()> {
        let x = Tensor::randn(0f32, 1., (2, 3, 8), &dev())?;
        let w = Tensor::randn(1f32, 0.1, 8, &dev())?;
        let ours = rms_norm(&x, &w, 1e-5)?;
        let fused = candle_nn::ops::rms_norm(&x, &w, 1e-5)?;
        let diff = (ours - fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "diff {diff}");
        Ok(())
    }

    #[test]
    fn layer_norm_matches_candle_fused_kernel() -> Result<()> {
        let x = Tensor::randn(0f32, 1., (2, 3, 8), &dev())?;
        let w = Tensor::randn(1f32, 0.1, 8, &dev())?;
        let b = Tensor::randn(0f32, 0.1, 8, &dev())?;
        let ours = layer_norm(&x, &w, &b, 1e-5)?;
        let fused = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5)?;
        let diff = (ours - fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "diff {diff}");
        Ok(())
    }

    #[test]
    fn rope_matches_candle_kernel() -> Result<()> {
        let (b, h, t, d) = (1, 2, 5, 8);
        let x = Tensor::randn(0f32, 1., (b, h, t, d), &dev())?;
        let rope = Rope::new(d, 10_000., 16, DType::F32, &dev())?;
        let ours = rope.apply(&x, 3)?;
        let cos = rope.cos.narrow(0, 3, t)?.narrow(1, 0, d / 2)?;
        let sin = rope.sin.narrow(0, 3, t)?.narrow(1, 0, d / 2)?;
        let reference = candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?;
        let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "diff {diff}");
        Ok(())
    }

    #[test]
    fn masked_cross_entropy_ignores_masked_positions_and_matches_unmasked_mean() -> Result<()> {
        let logits = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 6), &dev())?)?;
        let targets = Tensor::new(&[1u32, 2, 3, 4], &dev())?;
        let mask = Tensor::new(&[0f32, 1., 1., 0.], &dev())?;
        let (loss, n) = masked_cross_entropy(logits.as_tensor(), &targets, &mask)?;
        assert_eq!(n, 2);
        let rows = logits.as_tensor().narrow(0, 1, 2)?;
        let reference = candle_nn::loss::cross_entropy(&rows, &targets.narrow(0, 1, 2)?)?;
        let diff = (loss.to_scalar::<f32>()? - reference.to_scalar::<f32>()?).abs();
        assert!(diff < 1e-6, "diff {diff}");
        let grads = loss.backward()?;
        let g = grads.get(&logits).expect("gradient for logits");
        let row0 = g.get(0)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        let row1 = g.get(1)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(row0, 0.0, "masked row must get no gradient");
        assert!(row1 > 0.0);
        Ok(())
    }

    #[test]
    fn causal_mask_blocks_future_positions() -> Result<()> {
        let m = causal_mask(2, 3, DType::F32, &dev())?.to_vec2::<f32>()?;
        assert_eq!(m[0][..4], [0., 0., 0., 0.]);
        assert!(m[0][4].is_infinite());
        assert_eq!(m[1], vec![0.; 5]);
        Ok(())
    }
}

//! Attention of a few new queries over the key/value cache, for decoding (inference only).
//!
//! Composed (`ops::grouped_attention`), one decoding step's attention is a dozen candle ops
//! per layer: the key/value heads repeated for grouped queries, transposed and copied
//! contiguous, two batched matmuls of one row each, the softmax, the heads merged back.
//! This kernel reads the cache where it lies (any row stride, so a preallocated cache
//! needs no copy) and writes the merged heads directly: one pass, no intermediate tensors.
//! It has no backward; `ops::grouped_attention` uses it only when nothing is tracked for
//! autograd, on the CPU in f32, for at most [`MAX_QUERIES`] queries, and the composed ops
//! otherwise. The tests compare the two.
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Queries up to which the kernel is used: a decoding step's one. A prompt, however short,
/// goes through the batched matmuls, so that its logits do not depend on whether the
/// weights are tracked (a model and its exported copy give the same logits, bit for bit).
pub const MAX_QUERIES: usize = 1;

struct DecodeAttention {
    scale: f32,
    /// The additive mask (t, s), row-major, if any.
    mask: Option<Vec<f32>>,
}

/// A 4-d tensor's data and strides (elements), the last dimension contiguous.
struct View<'a> {
    data: &'a [f32],
    stride: [usize; 3],
}

impl<'a> View<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("{what}: expected f32 data");
        };
        let st = l.stride();
        if st.len() != 4 || st[3] != 1 {
            candle_core::bail!("{what}: expected 4 dimensions, the last contiguous");
        }
        Ok(Self {
            data: &data[l.start_offset()..],
            stride: [st[0], st[1], st[2]],
        })
    }

    fn row(&self, i: usize, j: usize, k: usize, d: usize) -> &[f32] {
        let at = i * self.stride[0] + j * self.stride[1] + k * self.stride[2];
        &self.data[at..at + d]
    }
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = l1.shape().dims4()?;
        let (_, kv, s, _) = l2.shape().dims4()?;
        let (q, k, v) = (
            View::new(s1, l1, "queries")?,
            View::new(s2, l2, "keys")?,
            View::new(s3, l3, "values")?,
        );
        if let Some(m) = &self.mask {
            if m.len() != t * s {
                candle_core::bail!("attention mask: expected {t}×{s} values, got {}", m.len());
            }
        }
        let n_rep = h / kv;
        let mut out = vec![0f32; b * t * h * d];
        let out_at = out.as_mut_ptr() as usize;
        // One item per (batch, head, query); its output row is (batch, query, head).
        super::pool::par_ranges(b * h * t, |items| {
            let mut p = vec![0f32; s];
            for item in items {
                let (bi, hi, ti) = (item / (h * t), item / t % h, item % t);
                let qr = q.row(bi, hi, ti, d);
                for (j, pj) in p.iter_mut().enumerate() {
                    let kr = k.row(bi, hi / n_rep, j, d);
                    let dot: f32 = qr.iter().zip(kr).map(|(a, b)| a * b).sum();
                    *pj = dot * self.scale + self.mask.as_ref().map_or(0.0, |m| m[ti * s + j]);
                }
                super::fused::softmax_row(&mut p);
                // SAFETY: each item writes its own row of `out`, which outlives the call.
                let row = unsafe {
                    let at = ((bi * t + ti) * h + hi) * d;
                    std::slice::from_raw_parts_mut((out_at as *mut f32).add(at), d)
                };
                for (j, pj) in p.iter().enumerate() {
                    if *pj != 0.0 {
                        for (o, v) in row.iter_mut().zip(v.row(bi, hi / n_rep, j, d)) {
                            *o += pj * v;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }
}

/// Whether [`attend`] applies to these inputs.
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> bool {
    let plain = |x: &Tensor| {
        !x.track_op()
            && x.dtype() == candle_core::DType::F32
            && !super::generic::generic_kernels(x.device())
            && x.rank() == 4
    };
    plain(q)
        && plain(k)
        && plain(v)
        && q.dim(2).is_ok_and(|t| t <= MAX_QUERIES)
        && mask.is_none_or(|m| !m.track_op() && m.rank() == 2)
}

/// Softmax(scale · q·kᵀ + mask)·v with k/v heads shared by groups of query heads: q (b, h,
/// t, d), k/v (b, kv, s, d) with the last dimension contiguous, mask (t, s). Returns the
/// heads merged, (b, t, h·d). Check [`applies`] first.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let mask = match mask {
        Some(m) => Some(
            m.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        ),
        None => None,
    };
    let last_contiguous = |x: &Tensor| -> Result<Tensor> {
        if x.stride()[3] == 1 {
            Ok(x.clone())
        } else {
            x.contiguous()
        }
    };
    let op = DecodeAttention {
        scale: scale as f32,
        mask,
    };
    last_contiguous(q)?.apply_op3(&last_contiguous(k)?, &last_contiguous(v)?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::tests::{max_diff, randn};
    use candle_core::{DType, Device};

    #[test]
    fn the_kernel_equals_the_composed_grouped_attention() -> Result<()> {
        let (b, h, kv, d) = (2, 6, 2, 8);
        for (t, s, masked) in [(1, 9, false), (3, 11, true), (1, 1, false)] {
            let q = randn(&[b, h, t, d], 1);
            // The cache as a preallocated buffer read through a narrowed view.
            let k = randn(&[b, kv, s + 4, d], 2).narrow(2, 0, s)?;
            let v = randn(&[b, kv, s + 4, d], 3).narrow(2, 0, s)?;
            let mask = masked.then(|| {
                crate::model::ops::window_mask(t, s - t, 0, s, Some(5), DType::F32, &Device::Cpu)
                    .unwrap()
            });
            assert_eq!(applies(&q, &k, &v, mask.as_ref()), t <= MAX_QUERIES);
            let fast = attend(&q, &k, &v, mask.as_ref(), 0.3)?;
            let composed = crate::model::ops::grouped_attention_composed(
                &q,
                &k.contiguous()?,
                &v.contiguous()?,
                mask.as_ref(),
                0.3,
            )?;
            assert_eq!(fast.dims(), composed.dims());
            let diff = max_diff(&fast, &composed);
            assert!(diff < 1e-5, "t {t} s {s}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn tracked_inputs_and_long_prompts_take_the_composed_ops() -> Result<()> {
        let q = randn(&[1, 2, 9, 4], 1);
        let k = randn(&[1, 2, 9, 4], 2);
        assert!(!applies(&q, &k, &k, None));
        let q1 = candle_core::Var::from_tensor(&q.narrow(2, 0, 1)?)?;
        assert!(!applies(q1.as_tensor(), &k, &k, None));
        Ok(())
    }
}

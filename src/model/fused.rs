//! Fused CPU kernels with their own backward pass, for the two places where composed ops
//! keep the most memory alive for the backward pass.
//!
//! - [`scaled_masked_softmax`]: `softmax(scale · scores + mask)` of attention. Composed, it
//!   keeps five score-sized tensors per layer (scaled, masked, shifted, exp, probs); fused it
//!   keeps the probabilities only (and the scores, which the matmul produced anyway).
//! - [`log_softmax`]: of the LM head's logits (vocabulary-sized rows). Composed, it keeps
//!   the shifted logits, their exponentials and the result; fused, the result only.
//!
//! Both use their generic definitions (`generic_*`: computed outside autograd, backward
//! in tensor ops, the same memory kept) where the kernel does not apply (a device other
//! than the CPU, a dtype other than f32, a mask that is not one `(t, s)` matrix, the
//! generic path forced). Kernels and generic twins are checked against the f64 composed
//! ops in the tests below.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use super::generic::{attach1, generic_kernels};

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32 data");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected contiguous data");
    };
    Ok(&v[a..b])
}

/// Runs `f` on the f32 data of `dst` (contiguous, on the CPU), to be changed in place,
/// and of `src` (contiguous). `dst` must be shared with nobody who expects it unchanged.
pub(crate) fn update_in_place(
    dst: &Tensor,
    src: &Tensor,
    name: &'static str,
    f: impl FnOnce(&mut [f32], &[f32]) -> Result<()>,
) -> Result<()> {
    let op = InPlace {
        name,
        f: std::cell::RefCell::new(Some(f)),
    };
    dst.inplace_op2(src, &op)?;
    if op.f.borrow().is_some() {
        candle_core::bail!("{name}: the in-place update did not run (not on the CPU?)");
    }
    Ok(())
}

struct InPlace<F> {
    name: &'static str,
    f: std::cell::RefCell<Option<F>>,
}

impl<F: FnOnce(&mut [f32], &[f32]) -> Result<()>> candle_core::InplaceOp2 for InPlace<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let src = f32_slice(s2, l2, self.name)?;
        let CpuStorage::F32(dst) = s1 else {
            candle_core::bail!("{}: expected f32 data", self.name);
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("{}: expected contiguous data", self.name);
        };
        let f = self.f.borrow_mut().take();
        match f {
            Some(f) => f(&mut dst[a..b], src),
            None => candle_core::bail!("{}: the update ran twice", self.name),
        }
    }
}

/// In place: `row ← softmax(row)`; a row that is −∞ everywhere becomes zeros. Returns the
/// row's ln Σ exp (−∞ for that row).
pub(crate) fn softmax_row(row: &mut [f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return f32::NEG_INFINITY;
    }
    let sum = super::vexp::exp_shifted_sum(row, max);
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
    max + sum.ln()
}

/// Runs `f(row index, row)` on every `width`-long row of `out`, the rows shared among
/// the CPU threads (`pool`).
pub(crate) fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / width.max(1);
    let at = out.as_mut_ptr() as usize;
    super::pool::par_ranges(rows, |range| {
        for r in range {
            // SAFETY: each row index is handed to one thread once; `out` outlives the call.
            let row =
                unsafe { std::slice::from_raw_parts_mut((at as *mut f32).add(r * width), width) };
            f(r, row);
        }
    });
}

struct ScaledMaskedSoftmax {
    scale: f64,
}

impl CustomOp2 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "attention scores")?;
        let m = f32_slice(s2, l2, "attention mask")?;
        let dims = l1.shape().dims();
        let s = dims[dims.len() - 1];
        let t = dims[dims.len() - 2];
        if m.len() != t * s {
            candle_core::bail!("attention mask: expected {t}×{s} values, got {}", m.len());
        }
        let scale = self.scale as f32;
        // Where a mask row ends in −∞ (a causal mask: half of every score matrix) those
        // probabilities are exactly 0: each row is computed up to its mask row's last
        // finite entry and the rest left at 0, the same values (exp(−∞) adds nothing).
        let ends: Vec<usize> = m
            .chunks_exact(s)
            .map(|mr| {
                s - mr
                    .iter()
                    .rev()
                    .take_while(|&&v| v == f32::NEG_INFINITY)
                    .count()
            })
            .collect();
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, s, |r, yr| {
            let e = ends[r % t];
            let (xr, mr) = (&x[r * s..r * s + e], &m[(r % t) * s..(r % t) * s + e]);
            let yr = &mut yr[..e];
            for ((y, &xv), &mv) in yr.iter_mut().zip(xr).zip(mr) {
                *y = xv * scale + mv;
            }
            softmax_row(yr);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dx softmax(a·x + m) = a · p ⊙ (g − Σ g ⊙ p)
        let (probs, grad) = (probs.detach(), grad.detach().contiguous()?);
        if !generic_kernels(probs.device()) && grad.dtype() == DType::F32 {
            let dx = probs.apply_op2(&grad, SoftmaxGrad { scale: self.scale })?;
            return Ok((Some(dx), None));
        }
        let dot = (&grad * &probs)?.sum_keepdim(D::Minus1)?;
        let dx = ((grad.broadcast_sub(&dot)? * probs)? * self.scale)?;
        Ok((Some(dx), None))
    }
}

/// The backward of [`ScaledMaskedSoftmax`] in one pass per row: a · p ⊙ (g − Σ g ⊙ p).
struct SoftmaxGrad {
    scale: f64,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = f32_slice(s1, l1, "attention probabilities")?;
        let g = f32_slice(s2, l2, "attention gradient")?;
        let s = l1.shape().dims().last().copied().unwrap_or(1);
        let scale = self.scale as f32;
        let mut out = vec![0f32; p.len()];
        par_rows(&mut out, s, |r, dx| {
            let (pr, gr) = (&p[r * s..(r + 1) * s], &g[r * s..(r + 1) * s]);
            let dot: f32 = pr.iter().zip(gr).map(|(p, g)| p * g).sum();
            for ((d, p), g) in dx.iter_mut().zip(pr).zip(gr) {
                *d = scale * p * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scale · scores + mask)` over the last dimension. `scores`: (…, t, s); `mask`:
/// additive, broadcastable to `scores` (0 or −∞ entries).
pub fn scaled_masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let fused = !generic_kernels(scores.device())
        && scores.dtype() == DType::F32
        && scores.rank() >= 2
        && mask.is_none_or(|m| {
            m.dtype() == DType::F32
                && m.rank() == 2
                && m.dims() == &scores.dims()[scores.rank() - 2..]
        });
    if fused {
        let zeros;
        let mask = match mask {
            Some(m) => m.contiguous()?,
            None => {
                let d = scores.dims();
                zeros = Tensor::zeros(
                    (d[d.len() - 2], d[d.len() - 1]),
                    DType::F32,
                    scores.device(),
                )?;
                zeros
            }
        };
        return scores
            .contiguous()?
            .apply_op2(&mask, ScaledMaskedSoftmax { scale });
    }
    generic_scaled_masked_softmax(scores, mask, scale)
}

/// The generic definition of [`scaled_masked_softmax`]: the probabilities are computed
/// outside autograd (candle's softmax kernel of the device), and only they are kept for
/// the backward `scale · p ⊙ (g − Σ g ⊙ p)`.
///
/// Computed in f32 whatever the scores' dtype, and returned in it: 16-bit scores keep 16-bit
/// probabilities for the backward (which also runs in f32), not f32 copies of both.
pub fn generic_scaled_masked_softmax(
    scores: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let dtype = scores.dtype();
    let x = (scores.detach().to_dtype(DType::F32)? * scale)?;
    let x = match mask {
        Some(m) => x.broadcast_add(&m.detach().to_dtype(DType::F32)?)?,
        None => x,
    };
    let probs = softmax_last_dim(&x.contiguous()?)?.to_dtype(dtype)?;
    drop(x);
    attach1("scaled-masked-softmax", scores, &probs, move |_, p, g| {
        let (p, g) = (p.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?);
        let dot = (&g * &p)?.sum_keepdim(D::Minus1)?;
        ((g.broadcast_sub(&dot)? * p)? * scale)?.to_dtype(dtype)
    })
}

/// candle's softmax kernel over the last dimension, a slice of the leading dimension at a
/// time when the tensor has 2³¹ elements or more (the CUDA kernel indexes with a 32-bit
/// int).
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    const MAX: usize = i32::MAX as usize;
    let n = x.elem_count();
    let lead = x.dims().first().copied().unwrap_or(1);
    if n <= MAX || lead < 2 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let per = (MAX / (n / lead)).max(1);
    let parts = (0..lead)
        .step_by(per)
        .map(|s| candle_nn::ops::softmax_last_dim(&x.narrow(0, s, per.min(lead - s))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "logits")?;
        let n = l.shape().dims()[l.shape().rank() - 1];
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(n) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + super::vexp::sum_exp_shifted(row, max).ln();
            for v in row.iter_mut() {
                *v -= lse;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, logp: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d/dx log_softmax(x) = g − softmax(x) · Σ g
        let sum = grad.sum_keepdim(D::Minus1)?;
        Ok(Some(grad.sub(&logp.exp()?.broadcast_mul(&sum)?)?))
    }
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    if !generic_kernels(x.device()) && x.dtype() == DType::F32 && x.rank() >= 1 {
        return x.contiguous()?.apply_op1(LogSoftmax);
    }
    generic_log_softmax(x)
}

/// The generic definition of [`log_softmax`]: computed outside autograd, the result is
/// all the backward `g − exp(y) · Σ g` keeps.
pub fn generic_log_softmax(x: &Tensor) -> Result<Tensor> {
    let y = {
        let x = x.detach();
        let max = x.max_keepdim(D::Minus1)?;
        let shifted = x.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        shifted.broadcast_sub(&lse)?
    };
    attach1("log-softmax", x, &y, |_, y, g| {
        let sum = g.sum_keepdim(D::Minus1)?;
        g.sub(&y.exp()?.broadcast_mul(&sum)?)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    pub(crate) fn randn(shape: &[usize], seed: u64) -> Tensor {
        // A small LCG: the values only need to be varied and reproducible.
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The composed reference: f64 primitives, the same formula.
    fn reference_softmax(x: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let x = (x.to_dtype(DType::F64).unwrap() * scale).unwrap();
        let x = match mask {
            Some(m) => x.broadcast_add(&m.to_dtype(DType::F64).unwrap()).unwrap(),
            None => x,
        };
        candle_nn::ops::softmax(&x, D::Minus1).unwrap()
    }

    fn causal(t: usize, s: usize) -> Tensor {
        crate::model::ops::causal_mask(t, s - t, DType::F32, &Device::Cpu).unwrap()
    }

    /// Applies `fused` to `x` and `reference` to its f64 copy; asserts that the values agree
    /// within `value_tol` and the gradients of Σ w ⊙ y within `grad_tol`. Returns the fused
    /// output.
    fn check_against_f64(
        x: &Tensor,
        w: &Tensor,
        fused: impl Fn(&Tensor) -> Tensor,
        reference: impl Fn(&Tensor) -> Tensor,
        value_tol: f32,
        grad_tol: f32,
    ) -> Tensor {
        let x32 = Var::from_tensor(x).unwrap();
        let x64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let y = fused(x32.as_tensor());
        let y_ref = reference(x64.as_tensor());
        let diff = max_diff(&y, &y_ref.to_dtype(DType::F32).unwrap());
        assert!(diff < value_tol, "values differ by {diff}");
        let grads = |y: &Tensor, w: &Tensor, x: &Var| {
            (y * w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let dx = grads(&y, w, &x32);
        let dx_ref = grads(&y_ref, &w.to_dtype(DType::F64).unwrap(), &x64);
        let diff = max_diff(&dx, &dx_ref);
        assert!(diff < grad_tol, "gradients differ by {diff}");
        y
    }

    #[test]
    fn fused_softmax_values_and_gradients_equal_the_f64_composed_ops() {
        for generic in [false, true] {
            crate::model::generic::with_generic_kernels(generic, check_softmax);
        }
    }

    /// The kernel or (forced) its generic twin against the f64 reference.
    fn check_softmax() {
        // A sliding window of 2: −∞ before the window as well as after the diagonal.
        let window = |t: usize, s: usize| {
            let v: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..s).map(move |j| {
                        let diag = s - t + i;
                        if j <= diag && j + 2 > diag {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            Tensor::from_vec(v, (t, s), &Device::Cpu).unwrap()
        };
        for (t, s) in [(4, 6), (5, 5)] {
            let m = window(t, s);
            check_against_f64(
                &randn(&[2, 3, t, s], 3),
                &randn(&[2, 3, t, s], 4),
                |x| scaled_masked_softmax(x, Some(&m), 0.37).unwrap(),
                |x| reference_softmax(x, Some(&m), 0.37),
                1e-6,
                1e-5,
            );
        }
        for (mask, t, s) in [(true, 5, 5), (true, 3, 7), (false, 4, 6)] {
            let m = mask.then(|| causal(t, s));
            let y = check_against_f64(
                &randn(&[2, 3, t, s], 1),
                &randn(&[2, 3, t, s], 2),
                |x| scaled_masked_softmax(x, m.as_ref(), 0.37).unwrap(),
                |x| reference_softmax(x, m.as_ref(), 0.37),
                1e-6,
                1e-5,
            );
            if mask {
                // Masked positions: probability 0 (and so no gradient); rows sum to 1.
                let probs = y.flatten_to(2).unwrap().to_vec2::<f32>().unwrap();
                let off = s - t;
                for (r, row) in probs.iter().enumerate() {
                    let i = r % t;
                    assert!(row[off + i + 1..].iter().all(|&v| v == 0.0));
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn a_fully_masked_row_is_zero_not_nan() {
        let x = randn(&[1, 2, 3], 5);
        let m = Tensor::new(
            &[
                [0f32, 0.0, 0.0],
                [f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let p = scaled_masked_softmax(&x, Some(&m), 1.0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(p[0][1], vec![0.0; 3]);
        assert!((p[0][0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fused_log_softmax_values_and_gradients_equal_the_f64_composed_ops() {
        for generic in [false, true] {
            crate::model::generic::with_generic_kernels(generic, || {
                check_against_f64(
                    &(randn(&[6, 50], 3) * 8.0).unwrap(),
                    &randn(&[6, 50], 4),
                    |x| log_softmax(x).unwrap(),
                    |x| candle_nn::ops::log_softmax(x, D::Minus1).unwrap(),
                    1e-5,
                    1e-5,
                )
            });
        }
    }
}

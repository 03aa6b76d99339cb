//! Fused CPU kernels, with their own backward, for the row-wise layers every block runs:
//! RMSNorm (twice per block), the rotary position embedding (of queries and keys) and
//! LLaMA's SwiGLU (`silu(gate) · up`).
//!
//! Composed of candle ops (`ops::rms_norm_composed`, `ops::rope_composed`,
//! [`swiglu_composed`]), they take seven, six and two ops (and more in their backward),
//! each with its own pass over the data, a fresh buffer and, for training, a node that
//! keeps its inputs; a decoding step runs several hundred of them. Fused, each is one pass
//! forward and one pass backward, and keeps only its inputs.
//!
//! The kernels apply to f32 tensors on the CPU; elsewhere (another device or dtype, the
//! generic path forced: `model::generic`) their device-generic definitions
//! (`model::generic_rows`) run when the input is tracked, the composed ops when it is not
//! (inference), and the tests below compare each, values and gradients, with the composed
//! ops in f64.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{f32_slice, par_rows};
use super::generic::generic_kernels;

fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "rms norm input")?;
        let w = f32_slice(s2, l2, "rms norm weight")?;
        let (h, mut y) = (w.len(), vec![0f32; x.len()]);
        par_rows(&mut y, h, |i, yr| {
            let xr = &x[i * h..(i + 1) * h];
            let r = inverse_rms(xr, self.eps);
            for ((y, x), w) in yr.iter_mut().zip(xr).zip(w) {
                *y = x * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = w.dim(0)?;
        let rows = x.elem_count() / h;
        // On detached inputs: the gradient is not differentiated again (a checkpointed
        // block's recomputation runs backward through a graph that holds it).
        let both = x.detach().apply_op3(
            &w.detach(),
            &dy.detach().contiguous()?,
            RmsNormGrad { eps: self.eps },
        )?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(h)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The backward of [`RmsNorm`]: rows of dx, then one row of dw, as one (rows + 1, h) tensor.
/// With r = 1/rms(x) and g = dy ⊙ w: dx = r·g − x·r³·Σ(g ⊙ x)/h; dw = Σ_rows dy ⊙ x·r.
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
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
        let x = f32_slice(s1, l1, "rms norm input")?;
        let w = f32_slice(s2, l2, "rms norm weight")?;
        let dy = f32_slice(s3, l3, "rms norm gradient")?;
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 1) * h];
        let (dx, dw) = out.split_at_mut(rows * h);
        for ((xr, dyr), dxr) in x
            .chunks_exact(h)
            .zip(dy.chunks_exact(h))
            .zip(dx.chunks_exact_mut(h))
        {
            let r = inverse_rms(xr, self.eps);
            let dot: f32 = xr.iter().zip(dyr).zip(w).map(|((x, g), w)| g * w * x).sum();
            let c = r * r * r * dot / h as f32;
            for i in 0..h {
                dxr[i] = r * dyr[i] * w[i] - xr[i] * c;
                dw[i] += dyr[i] * xr[i] * r;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, h))))
    }
}

/// RMSNorm of `x` (…, h) with weight `w` (h): the fused kernel where it applies.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let fused = !generic_kernels(x.device())
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 1
        && x.dims().last() == Some(&w.dim(0)?);
    if fused {
        return x
            .contiguous()?
            .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 });
    }
    if x.track_op() || w.track_op() {
        return super::generic_rows::rms_norm(x, w, eps);
    }
    super::ops::rms_norm_composed(x, w, eps)
}

/// The half-split (HF) rotation of rows of `x` (b, h, t, d) by the cos/sin tables (t, d),
/// whose two halves are equal: y = x·cos + rotate_half(x)·sin.
struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let x = f32_slice(s1, l1, "rope input")?;
        let cos = f32_slice(s2, l2, "rope cos table")?;
        let sin = f32_slice(s3, l3, "rope sin table")?;
        let dims = l1.shape().dims();
        let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if cos.len() != t * d || sin.len() != t * d || !d.is_multiple_of(2) {
            candle_core::bail!(
                "rope: tables of {} values for {t} positions × {d}",
                cos.len()
            );
        }
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, d, |r, yr| {
            let xr = &x[r * d..(r + 1) * d];
            let p = (r % t) * d;
            let (c, s) = (&cos[p..p + d], &sin[p..p + d]);
            let (x1, x2) = xr.split_at(half);
            let (y1, y2) = yr.split_at_mut(half);
            for i in 0..half {
                y1[i] = x1[i] * c[i] - x2[i] * s[i];
                y2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation's transpose is the rotation by −θ: the same kernel with −sin.
        let dx = dy
            .detach()
            .contiguous()?
            .apply_op3(&cos.detach(), &sin.detach().neg()?, Rope)?;
        Ok((Some(dx), None, None))
    }
}

/// The rotary embedding of `x` (b, h, t, d) with cos/sin tables (t, d) whose halves are
/// equal (`ops::Rope`'s): the fused kernel where it applies.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let fused = !generic_kernels(x.device())
        && x.dtype() == DType::F32
        && cos.dtype() == DType::F32
        && sin.dtype() == DType::F32
        && x.rank() == 4;
    if fused {
        return x
            .contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope);
    }
    rope_unfused(x, cos, sin)
}

/// The rotation where the kernel does not apply: the generic definition when `x` is
/// tracked (it keeps no intermediate and gives the tables no gradient), else the composed
/// ops. On the CPU in f32, a rotation of part of each head (GPT-NeoX) stays composed, as
/// the memory plan counts it there.
pub fn rope_unfused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cpu_f32 = !generic_kernels(x.device()) && x.dtype() == DType::F32;
    if x.track_op() && !cpu_f32 {
        return super::generic_rows::rope(x, cos, sin);
    }
    super::ops::rope_composed(x, cos, sin)
}

/// `silu(gate) · up`, element-wise (LLaMA's MLP).
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "swiglu gate")?;
        let u = f32_slice(s2, l2, "swiglu up")?;
        if g.len() != u.len() {
            candle_core::bail!("swiglu: {} gate values for {} up values", g.len(), u.len());
        }
        let width = l1.shape().dims().last().copied().unwrap_or(1);
        let mut y = vec![0f32; g.len()];
        par_rows(&mut y, width, |r, yr| {
            let (gr, ur) = (&g[r * width..(r + 1) * width], &u[r * width..]);
            super::vexp::sigmoid_into(gr, yr);
            for ((y, g), u) in yr.iter_mut().zip(gr).zip(ur) {
                *y *= g * u;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g
            .detach()
            .apply_op3(&u.detach(), &dy.detach().contiguous()?, SwiGluGrad)?;
        let dg = both.get(0)?.reshape(g.shape())?;
        let du = both.get(1)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// The backward of [`SwiGlu`], (2, n): d gate = dy·u·σ(g)·(1 + g·(1 − σ(g))), then
/// d up = dy·silu(g).
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
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
        let g = f32_slice(s1, l1, "swiglu gate")?;
        let u = f32_slice(s2, l2, "swiglu up")?;
        let dy = f32_slice(s3, l3, "swiglu gradient")?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        const CHUNK: usize = 1 << 12;
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (dg, du))| {
                let at = c * CHUNK;
                let (g, u, dy) = (&g[at..at + dg.len()], &u[at..], &dy[at..]);
                // σ(g) into dg first, then both gradients from it.
                super::vexp::sigmoid_into(g, dg);
                for i in 0..dg.len() {
                    let sg = dg[i];
                    du[i] = dy[i] * g[i] * sg;
                    dg[i] = dy[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

/// `silu(gate) · up`: the fused kernel where it applies (f32 on the CPU, same shapes).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = !generic_kernels(gate.device())
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.shape() == up.shape();
    if fused {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    if gate.track_op() || up.track_op() {
        return super::generic_rows::swiglu(gate, up);
    }
    swiglu_composed(gate, up)
}

/// [`swiglu`] composed of candle ops: the kernel's twin, and the path of other devices and
/// dtypes.
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(gate)? * up
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::tests::{max_diff, randn};
    use crate::model::generic::with_generic_kernels;
    use candle_core::{Device, Var};

    fn grads(y: &Tensor, w: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
        let g = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().to_dtype(DType::F32).unwrap())
            .collect()
    }

    fn var64(x: &Tensor) -> Var {
        Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap()
    }

    #[test]
    fn rms_norm_values_and_gradients_equal_the_f64_composed_ops() {
        for generic in [false, true] {
            with_generic_kernels(generic, || {
                let (x, w) = (randn(&[2, 3, 40], 1), randn(&[40], 2));
                let upstream = randn(&[2, 3, 40], 3);
                let (x32, w32) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
                let (x64, w64) = (var64(&x), var64(&w));
                let y = rms_norm(x32.as_tensor(), w32.as_tensor(), 1e-5).unwrap();
                let y64 =
                    crate::model::ops::rms_norm_composed(x64.as_tensor(), w64.as_tensor(), 1e-5)
                        .unwrap();
                assert!(max_diff(&y, &y64.to_dtype(DType::F32).unwrap()) < 1e-5);
                let g = grads(&y, &upstream, &[&x32, &w32]);
                let g64 = grads(&y64, &upstream.to_dtype(DType::F64).unwrap(), &[&x64, &w64]);
                for (a, b) in g.iter().zip(&g64) {
                    let d = max_diff(a, b);
                    assert!(d < 1e-5, "generic {generic}: gradients differ by {d}");
                }
            });
        }
    }

    #[test]
    fn swiglu_values_and_gradients_equal_the_f64_composed_ops() {
        for generic in [false, true] {
            with_generic_kernels(generic, || {
                let (g, u) = (
                    (randn(&[3, 7, 24], 6) * 3.0).unwrap(),
                    randn(&[3, 7, 24], 7),
                );
                let upstream = randn(&[3, 7, 24], 8);
                let (g32, u32) = (Var::from_tensor(&g).unwrap(), Var::from_tensor(&u).unwrap());
                let (g64, u64) = (var64(&g), var64(&u));
                let y = swiglu(g32.as_tensor(), u32.as_tensor()).unwrap();
                let y64 = swiglu_composed(g64.as_tensor(), u64.as_tensor()).unwrap();
                assert!(max_diff(&y, &y64.to_dtype(DType::F32).unwrap()) < 1e-5);
                let gr = grads(&y, &upstream, &[&g32, &u32]);
                let gr64 = grads(&y64, &upstream.to_dtype(DType::F64).unwrap(), &[&g64, &u64]);
                for (a, b) in gr.iter().zip(&gr64) {
                    let d = max_diff(a, b);
                    assert!(d < 1e-5, "generic {generic}: gradients differ by {d}");
                }
            });
        }
    }

    #[test]
    fn rope_values_and_gradients_equal_the_f64_composed_ops() {
        let rope_tables = crate::model::ops::Rope::new(16, 10_000.0, 64, DType::F32, &Device::Cpu)
            .unwrap()
            .tables(3, 5)
            .unwrap();
        let (cos, sin) = rope_tables;
        for generic in [false, true] {
            with_generic_kernels(generic, || {
                let x = randn(&[2, 3, 5, 16], 4);
                let upstream = randn(&[2, 3, 5, 16], 5);
                let x32 = Var::from_tensor(&x).unwrap();
                let x64 = var64(&x);
                let y = rope(x32.as_tensor(), &cos, &sin).unwrap();
                let (c64, s64) = (
                    cos.to_dtype(DType::F64).unwrap(),
                    sin.to_dtype(DType::F64).unwrap(),
                );
                let y64 = crate::model::ops::rope_composed(x64.as_tensor(), &c64, &s64).unwrap();
                assert!(max_diff(&y, &y64.to_dtype(DType::F32).unwrap()) < 1e-5);
                let g = grads(&y, &upstream, &[&x32]);
                let g64 = grads(&y64, &upstream.to_dtype(DType::F64).unwrap(), &[&x64]);
                let d = max_diff(&g[0], &g64[0]);
                assert!(d < 1e-5, "generic {generic}: gradients differ by {d}");
            });
        }
    }
}

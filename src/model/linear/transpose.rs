//! A weight's transpose made contiguous before the matmul x · Wᵀ, where that is faster.
//!
//! candle's CPU matmul (the `gemm` crate) reads Wᵀ as a strided view of the row-major W
//! (out, in). Unless W is taller than it is wide, that is slow: on 2 cores x (256 × 1536)
//! · Wᵀ (1536 × 576), an MLP's down projection, took 4.1 ms against 2.1 ms with Wᵀ laid
//! out contiguously, and a square 576 × 576 one 1.04 ms against 0.81; the tiled transpose
//! below costs a fraction of that. For in < out (the up projections) the strided product
//! is within 10 % of the contiguous one, and for a few rows (decoding) the strided read is
//! what a matrix-vector product wants, so the transpose is made for [`transpose_first`]
//! shapes only.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::model::fused::f32_slice;
use crate::model::generic::generic_kernels;
use crate::model::grad_sink;

/// Side of the square tiles the transpose copies (a 32 × 32 f32 tile is 4 KiB).
const TILE: usize = 32;

/// Whether x (rows, in) · Wᵀ for W (out, in) goes faster with Wᵀ contiguous.
pub fn transpose_first(rows: usize, in_f: usize, out_f: usize) -> bool {
    rows >= 64 && in_f >= out_f
}

/// The transpose (cols × rows, row-major) of `src` (rows × cols, row-major), copied in
/// tiles, bands of source rows shared among the CPU threads.
pub(crate) fn transposed(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(src.len(), rows * cols, "transpose: source size");
    // Not zeroed first: every element is written below (a weight-sized fill per call
    // otherwise, 212 MB per forward pass of SmolLM2's frozen linears).
    let mut dst: Vec<f32> = Vec::with_capacity(rows * cols);
    let at = dst.as_mut_ptr() as usize;
    crate::model::pool::par_ranges(rows.div_ceil(TILE), |bands| {
        for band in bands {
            let r0 = band * TILE;
            let r1 = rows.min(r0 + TILE);
            for c0 in (0..cols).step_by(TILE) {
                let c1 = cols.min(c0 + TILE);
                for c in c0..c1 {
                    for r in r0..r1 {
                        // SAFETY: dst[c·rows + r] for r in this band only: bands are
                        // disjoint, each handed to one thread, and `dst`'s capacity
                        // (rows · cols) outlives the call. Written, never read, here.
                        unsafe { (at as *mut f32).add(c * rows + r).write(src[r * cols + c]) };
                    }
                }
            }
        }
    });
    // SAFETY: the bands cover every row and the tiles every column: all rows · cols
    // elements were written above.
    unsafe { dst.set_len(rows * cols) };
    dst
}

/// x (m × k, any layout) · Wᵀ for a row-major f32 W (n × k), with Wᵀ laid out
/// contiguously first (a transient copy).
pub(crate) fn matmul_by_transposed(
    x: &CpuStorage,
    xl: &Layout,
    w: &[f32],
    n: usize,
) -> Result<CpuStorage> {
    let (m, k) = xl.shape().dims2()?;
    if w.len() != n * k {
        candle_core::bail!(
            "matmul: x has {k} features, W has {} values for {n} rows",
            w.len()
        );
    }
    let wt = CpuStorage::F32(transposed(w, n, k));
    x.matmul(&wt, (1, m, n, k), xl, &Layout::contiguous((k, n)))
}

/// x (rows, in) · Wᵀ for a trainable W (out, in), both differentiable. On the CPU in f32
/// an op whose forward multiplies by a transient contiguous Wᵀ for [`transpose_first`]
/// shapes (dropped at once: the graph keeps x and W, as a matmul does), by the strided
/// view otherwise, and whose backward gives dx = g · W and dW = gᵀ · x, the latter already
/// in W's layout and handed to the training step's gradient sink when one is open
/// (`model::grad_sink`). Elsewhere `x.matmul(&w.t())`, its composed twin.
pub fn trainable_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let fast = !generic_kernels(x.device())
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.rank() == 2
        && w.rank() == 2
        && w.is_contiguous();
    if !fast {
        return x.matmul(&w.t()?);
    }
    x.apply_op2(w, MatmulT)
}

struct MatmulT;

impl CustomOp2 for MatmulT {
    fn name(&self) -> &'static str {
        "matmul-t-contiguous"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, in_f) = wl.shape().dims2()?;
        if k != in_f {
            candle_core::bail!("{}: x has {k} features, W ({n}, {in_f})", self.name());
        }
        let y = if transpose_first(m, k, n) {
            matmul_by_transposed(xs, xl, f32_slice(ws, wl, self.name())?, n)?
        } else {
            // Row-major W (out, in); Wᵀ is the same buffer read with swapped strides.
            let wt = Layout::new((k, n).into(), vec![1, k], wl.start_offset());
            xs.matmul(ws, (1, m, n, k), xl, &wt)?
        };
        Ok((y, (m, n).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Detached: x and W track ops, and a gradient built from them would keep the
        // graph (and every gradient before it) alive.
        let (xd, wd) = (x.detach(), w.detach());
        let dw = g.t()?.matmul(&xd)?;
        // W's gradient goes to the training step's sink when one is open.
        Ok((Some(g.matmul(&wd)?), grad_sink::deposit(w, dw)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn transpose_matches_the_strided_view_on_ragged_shapes() {
        for (r, c) in [(1, 1), (3, 70), (33, 31), (64, 96), (100, 37)] {
            let src: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            let dst = transposed(&src, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(dst[j * r + i], src[i * c + j], "{r}x{c} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn values_and_gradients_equal_the_composed_matmul() -> Result<()> {
        let dev = Device::Cpu;
        // in ≥ out and ≥ 64 rows (W transposed first), then in < out (W read strided).
        assert!(transpose_first(65, 72, 40));
        assert!(!transpose_first(65, 40, 72));
        for (out_f, in_f) in [(40, 72), (72, 40)] {
            check_against_composed(&dev, out_f, in_f)?;
        }
        Ok(())
    }

    fn check_against_composed(dev: &Device, out_f: usize, in_f: usize) -> Result<()> {
        let w = Var::randn(0f32, 1.0, (out_f, in_f), dev)?;
        let x = Var::randn(0f32, 1.0, (65, in_f), dev)?;
        let g = Tensor::randn(0f32, 1.0, (65, out_f), dev)?;
        let fast_y = trainable_matmul_t(x.as_tensor(), w.as_tensor())?;
        let plain_y = x.as_tensor().matmul(&w.as_tensor().t()?)?;
        let fast = (&fast_y * &g)?.sum_all()?.backward()?;
        let plain = (&plain_y * &g)?.sum_all()?.backward()?;
        let close = |a: &Tensor, b: &Tensor| -> Result<()> {
            let (a, b) = (
                a.flatten_all()?.to_vec1::<f32>()?,
                b.flatten_all()?.to_vec1::<f32>()?,
            );
            assert_eq!(a.len(), b.len());
            for (va, vb) in a.iter().zip(&b) {
                assert!((va - vb).abs() <= 1e-5 * (1.0 + vb.abs()), "{va} vs {vb}");
            }
            Ok(())
        };
        close(&fast_y, &plain_y)?;
        for v in [&x, &w] {
            let (a, b) = (
                fast.get(v.as_tensor()).unwrap(),
                plain.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), b.dims());
            close(a, b)?;
        }
        Ok(())
    }
}

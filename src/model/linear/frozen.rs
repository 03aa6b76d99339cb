//! Frozen weights in a linear layer: y = x · Wᵀ where W gets no gradient, for a dense W
//! (every frozen base weight: LoRA, inference) and for a 4-bit W (QLoRA's base).
//!
//! The 4-bit case is implemented as a candle `CustomOp1` on x whose forward dequantises W on the fly into a
//! scratch buffer, multiplies with candle's CPU gemm and drops the buffer; its backward
//! gives dL/dx = g · dequant(W), dequantising again on the fly. Only the 4-bit codes (an
//! `Arc<Quant4Tensor>`) are held between forward and backward — no dense copy of the
//! weight stays alive, which is the memory point of QLoRA. W receives no gradient.
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::quant4::Quant4Tensor;
use super::transpose::{matmul_by_transposed, transpose_first, transposed};
use crate::model::fused::f32_slice;
use crate::model::generic::{attach1, generic_kernels};

/// x (rows, in) · dequant(W)ᵀ → (rows, out), differentiable with respect to x only.
///
/// Only the 4-bit codes are kept between forward and backward, on every device: on the
/// CPU by a custom op that dequantises into a scratch buffer; elsewhere (and on the CPU
/// when the generic path is forced) by the generic definition, which dequantises with
/// tensor ops from codes kept on the device, inside the forward and again inside the
/// backward ([`generic_quant_matmul_t`]).
pub fn quant_matmul_t(x: &Tensor, w: &Arc<Quant4Tensor>) -> Result<Tensor> {
    let (out_f, in_f) = w.dims();
    let (_rows, k) = x.dims2()?;
    if k != in_f {
        bail!(
            "quant_matmul_t: x has {k} features, the 4-bit weight ({out_f}, {in_f}) expects {in_f}"
        );
    }
    if generic_kernels(x.device()) {
        return generic_quant_matmul_t(x, w);
    }
    x.apply_op1(QuantMatmul {
        w: Frozen::Quant4(w.clone()),
        mode: Mode::XWt,
    })
}

/// y = x · Wᵀ for a frozen dense W (out, in) that is not a variable: the backward pass
/// yields only the input gradient. (candle's matmul backward would also compute dL/dW
/// and keep it in the gradient store — a weight-sized buffer per frozen layer, which made
/// LoRA peak above full fine-tuning.)
pub fn frozen_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let (_rows, k) = x.dims2()?;
    if k != in_f {
        bail!("frozen_matmul_t: x has {k} features, the weight ({out_f}, {in_f}) expects {in_f}");
    }
    if x.dtype() != w.dtype() {
        return x.matmul(&w.t()?);
    }
    if generic_kernels(x.device()) {
        return generic_frozen_matmul_t(x, w);
    }
    x.apply_op1(QuantMatmul {
        w: Frozen::Dense(w.contiguous()?),
        mode: Mode::XWt,
    })
}

/// The generic definition of [`frozen_matmul_t`]: x · Wᵀ computed outside autograd, with
/// the backward g · W. The graph keeps x and a reference to W, never a gradient for W.
pub fn generic_frozen_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = w.detach();
    let y = x.detach().matmul(&w.t()?)?;
    attach1("frozen-matmul-t", x, &y, move |_, _, g| g.matmul(&w))
}

/// The generic definition of [`quant_matmul_t`]: dequantise on x's device with tensor
/// ops, multiply, drop the dense weight; the backward dequantises again.
pub fn generic_quant_matmul_t(x: &Tensor, w: &Arc<Quant4Tensor>) -> Result<Tensor> {
    let y = {
        let dense = w.dequantize_on(x.dtype(), x.device())?;
        x.detach().matmul(&dense.t()?)?
    };
    let w = w.clone();
    attach1("frozen-4bit-matmul-t", x, &y, move |_, _, g| {
        g.matmul(&w.dequantize_on(g.dtype(), g.device())?)
    })
}

/// The backward of [`frozen_matmul_t`]: g (rows, out) · W → (rows, in).
pub fn frozen_input_grad(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    if g.dtype() != w.dtype() || generic_kernels(g.device()) {
        return g.matmul(w);
    }
    g.apply_op1(QuantMatmul {
        w: Frozen::Dense(w.contiguous()?),
        mode: Mode::GW,
    })
}

/// The backward of [`quant_matmul_t`]: g (rows, out) · dequant(W) → (rows, in).
pub fn quant_input_grad(g: &Tensor, w: &Arc<Quant4Tensor>) -> Result<Tensor> {
    if generic_kernels(g.device()) {
        return g.matmul(&w.dequantize_on(g.dtype(), g.device())?);
    }
    g.apply_op1(QuantMatmul {
        w: Frozen::Quant4(w.clone()),
        mode: Mode::GW,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// x (rows, in) · Wᵀ → (rows, out): the forward pass.
    XWt,
    /// g (rows, out) · W → (rows, in): the input gradient.
    GW,
}

/// A frozen weight (out, in): 4-bit, dequantised on the fly, or a dense tensor.
#[derive(Clone)]
enum Frozen {
    Quant4(Arc<Quant4Tensor>),
    Dense(Tensor),
}

impl Frozen {
    fn dims(&self) -> (usize, usize) {
        match self {
            Frozen::Quant4(q) => q.dims(),
            Frozen::Dense(t) => {
                let d = t.dims();
                (d[0], d[1])
            }
        }
    }
}

struct QuantMatmul {
    w: Frozen,
    mode: Mode,
}

impl CustomOp1 for QuantMatmul {
    fn name(&self) -> &'static str {
        match self.mode {
            Mode::XWt => "frozen-matmul-t",
            Mode::GW => "frozen-matmul",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = match layout.dims() {
            &[m, k] => (m, k),
            d => bail!("{}: expects a rank-2 input, got {d:?}", self.name()),
        };
        let (out_f, in_f) = self.w.dims();
        // Row-major W (out, in); Wᵀ is the same buffer read with swapped strides.
        let (n, rhs_layout) = match self.mode {
            Mode::XWt => (out_f, Layout::new((in_f, out_f).into(), vec![1, in_f], 0)),
            Mode::GW => (in_f, Layout::contiguous((out_f, in_f))),
        };
        let expected_k = match self.mode {
            Mode::XWt => in_f,
            Mode::GW => out_f,
        };
        if k != expected_k {
            bail!(
                "{}: input has {k} columns, weight ({out_f}, {in_f}) needs {expected_k}",
                self.name()
            );
        }
        // x · Wᵀ with Wᵀ laid out contiguously first, for the shapes where candle's matmul
        // is faster so (`transpose`).
        let transpose_w = matches!(self.mode, Mode::XWt) && transpose_first(m, in_f, out_f);
        // The scratch weight lives only for this call.
        let out = match &self.w {
            Frozen::Quant4(q) => {
                let mut scratch = vec![0f32; out_f * in_f];
                q.dequantize_into(&mut scratch)?;
                let (scratch, rhs_layout) = if transpose_w {
                    (
                        transposed(&scratch, out_f, in_f),
                        Layout::contiguous((in_f, out_f)),
                    )
                } else {
                    (scratch, rhs_layout)
                };
                let rhs = match storage.dtype() {
                    DType::F32 => CpuStorage::F32(scratch),
                    DType::F64 => CpuStorage::F64(scratch.into_iter().map(f64::from).collect()),
                    DType::F16 => {
                        CpuStorage::F16(scratch.into_iter().map(half::f16::from_f32).collect())
                    }
                    DType::BF16 => {
                        CpuStorage::BF16(scratch.into_iter().map(half::bf16::from_f32).collect())
                    }
                    dt => bail!("{}: unsupported input dtype {dt:?}", self.name()),
                };
                storage.matmul(&rhs, (1, m, n, k), layout, &rhs_layout)?
            }
            Frozen::Dense(t) => {
                let (guard, wl) = t.storage_and_layout();
                let candle_core::Storage::Cpu(rhs) = &*guard else {
                    bail!("{}: the frozen weight is not on the CPU", self.name())
                };
                if transpose_w && t.dtype() == DType::F32 {
                    let w = f32_slice(rhs, wl, self.name())?;
                    return Ok((matmul_by_transposed(storage, layout, w, n)?, (m, n).into()));
                }
                let off = wl.start_offset();
                let rhs_layout = match self.mode {
                    Mode::XWt => Layout::new((in_f, out_f).into(), vec![1, in_f], off),
                    Mode::GW => Layout::new((out_f, in_f).into(), vec![in_f, 1], off),
                };
                storage.matmul(rhs, (1, m, n, k), layout, &rhs_layout)?
            }
        };
        Ok((out, (m, n).into()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d(x Wᵀ)/dx applied to g is g W; and the gradient of g W with respect to g is
        // g' Wᵀ — each mode's backward is the other mode, dequantising again on the fly.
        let mode = match self.mode {
            Mode::XWt => Mode::GW,
            Mode::GW => Mode::XWt,
        };
        // The op is only built for CPU inputs (see `quant_matmul_t`), so g is on the CPU.
        let g = grad_res.apply_op1(QuantMatmul {
            w: self.w.clone(),
            mode,
        })?;
        Ok(Some(g))
    }
}

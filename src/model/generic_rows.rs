//! Device-generic definitions of the row-wise layers every block runs — RMSNorm, the
//! rotary embedding and SwiGLU, the twins of the CPU kernels of `fused_rows`, and the
//! layer norm (GPT-NeoX, BERT), which has no kernel — written with tensor ops so that they
//! hold on any device and dtype.
//!
//! Composed of candle ops for training, each of these keeps every intermediate: a bf16
//! RMSNorm its input widened to f32, the square and the quotient in f32 and two bf16
//! products (8 bytes per element where its output is 2); the rotation 4.5 tensors of its
//! input's size, and candle's backward leaves a gradient of the broadcast (b, heads, t, d)
//! shape for each of its cos/sin tables; SwiGLU its `silu(gate)`. As the CPU kernels do,
//! these keep only their inputs (the graph's anyway): the forward runs on detached inputs
//! (the composed ops, so values equal inference's), and the backward recomputes what it
//! needs, in f32, and gives no gradient to an input that is not trained (a frozen norm
//! weight, the tables).
use candle_core::{DType, Result, Tensor, D};

use super::generic::{attach1, attach2, attach3};
use super::ops::{layer_norm_composed, rms_norm_composed, rope_composed};

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
///
/// Backward, with r = 1/sqrt(mean(x²) + eps), x̂ = x·r and gw = dy ⊙ w:
/// dx = r · (gw − x̂ · mean(gw ⊙ x̂)); dw = Σ_rows dy ⊙ x̂.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let y = rms_norm_composed(&x.detach(), &w.detach(), eps)?;
    let (x_grad, w_grad) = (x.track_op(), w.track_op());
    attach2("rms-norm", x, w, &y, move |x, w, _y, dy| {
        let rows = NormedRows::new(x, eps, false)?;
        rows.backward(x, w, dy, (x_grad, w_grad))
    })
}

/// `(x − mean(x)) / sqrt(var(x) + eps) · w + b` over the last dimension (GPT-NeoX, BERT).
///
/// Backward, with r = 1/sqrt(var(x) + eps), x̂ = (x − mean(x))·r and gw = dy ⊙ w:
/// dx = r · (gw − mean(gw) − x̂ · mean(gw ⊙ x̂)); dw = Σ_rows dy ⊙ x̂; db = Σ_rows dy.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let y = layer_norm_composed(&x.detach(), &w.detach(), &b.detach(), eps)?;
    let grads = [x.track_op(), w.track_op(), b.track_op()];
    attach3("layer-norm", (x, w, b), &y, move |x, w, b, dy| {
        let rows = NormedRows::new(x, eps, true)?;
        let (dx, dw) = rows.backward(x, w, dy, (grads[0], grads[1]))?;
        let db = if grads[2] {
            let h = b.elem_count();
            Some(
                dy.to_dtype(DType::F32)?
                    .reshape(((), h))?
                    .sum(0)?
                    .to_dtype(b.dtype())?,
            )
        } else {
            None
        };
        Ok((dx, dw, db))
    })
}

/// A norm's rows recomputed for its backward, in f32: x̂ (the input normalised, centred
/// first for a layer norm) and r, the reciprocal of each row's deviation.
struct NormedRows {
    xhat: Tensor,
    r: Tensor,
    centred: bool,
}

impl NormedRows {
    fn new(x: &Tensor, eps: f64, centred: bool) -> Result<Self> {
        let mut xf = x.to_dtype(DType::F32)?;
        if centred {
            xf = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
        }
        let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        Ok(Self {
            xhat: xf.broadcast_mul(&r)?,
            r,
            centred,
        })
    }

    /// dx and dw (each when asked for): dw = Σ_rows dy ⊙ x̂; with gw = dy ⊙ w,
    /// dx = r · (gw − [mean(gw), centred only] − x̂ · mean(gw ⊙ x̂)).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        (x_grad, w_grad): (bool, bool),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.to_dtype(DType::F32)?;
        let dw = if w_grad {
            let dw = (&dy * &self.xhat)?.reshape(((), w.elem_count()))?.sum(0)?;
            Some(dw.to_dtype(w.dtype())?)
        } else {
            None
        };
        let dx = if x_grad {
            let mut gw = dy.broadcast_mul(&w.to_dtype(DType::F32)?)?;
            let dot = (&gw * &self.xhat)?.mean_keepdim(D::Minus1)?;
            if self.centred {
                gw = gw.broadcast_sub(&gw.mean_keepdim(D::Minus1)?)?;
            }
            let dx = (gw - self.xhat.broadcast_mul(&dot)?)?.broadcast_mul(&self.r)?;
            Some(dx.to_dtype(x.dtype())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The half-split rotation `x·cos + rotate_half(x)·sin` of `x` (…, d) by tables (t, d)
/// whose two halves are equal. Its backward is the rotation by −θ: the same with −sin.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.detach(), sin.detach());
    let y = rope_composed(&x.detach(), &cos, &sin)?;
    attach1("rope", x, &y, move |_x, _y, dy| {
        rope_composed(dy, &cos, &sin.neg()?)
    })
}

/// `silu(gate) · up`, element-wise (LLaMA's MLP). Backward, with s = sigmoid(gate):
/// d gate = dy · up · s · (1 + gate · (1 − s)); d up = dy · gate · s.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let y = super::fused_rows::swiglu_composed(&gate.detach(), &up.detach())?;
    let (gate_grad, up_grad) = (gate.track_op(), up.track_op());
    attach2("swiglu", gate, up, &y, move |gate, up, _y, dy| {
        let dtype = gate.dtype();
        let g = gate.to_dtype(DType::F32)?;
        let s = (g.neg()?.exp()? + 1.0)?.recip()?;
        let dy = dy.to_dtype(DType::F32)?;
        let d_up = if up_grad {
            Some((&dy * (&g * &s)?)?.to_dtype(up.dtype())?)
        } else {
            None
        };
        let d_gate = if gate_grad {
            let dsilu = (&s * ((&g * s.affine(-1.0, 1.0)?)? + 1.0)?)?;
            let d = ((dy * up.to_dtype(DType::F32)?)? * dsilu)?;
            Some(d.to_dtype(dtype)?)
        } else {
            None
        };
        Ok((d_gate, d_up))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::tests::randn;
    use candle_core::{Device, Var};

    /// The largest |value| of `t`, in f64.
    fn abs_max(t: &Tensor) -> f64 {
        let t = t.to_dtype(DType::F64).unwrap().abs().unwrap();
        t.max_all().unwrap().to_scalar::<f64>().unwrap()
    }

    /// A frozen norm weight, the rotation's tables and a frozen SwiGLU input get no
    /// gradient (the composed ops leave one of the input's broadcast size for each), and
    /// nothing of the forward's arithmetic is kept: the only tensors the backward finds
    /// are the trained inputs' gradients.
    #[test]
    fn untrained_inputs_get_no_gradient() {
        let x = Var::from_tensor(&randn(&[2, 3, 5, 16], 1)).unwrap();
        let w = randn(&[16], 2);
        let (cos, sin) = crate::model::ops::Rope::new(16, 10_000.0, 64, DType::F32, &Device::Cpu)
            .unwrap()
            .tables(0, 5)
            .unwrap();
        let normed = rms_norm(x.as_tensor(), &w, 1e-6).unwrap();
        let rotated = rope(&normed, &cos, &sin).unwrap();
        let y = swiglu(&rotated, &w.broadcast_as(rotated.shape()).unwrap()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert_eq!(
            grads.get_ids().count(),
            1,
            "only the variable's gradient is left"
        );
        // The composed ops leave stray gradients (the broadcast weight, the tables).
        let normed = crate::model::ops::rms_norm_composed(x.as_tensor(), &w, 1e-6).unwrap();
        let rotated = crate::model::ops::rope_composed(&normed, &cos, &sin).unwrap();
        let grads = rotated.sum_all().unwrap().backward().unwrap();
        assert!(grads.get_ids().count() > 1);
    }

    /// The layer norm's value and gradients (x, weight, bias) equal the f64 composed ops;
    /// with a frozen weight and bias only x gets a gradient.
    #[test]
    fn layer_norm_equals_the_f64_composed_ops() {
        let (x, w, b) = (
            randn(&[2, 3, 40], 11).affine(2.0, 0.5).unwrap(),
            randn(&[40], 12),
            randn(&[40], 13),
        );
        let upstream = randn(&[2, 3, 40], 14);
        let wide = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
        let (x32, w32, b32) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&w).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let (x64, w64, b64) = (wide(&x), wide(&w), wide(&b));
        let y = layer_norm(x32.as_tensor(), w32.as_tensor(), b32.as_tensor(), 1e-5).unwrap();
        let y64 = crate::model::ops::layer_norm_composed(
            x64.as_tensor(),
            w64.as_tensor(),
            b64.as_tensor(),
            1e-5,
        )
        .unwrap();
        let diff =
            |a: &Tensor, b: &Tensor| abs_max(&(a.to_dtype(DType::F64).unwrap() - b).unwrap());
        assert!(diff(&y, &y64) < 1e-5);
        let g = (y * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let up64 = upstream.to_dtype(DType::F64).unwrap();
        let g64 = (y64 * up64).unwrap().sum_all().unwrap().backward().unwrap();
        for (a, b) in [(&x32, &x64), (&w32, &w64), (&b32, &b64)] {
            let d = diff(
                g.get(a.as_tensor()).unwrap(),
                g64.get(b.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "gradients differ by {d}");
        }
        let y = layer_norm(x32.as_tensor(), &w, &b, 1e-5).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get_ids().count(), 1, "only x's gradient");
    }

    /// In bf16 the backward computes in f32: the gradients are the f64 composed ops' to
    /// bf16's precision.
    #[test]
    fn bf16_gradients_follow_the_f64_composed_ops() {
        let (x, w) = (randn(&[4, 48], 3), (randn(&[48], 4) + 1.0).unwrap());
        let up = randn(&[4, 48], 5);
        let bf = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::BF16).unwrap()).unwrap();
        let wide = |t: &Tensor| {
            Var::from_tensor(
                &t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap(),
            )
            .unwrap()
        };
        let (xb, wb, ub) = (bf(&x), bf(&w), bf(&up));
        let (x64, w64, u64) = (wide(&x), wide(&w), wide(&up));
        let y = swiglu(
            &rms_norm(xb.as_tensor(), wb.as_tensor(), 1e-6).unwrap(),
            ub.as_tensor(),
        )
        .unwrap();
        let y64 = crate::model::fused_rows::swiglu_composed(
            &crate::model::ops::rms_norm_composed(x64.as_tensor(), w64.as_tensor(), 1e-6).unwrap(),
            u64.as_tensor(),
        )
        .unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g64 = y64.sum_all().unwrap().backward().unwrap();
        for (a, b) in [(&xb, &x64), (&wb, &w64), (&ub, &u64)] {
            let ga = g.get(a.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
            let gb = g64.get(b.as_tensor()).unwrap();
            let (scale, d) = (abs_max(gb), abs_max(&(ga - gb).unwrap()));
            assert!(d < 0.02 * scale, "differs by {d} (scale {scale})");
        }
    }
}

//! The one linear layer every model uses.
//!
//! Its base weight is an enum so that techniques can swap the storage (a frozen 4-bit
//! base for QLoRA) and wrap it with a LoRA adapter without touching the architectures:
//! `frozen` (the matmul whose backward yields only the input gradient, dense or 4-bit),
//! `quant4` (NF4/FP4 blockwise codes with double quantisation), `lora` (the low-rank
//! update). Choosing which layers get what is `adapt`'s business.
pub mod frozen;
pub mod lora;
pub mod qgemv;
pub mod quant4;
pub mod quant4_kernel;
pub mod recompute;
pub mod transpose;

use candle_core::{DType, Result, Tensor};

pub use lora::LoraAdapter;
pub use quant4::{Quant4Kind, Quant4Tensor};

/// Storage of a linear layer's weight, shaped (out_features, in_features) like PyTorch.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A dense tensor; trainable when it was created from a `Var`.
    Dense(Tensor),
    /// A frozen blockwise 4-bit weight (QLoRA); dequantised on the fly, never trained.
    Quant4(std::sync::Arc<Quant4Tensor>),
    /// A GGUF weight kept in its file's quantisation (Q4_K, Q8_0, …) for inference:
    /// a quantised matmul reads it as it is (`qgemv`, or candle's for k-quants; no
    /// backward; never trained).
    Gguf(candle_core::quantized::QMatMul),
}

impl BaseWeight {
    /// The weight as a dense tensor (out, in) in the compute dtype.
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => Ok(w.clone()),
            BaseWeight::Quant4(q) => q.dequantize(q.dtype, &q.device),
            BaseWeight::Gguf(q) => match q {
                candle_core::quantized::QMatMul::QTensor(t) => t.dequantize(&t.device()),
                candle_core::quantized::QMatMul::Tensor(t) => Ok(t.clone()),
                candle_core::quantized::QMatMul::TensorF16(t) => t.to_dtype(DType::F32),
            },
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        match self {
            BaseWeight::Dense(w) => {
                let d = w.dims();
                (d[0], d[1])
            }
            BaseWeight::Quant4(q) => q.dims(),
            BaseWeight::Gguf(q) => {
                let d = match q {
                    candle_core::quantized::QMatMul::QTensor(t) => t.shape().dims().to_vec(),
                    candle_core::quantized::QMatMul::Tensor(t)
                    | candle_core::quantized::QMatMul::TensorF16(t) => t.dims().to_vec(),
                };
                (d[0], d[1])
            }
        }
    }

    /// For a frozen base weight (dense and not a variable, or 4-bit): its key on a
    /// recomputation tape and its backward g (rows, out) ↦ g · W (rows, in). `None` for a
    /// trainable weight and a GGUF one (no backward).
    fn frozen_backward(&self) -> Option<(recompute::WeightKey, InputGrad)> {
        match self {
            BaseWeight::Dense(w) if !w.track_op() => {
                let w = w.clone();
                Some((
                    recompute::WeightKey::Tensor(w.id()),
                    std::sync::Arc::new(move |g: &Tensor| frozen::frozen_input_grad(g, &w)),
                ))
            }
            BaseWeight::Quant4(q) => {
                let q = q.clone();
                Some((
                    recompute::WeightKey::Shared(std::sync::Arc::as_ptr(&q) as usize),
                    std::sync::Arc::new(move |g: &Tensor| frozen::quant_input_grad(g, &q)),
                ))
            }
            _ => None,
        }
    }

    /// A frozen weight's `compute` of x · Wᵀ through the recomputation tape
    /// (`recompute::frozen_matmul`: kept while recording, taken back while replaying).
    fn through_tape(&self, x: &Tensor, compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let Some((key, grad)) = self.frozen_backward() else {
            return compute();
        };
        recompute::frozen_matmul(x, key, self.dims().0, compute, move |g| grad(g))
    }

    /// x (rows, in) · Wᵀ → (rows, out).
    fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) if w.track_op() => matmul_t(x, w),
            BaseWeight::Dense(w) => self.through_tape(x, || frozen::frozen_matmul_t(x, w)),
            BaseWeight::Quant4(q) => self.through_tape(x, || frozen::quant_matmul_t(x, q)),
            BaseWeight::Gguf(q) => {
                if x.track_op() {
                    candle_core::bail!(
                        "a GGUF-quantised weight has no backward: load the model with keep_quantized off to train"
                    );
                }
                let x32 = x.to_dtype(DType::F32)?;
                // Decoding (a few rows) reads the quantised blocks directly; a prompt's many
                // rows go faster through the dense matmul of the weight dequantised for
                // this call (the quantised kernels work row by row).
                let y = if x32.dim(0)? > QUANTIZED_MATMUL_MAX_ROWS {
                    x32.matmul(&self.dense()?.t()?)?
                } else {
                    quantized_matmul_t(q, &x32)?
                };
                y.to_dtype(x.dtype())
            }
        }
    }
}

/// The backward of a frozen weight's matmul: g (rows, out) ↦ g · W (rows, in).
pub type InputGrad = std::sync::Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// Rows up to which a GGUF-quantised weight is multiplied in its quantisation.
const QUANTIZED_MATMUL_MAX_ROWS: usize = 8;

/// x (rows, in) in f32 · Wᵀ for a GGUF-quantised W: ftlab's kernel (`qgemv`) for the
/// 32-value block formats on the CPU, candle's quantised matmul for the others (k-quants,
/// which it has fast kernels for) and on other devices.
fn quantized_matmul_t(q: &candle_core::quantized::QMatMul, x: &Tensor) -> Result<Tensor> {
    if let candle_core::quantized::QMatMul::QTensor(t) = q {
        if let (Some(format), true) = (qgemv::Format::of(t.dtype()), x.device().is_cpu()) {
            let (n, k) = t.shape().dims2()?;
            let rows = x.dim(0)?;
            let y = qgemv::matmul_t(format, &t.data()?, n, k, &x.flatten_all()?.to_vec1()?)?;
            return Tensor::from_vec(y, (rows, n), x.device());
        }
    }
    candle_core::Module::forward(q, x)
}

/// x (rows, in) · Wᵀ for a dense W (out, in). A trainable W gets its gradient; a frozen
/// one goes through an op whose backward computes only the input gradient.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.track_op() {
        transpose::trainable_matmul_t(x, w)
    } else {
        frozen::frozen_matmul_t(x, w)
    }
}

/// Logits from final hidden states (b, t, h): the LM head, or — tied embeddings — the
/// input embedding table (vocab, h) used as the output projection.
pub fn lm_head(
    x: &Tensor,
    head: Option<&Linear>,
    tied_embed: &Tensor,
    quantized: &QuantizedTiedHead,
) -> Result<Tensor> {
    match head {
        Some(l) => l.forward(x),
        None => {
            let (b, t, h) = x.dims3()?;
            let vocab = tied_embed.dim(0)?;
            let rows = x.reshape((b * t, h))?;
            let y = match quantized.for_table(tied_embed) {
                Some(q) if b * t <= QUANTIZED_MATMUL_MAX_ROWS && !x.track_op() => {
                    quantized_matmul_t(q, &rows.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?
                }
                _ => matmul_t(&rows, tied_embed)?,
            };
            y.reshape((b, t, vocab))
        }
    }
}

/// A tied LM head kept in the GGUF's own quantisation for decoding (inference only), beside
/// the dense table the embedding reads: a decoding step then reads the table's quantised
/// bytes (Gemma 3: 137 MB at Q6_K instead of 671 MB in f32). It answers only while the
/// table is the tensor it was read with: a run's weights or an adapter's `modules_to_save`
/// that replace the table (a new tensor) switch it off, and the head follows the new table.
#[derive(Debug, Clone, Default)]
pub struct QuantizedTiedHead(Option<(candle_core::quantized::QMatMul, candle_core::TensorId)>);

impl QuantizedTiedHead {
    /// `q`, the quantised copy of `table` as stored in the file.
    pub fn new(q: candle_core::quantized::QMatMul, table: &Tensor) -> Self {
        Self(Some((q, table.id())))
    }

    /// The quantised head, if `table` is still the one it copies.
    pub fn for_table(&self, table: &Tensor) -> Option<&candle_core::quantized::QMatMul> {
        match &self.0 {
            Some((q, id)) if *id == table.id() => Some(q),
            _ => None,
        }
    }
}

/// The LM head as one dense (vocab, h) matrix — the tied embedding table, or an untied
/// head without bias, LoRA or 4-bit storage — for the fused loss
/// (`model::head_loss`); `None` where only [`lm_head`] computes it.
pub fn dense_lm_head(head: Option<&Linear>, tied_embed: &Tensor) -> Option<Tensor> {
    match head {
        None => Some(tied_embed.clone()),
        Some(l) => match (&l.base, &l.bias, &l.lora) {
            (BaseWeight::Dense(w), None, None) => Some(w.clone()),
            _ => None,
        },
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    base: BaseWeight,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
}

/// An empty layer, to be filled by a loader (see `model::arch::load_tables`).
impl Default for Linear {
    fn default() -> Self {
        Self::new(BaseWeight::Dense(crate::model::arch::placeholder()), None)
    }
}

impl Linear {
    pub fn new(base: BaseWeight, bias: Option<Tensor>) -> Self {
        Self {
            base,
            bias,
            lora: None,
        }
    }

    pub fn base(&self) -> &BaseWeight {
        &self.base
    }

    pub fn set_base(&mut self, base: BaseWeight) {
        self.base = base;
    }

    /// Replaces the base weight by its 4-bit quantisation (the bias and any LoRA adapter
    /// are kept). The dense weight is dropped unless referenced elsewhere.
    pub fn quantize_base(&mut self, kind: Quant4Kind, double_quant: bool) -> Result<()> {
        let q = Quant4Tensor::quantize(&self.base().dense()?.detach(), kind, double_quant)?;
        self.set_base(BaseWeight::Quant4(std::sync::Arc::new(q)));
        Ok(())
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    pub fn lora_mut(&mut self) -> Option<&mut LoraAdapter> {
        self.lora.as_mut()
    }

    pub fn set_lora(&mut self, lora: Option<LoraAdapter>) {
        self.lora = lora;
    }

    /// For inference: nothing of this layer (dense weight, bias, LoRA factors) is tracked
    /// for autograd any more, so a forward pass keeps no graph.
    pub fn freeze(&mut self) {
        if let BaseWeight::Dense(w) = &self.base {
            self.base = BaseWeight::Dense(w.detach());
        }
        self.bias = self.bias.as_ref().map(Tensor::detach);
        if let Some(l) = &mut self.lora {
            l.frozen = true;
        }
    }

    pub fn in_features(&self) -> usize {
        self.base.dims().1
    }

    pub fn out_features(&self) -> usize {
        self.base.dims().0
    }

    /// y = x Wᵀ + b (+ the LoRA update) for x of shape (..., in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((rows, in_f))?;
        // The base's backward is looked up only for a trained adapter (not on inference's
        // path).
        let fused = self
            .lora
            .as_ref()
            .filter(|l| l.fuses() && self.bias.as_ref().is_none_or(|b| !b.track_op()))
            .and_then(|l| Some((l, self.base.frozen_backward()?.1)));
        let y = match fused {
            // A trained adapter on a frozen base: the base's output computed outside
            // autograd, the update added by one op of x, A and B (`LoraAdapter::add_update`).
            Some((lora, grad)) => {
                let mut base = self.base.matmul_t(&x2.detach())?;
                if let Some(b) = &self.bias {
                    base = base.broadcast_add(b)?;
                }
                lora.add_update(&x2, &base, grad)?
            }
            // The composed form: the fused op's twin, and the path of dropout, trainable
            // bases and inference.
            None => {
                let mut y = self.base.matmul_t(&x2)?;
                if let Some(b) = &self.bias {
                    y = y.broadcast_add(b)?;
                }
                if let Some(lora) = &self.lora {
                    y = (y + lora.forward(&x2)?)?;
                }
                y
            }
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features();
        }
        y.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused LoRA op (a frozen dense or 4-bit base) against the composed definition
    /// in f64: output and the gradients of x, A and B within 1e-5, on the CPU kernels and
    /// on the generic path; an untracked x gets no gradient but A and B do.
    #[test]
    fn the_fused_lora_update_equals_the_composed_definition_in_f64() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, in_f, out_f, r) = (70, 64, 48, 4);
        let w = Tensor::randn(0f32, 0.2, (out_f, in_f), &dev)?;
        let x0 = Tensor::randn(0f32, 1., (rows, in_f), &dev)?;
        let up = Tensor::randn(0f32, 1., (rows, out_f), &dev)?;
        let mut lora = LoraAdapter::new(in_f, out_f, r, 8.0, 0.0, DType::F32, &dev, 5)?;
        lora.b = Var::from_tensor(&Tensor::randn(0f32, 0.3, (out_f, r), &dev)?)?;
        let q = Quant4Tensor::quantize(&w, Quant4Kind::Nf4, true)?;
        let w4 = q.dequantize(DType::F32, &dev)?;
        let to64 = |t: &Tensor| t.to_dtype(DType::F64);
        for (base, w_ref) in [
            (BaseWeight::Dense(w.clone()), &w),
            (BaseWeight::Quant4(std::sync::Arc::new(q)), &w4),
        ] {
            let mut layer = Linear::new(base, None);
            layer.set_lora(Some(lora.clone()));
            // The f64 reference: x Wᵀ + s (x Aᵀ) Bᵀ, composed.
            let (x64, a64, b64) = (
                Var::from_tensor(&to64(&x0)?)?,
                Var::from_tensor(&to64(lora.a.as_tensor())?)?,
                Var::from_tensor(&to64(lora.b.as_tensor())?)?,
            );
            let y64 = (x64.as_tensor().matmul(&to64(w_ref)?.t()?)?
                + (x64.as_tensor().matmul(&a64.t()?)? * lora.scale)?.matmul(&b64.t()?)?)?;
            let g64 = (&y64 * to64(&up)?)?.sum_all()?.backward()?;
            for generic in [false, true] {
                crate::model::generic::with_generic_kernels(generic, || -> Result<()> {
                    let x = Var::from_tensor(&x0)?;
                    let y = layer.forward(x.as_tensor())?;
                    let g = (&y * &up)?.sum_all()?.backward()?;
                    // One op between x, A, B and y: the store has their gradients and
                    // y's, no intermediates' (the composed form has seven more).
                    assert_eq!(g.get_ids().count(), 4, "generic {generic}");
                    let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                        let d = (to64(a)? - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
                        let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
                        assert!(
                            d < 1e-5 * scale,
                            "{what} (generic {generic}): {d} at {scale}"
                        );
                        Ok(())
                    };
                    close(&y, &y64, "output")?;
                    let pairs = [
                        (x.as_tensor(), x64.as_tensor(), "dx"),
                        (lora.a.as_tensor(), a64.as_tensor(), "dA"),
                        (lora.b.as_tensor(), b64.as_tensor(), "dB"),
                    ];
                    for (t, t64, what) in pairs {
                        let (a, b) = (g.get(t).expect(what), g64.get(t64).expect(what));
                        close(a, b, what)?;
                    }
                    // Untracked x: only the factors get gradients.
                    let y = layer.forward(&x0)?;
                    let g = (&y * &up)?.sum_all()?.backward()?;
                    assert!(g.get(lora.a.as_tensor()).is_some());
                    assert!(g.get(lora.b.as_tensor()).is_some());
                    assert_eq!(g.get_ids().count(), 3);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    #[test]
    fn frozen_weights_give_the_same_output_and_input_gradient_but_no_weight_gradient() -> Result<()>
    {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (5, 7), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (3, 7), &dev)?;
        let frozen = matmul_t(x.as_tensor(), &w)?;
        let plain = x.as_tensor().matmul(&w.t()?)?;
        let d = (&frozen - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "forward diff {d}");
        let g1 = frozen.sqr()?.sum_all()?.backward()?;
        let g2 = plain.sqr()?.sum_all()?.backward()?;
        let gx1 = g1.get(x.as_tensor()).expect("input gradient");
        let gx2 = g2.get(x.as_tensor()).expect("input gradient");
        let d = (gx1 - gx2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-4, "input-gradient diff {d}");
        // The frozen op keeps only the input's gradient; candle's plain matmul also keeps a
        // weight-sized gradient (under the id of the transposed view) — the cost avoided.
        assert_eq!(g1.get_ids().count(), 1);
        assert_eq!(g2.get_ids().count(), 2);
        Ok(())
    }
}

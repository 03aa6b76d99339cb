//! LoRA (Hu et al., 2021): a frozen weight W plus a trainable low-rank update
//! ΔW = (alpha / r) · B A, with A (r, in) and B (out, r). B starts at zero, so an
//! untrained adapter leaves the model unchanged.
use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
    /// Dropout is applied only while training.
    pub training: bool,
    /// Inference only: the forward pass uses detached factors, so nothing is tracked for
    /// a backward pass. (With tracked factors every activation of a forward pass stays
    /// alive until its output is dropped: a 1,441-token RAG prompt through SmolLM2
    /// grew past 24 GB and was OOM-killed; frozen, the process peaks at 1.1 GB.) Set by [`crate::model::linear::Linear::freeze`].
    pub frozen: bool,
}

impl LoraAdapter {
    /// PEFT's default init: A ~ kaiming-uniform (bound 1/√in), B = 0. `seed` makes the
    /// draw reproducible (runs and resumes depend on it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_f: usize,
        out_f: usize,
        r: usize,
        alpha: f64,
        dropout: f32,
        dtype: DType,
        dev: &Device,
        seed: u64,
    ) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let bound = 1.0 / (in_f as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..r * in_f)
            .map(|_| rng.gen_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(values, (r, in_f), dev)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_f, r), dtype, dev)?;
        Self::from_tensors(a, b, alpha, dropout)
    }

    /// An adapter from existing factors (loading a saved adapter).
    pub fn from_tensors(a: Tensor, b: Tensor, alpha: f64, dropout: f32) -> Result<Self> {
        let r = a.dim(0)?;
        Ok(Self {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: alpha / r as f64,
            dropout,
            training: false,
            frozen: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// (alpha / r) · dropout(x) Aᵀ Bᵀ for x of shape (rows, in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.training && self.dropout > 0.0 {
            candle_nn::ops::dropout(x, self.dropout)?
        } else {
            x.clone()
        };
        // The scale goes on the rank-r intermediate, not on the output: one fewer
        // output-sized tensor kept for the backward pass per adapted layer.
        let (a, b) = self.factors(x.dtype())?;
        let h = (x.matmul(&a.t()?)? * self.scale)?;
        h.matmul(&b.t()?)
    }

    /// A and B as the forward pass uses them: detached when frozen for inference, and
    /// f32 master factors on a bf16/f16 model cast to `dtype` where used (the cast's
    /// backward brings the gradient back to f32).
    fn factors(&self, dtype: DType) -> Result<(Tensor, Tensor)> {
        let use_as = |v: &Var| {
            let t = if self.frozen {
                v.as_tensor().detach()
            } else {
                v.as_tensor().clone()
            };
            if t.dtype() == dtype {
                Ok(t)
            } else {
                t.to_dtype(dtype)
            }
        };
        Ok((use_as(&self.a)?, use_as(&self.b)?))
    }

    /// Whether [`Self::add_update`] applies: a trained adapter (not frozen for inference)
    /// without dropout in training (whose masks the composed form keeps).
    pub fn fuses(&self) -> bool {
        let dropout = self.training && self.dropout > 0.0;
        !self.frozen && !dropout
    }

    /// `base` + (alpha / r) · x Aᵀ Bᵀ for x (rows, in), where `base` = x Wᵀ was computed
    /// from x outside autograd and `input_grad` is its backward (g ↦ g W), as one op of x,
    /// A and B whose backward gives
    /// - dx = g W + s (g B) A,
    /// - dA = s (g B)ᵀ x,
    /// - dB = s gᵀ (x Aᵀ),
    ///
    /// so the graph keeps x, A and B only: the composed form (`Linear::forward` with
    /// [`Self::forward`]) keeps x Aᵀ, its scaled copy, the (rows, out) update and the sum,
    /// and its backward fills and adds two (rows, out) gradients more. Device-generic
    /// (tensor ops); the same values as the composed form. x's gradient is computed only
    /// when x is tracked.
    pub fn add_update(
        &self,
        x: &Tensor,
        base: &Tensor,
        input_grad: super::InputGrad,
    ) -> Result<Tensor> {
        let (a, b) = self.factors(x.dtype())?;
        let s = self.scale;
        let y = {
            let h = (x.detach().matmul(&a.detach().t()?)? * s)?;
            (base + h.matmul(&b.detach().t()?)?)?
        };
        let x_tracked = x.track_op();
        crate::model::generic::attach3("lora-linear", (x, &a, &b), &y, move |x, a, b, g| {
            let gb = (g.matmul(b)? * s)?;
            let dx = if x_tracked {
                Some((input_grad(g)? + gb.matmul(a)?)?)
            } else {
                None
            };
            let da = gb.t()?.matmul(x)?;
            let h = (x.matmul(&a.t()?)? * s)?;
            let db = g.t()?.matmul(&h)?;
            Ok((dx, Some(da), Some(db)))
        })
    }

    /// ΔW = scale · B A, shaped (out, in) like the base weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale
    }
}

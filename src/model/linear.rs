//! The one linear layer every model uses.
//!
//! Its base weight is an enum so that later techniques can swap the storage (a frozen
//! 4-bit base for QLoRA) and wrap it (LoRA) without touching the architectures.
use candle_core::{Result, Tensor};

/// Storage of a linear layer's weight, shaped (out_features, in_features) like PyTorch.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A dense tensor; trainable when it was created from a `Var`.
    Dense(Tensor),
}

impl BaseWeight {
    /// The weight as a dense tensor (out, in).
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => Ok(w.clone()),
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        match self {
            BaseWeight::Dense(w) => {
                let d = w.dims();
                (d[0], d[1])
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    base: BaseWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(base: BaseWeight, bias: Option<Tensor>) -> Self {
        Self { base, bias }
    }

    pub fn base(&self) -> &BaseWeight {
        &self.base
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_features(&self) -> usize {
        self.base.dims().1
    }

    pub fn out_features(&self) -> usize {
        self.base.dims().0
    }

    /// y = x Wᵀ + b for x of shape (..., in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((rows, in_f))?;
        let y = match &self.base {
            BaseWeight::Dense(w) => x2.matmul(&w.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features();
        }
        y.reshape(out_dims)
    }
}

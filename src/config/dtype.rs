//! `model.dtype`: the compute dtype of a run. The enum is the only way to name one, so an
//! unknown dtype is a config error, never a silent f32.
//!
//! `auto` (the default) is bf16 on a GPU and f32 on the CPU. What a run trains stays f32
//! whatever the compute dtype, as in PyTorch's mixed precision and bitsandbytes'
//! `bnb_4bit_compute_dtype=bfloat16` recipe: LoRA factors are f32 variables cast to bf16
//! where they are used; the model's own tensors (full fine-tuning, `modules_to_save`) are
//! bf16 variables updated through f32 master copies (`train::optim::MasterWeights`), so
//! that updates smaller than a bf16 step are not rounded away. Optimiser state is f32 (or
//! 8-bit) either way.
use std::fmt;

use candle_core::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// bf16 on a GPU, f32 on the CPU (see the module documentation).
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    /// The candle dtype weights and activations are computed in, on a GPU (`gpu`) or not.
    pub fn resolve(self, gpu: bool) -> DType {
        match self {
            Self::Auto if gpu => DType::BF16,
            Self::Auto | Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// The name a config uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

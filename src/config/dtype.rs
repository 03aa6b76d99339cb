//! `model.dtype`: the compute dtype of a run. The enum is the only way to name one, so an
//! unknown dtype is a config error, never a silent f32.
//!
//! `auto` (the default) is bf16 on a GPU for a frozen base that trains adapters alone
//! (LoRA, QLoRA: bitsandbytes' `bnb_4bit_compute_dtype=bfloat16` recipe), whose adapters
//! stay f32 master weights cast to bf16 where they are used, with f32 optimiser state; f32
//! on the CPU, for full fine-tuning and for LoRA with `modules_to_save` everywhere (those
//! train the model's own tensors: without an f32 master copy, bf16 updates would round
//! away).
use std::fmt;

use candle_core::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// bf16 on a GPU with a frozen base, else f32 (see the module documentation).
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    /// The candle dtype weights and activations are computed in, on a GPU (`gpu`) or not,
    /// for a run whose base is frozen (`frozen_base`: LoRA, QLoRA) or trained.
    pub fn resolve(self, gpu: bool, frozen_base: bool) -> DType {
        match self {
            Self::Auto if gpu && frozen_base => DType::BF16,
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

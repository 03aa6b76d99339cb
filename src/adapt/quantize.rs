//! QLoRA's first step as a technique: replace frozen base weights by 4-bit codes.
use candle_core::Result;

use crate::model::linear::{Linear, Quant4Kind};

/// Replaces a linear layer's base weight by its 4-bit quantisation (the bias and any LoRA
/// adapter are kept): [`Linear::quantize_base`], which loading also uses.
pub fn quantize_base(lin: &mut Linear, kind: Quant4Kind, double_quant: bool) -> Result<()> {
    lin.quantize_base(kind, double_quant)
}

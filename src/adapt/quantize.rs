//! QLoRA's first step as a technique: replace frozen base weights by 4-bit codes.
use std::sync::Arc;

use candle_core::Result;

use crate::model::linear::{BaseWeight, Linear, Quant4Kind, Quant4Tensor};

/// Replaces a linear layer's base weight by its 4-bit quantisation (the bias and any LoRA
/// adapter are kept). The dense weight is dropped unless referenced elsewhere.
pub fn quantize_base(lin: &mut Linear, kind: Quant4Kind, double_quant: bool) -> Result<()> {
    let w = lin.base().dense()?;
    let q = Quant4Tensor::quantize(&w.detach(), kind, double_quant)?;
    lin.set_base(BaseWeight::Quant4(Arc::new(q)));
    Ok(())
}

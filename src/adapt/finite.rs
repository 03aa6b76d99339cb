//! Trained weights read back from disk (an adapter, full fine-tuned weights) must be
//! finite: a NaN or infinite weight does not fail loudly later, it makes every answer empty.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Fails naming the first tensor (by name) of `file` that holds a NaN or an infinity.
pub fn ensure_finite(file: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        // 0·x is 0 for every finite x and NaN for NaN and ±∞, so the sum is 0 exactly
        // when the tensor is finite (no overflow, unlike a sum of squares).
        let t = tensors[name].to_dtype(DType::F32)?;
        let s = (t * 0.0)?.sum_all()?.to_scalar::<f32>()?;
        if s != 0.0 {
            bail!(
                "{}: tensor `{name}` holds NaN or infinite values; these weights are broken (a diverged run?) and are not loaded",
                file.display()
            );
        }
    }
    Ok(())
}

//! Global gradient norm and torch-style norm clipping.

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use super::PAR_CHUNK;

/// Global L2 norm over all gradients (`None` entries skipped), accumulated in f64.
/// Deterministic: chunk sums are combined in a fixed order.
///
/// Gradients off the CPU are summed on their device (f32 squares, one f32 sum per
/// gradient added up there) and read back once: one synchronisation per step, not one per
/// variable, and no f64 copy of a gradient.
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total = 0f64;
    let mut on_device: Option<Tensor> = None;
    for g in grads.iter().flatten() {
        if !crate::model::generic::generic_kernels(g.device()) {
            total += sum_sq(g)?;
        } else {
            let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            on_device = Some(match on_device {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
    }
    if let Some(s) = on_device {
        total += s.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Like `torch.nn.utils.clip_grad_norm_`: returns the total norm and the factor
/// `min(1, max_norm / (norm + 1e-6))` to pass to `Optimizer::step` as `grad_scale`
/// (gradients themselves are not modified).
///
/// A non-finite norm (NaN/inf gradients) gives a NaN scale; `Optimizer::step` refuses
/// a non-finite `grad_scale`, so the trainer should check `norm.is_finite()` and skip
/// the step.
pub fn clip_grad_norm(grads: &[Option<Tensor>], max_norm: f64) -> Result<(f64, f64)> {
    ensure!(max_norm > 0.0, "max_norm must be > 0, got {max_norm}");
    let norm = grad_norm(grads)?;
    let scale = if norm.is_finite() {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        f64::NAN
    };
    Ok((norm, scale))
}

fn sum_sq(g: &Tensor) -> Result<f64> {
    if g.device().is_cpu() && g.is_contiguous() {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            let x = &v[a..b];
            let parts: Vec<f64> = x
                .par_chunks(PAR_CHUNK)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect();
            return Ok(parts.iter().sum());
        }
    }
    Ok(g.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The device path (one read-back of f32 sums) against the CPU's f64 sums.
    #[test]
    fn the_generic_norm_equals_the_cpu_norm() {
        let grads: Vec<Option<Tensor>> = [(300, 7), (5, 1), (40, 40)]
            .iter()
            .map(|&s| Some(Tensor::randn(0f32, 1.0, s, &Device::Cpu).unwrap()))
            .chain([None])
            .collect();
        let cpu = grad_norm(&grads).unwrap();
        let generic =
            crate::model::generic::with_generic_kernels(true, || grad_norm(&grads)).unwrap();
        assert!((cpu - generic).abs() / cpu < 1e-6, "{cpu} vs {generic}");
    }
}

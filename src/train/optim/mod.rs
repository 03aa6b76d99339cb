//! Optimisers for the training engine.
//!
//! - [`AdamW`]: PyTorch-semantics AdamW (decoupled weight decay, bias correction) with
//!   f32 moments. On CPU with f32 parameters the update is written straight into each
//!   `Var`'s storage (through `Tensor::inplace_op2`) and parallelised with rayon: no
//!   temporaries the size of a parameter are allocated per step.
//! - [`AdamW8bit`]: bitsandbytes-style 8-bit AdamW with blockwise-quantised moments
//!   (dynamic quantisation map, one f32 absmax per block): ~2 bytes of state per
//!   parameter instead of 8.
//! - [`clip_grad_norm`] / [`grad_norm`]: global L2 gradient norm, torch-style clipping.
//! - [`MasterWeights`]: f32 master weights for variables held in bf16/f16 (mixed
//!   precision), around either optimiser.
//!
//! Both optimisers implement [`Optimizer`], the interface the trainer drives.
//! State is allocated lazily, the first time a variable receives a gradient (as in
//! PyTorch and bitsandbytes); each variable keeps its own step counter for bias
//! correction (PyTorch semantics), so a variable that skips steps is corrected by the
//! number of updates it actually received.

mod adamw;
mod adamw8bit;
mod clip;
mod device;
mod master;
pub mod qmap;

pub use adamw::{AdamW, AdamWConfig};
pub use adamw8bit::AdamW8bit;
pub use clip::{clip_grad_norm, grad_norm};
pub use master::{trained_params, MasterWeights};

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};

use crate::weights_file::Entry;

/// The interface the trainer drives.
pub trait Optimizer: Send {
    /// `grads[i]` is the gradient of `vars[i]` (`None` = no gradient this step, skip it).
    /// `grad_scale` multiplies every gradient first (gradient clipping / accumulation
    /// averaging).
    fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()>;
    /// Bytes of optimiser state currently held.
    fn state_bytes(&self) -> usize;
    /// The state as named entries for checkpointing (exact resume): host state is
    /// borrowed, not copied, so writing a checkpoint holds no second copy of it.
    fn state_entries(&self) -> Result<Vec<(String, Entry<'_>)>>;
    /// The state as named tensors: a snapshot (copies), and the inverse.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.state_entries()?
            .into_iter()
            .map(|(name, e)| Ok((name, e.to_tensor()?)))
            .collect()
    }
    fn load_state_tensors(&mut self, t: &HashMap<String, Tensor>) -> Result<()>;
    /// Number of `step` calls so far.
    fn step_count(&self) -> u64;
    /// The f32 master copy the optimiser updates in place of variable `i`, when it keeps
    /// one (a variable of a narrower dtype: [`MasterWeights`]).
    fn master(&self, _i: usize) -> Option<Var> {
        None
    }
}

/// Per-step scalars shared by the 32-bit and 8-bit kernels (PyTorch AdamW formulas):
/// `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;`
/// `p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)`, with `bc_k = 1 - beta_k^t`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamScalars {
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    pub grad_scale: f32,
}

impl AdamScalars {
    pub fn new(cfg: &AdamWConfig, lr: f64, grad_scale: f64, t: u64) -> Self {
        let t = t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        Self {
            beta1: cfg.beta1 as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            step_size: (lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: cfg.eps as f32,
            grad_scale: grad_scale as f32,
        }
    }
}

/// Elements per rayon task for elementwise kernels.
pub(crate) const PAR_CHUNK: usize = 1 << 15;

/// Every variable an optimizer is given must be of a float dtype.
pub(crate) fn check_float_vars(optimizer: &str, vars: &[Var]) -> Result<()> {
    for (i, v) in vars.iter().enumerate() {
        ensure!(
            v.dtype().is_float(),
            "{optimizer}: variable {i} has non-float dtype {:?}",
            v.dtype()
        );
    }
    Ok(())
}

pub(crate) fn check_step_args(
    n_vars: usize,
    grads: &[Option<Tensor>],
    lr: f64,
    grad_scale: f64,
) -> Result<()> {
    ensure!(
        grads.len() == n_vars,
        "optimizer step: got {} gradients for {} variables",
        grads.len(),
        n_vars
    );
    ensure!(
        lr.is_finite(),
        "optimizer step: learning rate {lr} is not finite"
    );
    ensure!(
        grad_scale.is_finite(),
        "optimizer step: grad_scale {grad_scale} is not finite"
    );
    Ok(())
}

/// Returns `grad` as an f32 tensor on the CPU with a contiguous layout (no copy when it
/// already is one).
pub(crate) fn host_f32(grad: &Tensor) -> Result<Tensor> {
    Ok(grad
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

/// Whether `var` can be updated in place by [`update_host`] without staging.
pub(crate) fn in_place_capable(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32 && var.is_contiguous()
}

/// Runs `f(param, grad)` on the parameter's values as a mutable f32 slice.
///
/// For a contiguous f32 CPU variable this writes straight into the variable's storage
/// (no parameter-sized allocation); otherwise (other dtype or device) the parameter is
/// staged through a host f32 copy and written back with `Var::set`.
pub(crate) fn update_host<F>(var: &Var, grad: &Tensor, f: F) -> Result<()>
where
    F: FnOnce(&mut [f32], &[f32]),
{
    ensure!(
        grad.dims() == var.dims(),
        "gradient shape {:?} does not match variable shape {:?}",
        grad.dims(),
        var.dims()
    );
    let grad = host_f32(grad)?;
    if in_place_capable(var) {
        crate::model::fused::update_in_place(
            var.as_tensor(),
            &grad,
            "ftlab-optimizer-update",
            |p, g| {
                if p.len() != g.len() {
                    candle_core::bail!("parameter has {} elements, gradient {}", p.len(), g.len());
                }
                f(p, g);
                Ok(())
            },
        )?;
    } else {
        let mut p: Vec<f32> = var
            .as_tensor()
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let (g_storage, g_layout) = grad.storage_and_layout();
        let g = cpu_f32_slice(&g_storage, g_layout)?;
        f(&mut p, g);
        drop(g_storage);
        let t = Tensor::from_vec(p, var.shape(), &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

fn cpu_f32_slice<'a>(storage: &'a candle_core::Storage, layout: &Layout) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => {
            let (a, b) = layout
                .contiguous_offsets()
                .context("expected a contiguous tensor")?;
            Ok(&v[a..b])
        }
        _ => bail!("expected an f32 CPU tensor"),
    }
}

/// The 32-bit AdamW kernel on slices, parallelised over chunks with rayon.
pub(crate) fn adamw_f32_kernel(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamScalars,
) {
    use rayon::prelude::*;
    debug_assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    let s = *s;
    let run = move |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * s.grad_scale;
            let mi = s.beta1 * *m + s.one_minus_beta1 * g;
            let vi = s.beta2 * *v + s.one_minus_beta2 * (g * g);
            *m = mi;
            *v = vi;
            let denom = vi.sqrt() * s.inv_sqrt_bc2 + s.eps;
            *p = *p * s.decay - s.step_size * (mi / denom);
        }
    };
    if p.len() <= PAR_CHUNK {
        run(p, g, m, v);
        return;
    }
    p.par_chunks_mut(PAR_CHUNK)
        .zip(g.par_chunks(PAR_CHUNK))
        .zip(m.par_chunks_mut(PAR_CHUNK))
        .zip(v.par_chunks_mut(PAR_CHUNK))
        .for_each(|(((p, g), m), v)| run(p, g, m, v));
}

/// Name of the per-variable step counter tensor.
pub(crate) fn step_key(i: usize) -> String {
    format!("{i}.step")
}

pub(crate) fn u64_tensor(x: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[x as i64], &Device::Cpu)?)
}

pub(crate) fn tensor_u64(t: &Tensor, name: &str) -> Result<u64> {
    let v: Vec<i64> = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1()
        .with_context(|| format!("reading {name}"))?;
    ensure!(
        v.len() == 1,
        "{name}: expected one element, got {}",
        v.len()
    );
    ensure!(v[0] >= 0, "{name}: negative step count {}", v[0]);
    Ok(v[0] as u64)
}

/// Reads a state tensor into a host f32 vector, checking its element count.
pub(crate) fn tensor_to_f32_vec(t: &Tensor, n: usize, name: &str) -> Result<Vec<f32>> {
    ensure!(
        t.elem_count() == n,
        "{name}: expected {n} elements, checkpoint has {}",
        t.elem_count()
    );
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// Fails on names that do not belong to an optimizer with `n_vars` variables and the
/// given per-variable suffixes (catches loading a checkpoint made for another model).
pub(crate) fn check_known_keys(
    t: &HashMap<String, Tensor>,
    n_vars: usize,
    suffixes: &[&str],
) -> Result<()> {
    for k in t.keys() {
        if k == "step" {
            continue;
        }
        let ok = k
            .split_once('.')
            .and_then(|(i, suffix)| {
                let i: usize = i.parse().ok()?;
                (i < n_vars && (suffix == "step" || suffixes.contains(&suffix))).then_some(())
            })
            .is_some();
        ensure!(ok, "unexpected optimizer state tensor {k:?}");
    }
    Ok(())
}

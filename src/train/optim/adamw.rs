//! 32-bit AdamW with PyTorch semantics, updating parameters in place.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::generic::generic_kernels;
use crate::weights_file::Entry;

use super::{
    adamw_f32_kernel, check_float_vars, check_known_keys, check_step_args, step_key,
    tensor_to_f32_vec, tensor_u64, u64_tensor, update_host, AdamScalars, Optimizer,
};

/// AdamW hyper-parameters (the learning rate is passed to every `step`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay: `p *= 1 - lr * weight_decay` before the Adam update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.beta1),
            "AdamW beta1 must be in [0, 1), got {}",
            self.beta1
        );
        ensure!(
            (0.0..1.0).contains(&self.beta2),
            "AdamW beta2 must be in [0, 1), got {}",
            self.beta2
        );
        ensure!(self.eps >= 0.0, "AdamW eps must be >= 0, got {}", self.eps);
        ensure!(
            self.weight_decay >= 0.0,
            "AdamW weight_decay must be >= 0, got {}",
            self.weight_decay
        );
        Ok(())
    }
}

/// First and second moments of one variable, always f32.
enum Moments {
    /// Variables on the CPU: plain vectors, updated in place by the rayon kernel.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Variables on another device: tensors on that device, updated with tensor ops
    /// (allocating fallback).
    Device { m: Tensor, v: Tensor },
}

struct Slot {
    var: Var,
    /// Updates this variable has received (bias correction uses it, as PyTorch's
    /// per-parameter `state["step"]`).
    step: u64,
    state: Option<Moments>,
}

/// AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW` (non-amsgrad, non-fused):
///
/// ```text
/// p ← p · (1 − lr·wd)
/// m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
/// p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
/// ```
///
/// Moments are f32. For f32 variables on the CPU the whole update runs in one pass over
/// the parameter's own storage (no per-step parameter-sized temporaries), parallelised
/// with rayon. CPU variables of another float dtype are staged through an f32 copy; on
/// other devices the moments live on the device and the update uses tensor ops.
pub struct AdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        check_float_vars("AdamW", &vars)?;
        Ok(Self {
            slots: vars
                .into_iter()
                .map(|var| Slot {
                    var,
                    step: 0,
                    state: None,
                })
                .collect(),
            cfg,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The variables this optimizer updates, in order.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// Bytes of state once every variable has received a gradient (8 bytes/element).
    pub fn full_state_bytes(&self) -> usize {
        self.slots.iter().map(|s| 8 * s.var.elem_count()).sum()
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        check_step_args(self.slots.len(), grads, lr, grad_scale)?;
        self.step += 1;
        let cfg = self.cfg;
        for (i, (slot, grad)) in self.slots.iter_mut().zip(grads).enumerate() {
            let Some(grad) = grad else { continue };
            slot.step += 1;
            let sc = AdamScalars::new(&cfg, lr, grad_scale, slot.step);
            let var = &slot.var;
            if !generic_kernels(var.device()) {
                let n = var.elem_count();
                let state = slot.state.get_or_insert_with(|| Moments::Host {
                    m: vec![0f32; n],
                    v: vec![0f32; n],
                });
                let Moments::Host { m, v } = state else {
                    bail!("AdamW: variable {i} moved between devices")
                };
                update_host(var, grad, |p, g| adamw_f32_kernel(p, g, m, v, &sc))
                    .with_context(|| format!("AdamW update of variable {i}"))?;
            } else {
                if slot.state.is_none() {
                    slot.state = Some(Moments::Device {
                        m: Tensor::zeros(var.shape(), DType::F32, var.device())?,
                        v: Tensor::zeros(var.shape(), DType::F32, var.device())?,
                    });
                }
                let Some(Moments::Device { m, v }) = &mut slot.state else {
                    bail!("AdamW: variable {i} moved between devices")
                };
                super::device::adamw_update(var, grad, m, v, &sc)
                    .with_context(|| format!("AdamW update of variable {i}"))?;
            }
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.state {
                None => 0,
                Some(Moments::Host { m, v }) => 4 * (m.len() + v.len()),
                Some(Moments::Device { m, v }) => 4 * (m.elem_count() + v.elem_count()),
            })
            .sum()
    }

    fn state_entries(&self) -> Result<Vec<(String, Entry<'_>)>> {
        let mut out = vec![("step".to_string(), Entry::Tensor(u64_tensor(self.step)?))];
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(state) = &slot.state else { continue };
            out.push((step_key(i), Entry::Tensor(u64_tensor(slot.step)?)));
            let shape = slot.var.dims().to_vec();
            let (m, v) = match state {
                Moments::Host { m, v } => (
                    Entry::F32 {
                        shape: shape.clone(),
                        data: m,
                    },
                    Entry::F32 { shape, data: v },
                ),
                Moments::Device { m, v } => (Entry::Tensor(m.clone()), Entry::Tensor(v.clone())),
            };
            out.push((format!("{i}.m"), m));
            out.push((format!("{i}.v"), v));
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        check_known_keys(t, self.slots.len(), &["m", "v"])?;
        let step = tensor_u64(
            t.get("step").context("optimizer state lacks \"step\"")?,
            "step",
        )?;
        let mut new_states = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let (km, kv) = (format!("{i}.m"), format!("{i}.v"));
            match (t.get(&km), t.get(&kv)) {
                (None, None) => new_states.push((0, None)),
                (Some(m), Some(v)) => {
                    let var_step = tensor_u64(
                        t.get(&step_key(i))
                            .with_context(|| format!("optimizer state lacks {:?}", step_key(i)))?,
                        &step_key(i),
                    )?;
                    for (k, x) in [(&km, m), (&kv, v)] {
                        ensure!(
                            x.dims() == slot.var.dims(),
                            "{k}: shape {:?} does not match variable shape {:?}",
                            x.dims(),
                            slot.var.dims()
                        );
                    }
                    let n = slot.var.elem_count();
                    let state = if !generic_kernels(slot.var.device()) {
                        Moments::Host {
                            m: tensor_to_f32_vec(m, n, &km)?,
                            v: tensor_to_f32_vec(v, n, &kv)?,
                        }
                    } else {
                        let dev = slot.var.device();
                        Moments::Device {
                            m: m.to_dtype(DType::F32)?.to_device(dev)?.contiguous()?,
                            v: v.to_dtype(DType::F32)?.to_device(dev)?.contiguous()?,
                        }
                    };
                    new_states.push((var_step, Some(state)));
                }
                _ => bail!("optimizer state for variable {i} has only one of {km:?}, {kv:?}"),
            }
        }
        for (slot, (s, state)) in self.slots.iter_mut().zip(new_states) {
            slot.step = s;
            slot.state = state;
        }
        self.step = step;
        Ok(())
    }

    fn step_count(&self) -> u64 {
        self.step
    }
}

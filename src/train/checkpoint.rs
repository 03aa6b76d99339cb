//! Checkpoints: trainable weights (a PEFT adapter for LoRA runs, so every checkpoint is
//! usable as it is), optimiser state and the trainer's position, for exact resume.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::adapt::peft::ADAPTER_WEIGHTS;
use crate::train::optim::Optimizer;

// The file names belong to the run layout (inference reads them too); re-exported because
// the training tasks write them through this module.
pub use crate::runs::layout::{FULL_WEIGHTS, OPTIMIZER_FILE, STATE_FILE};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: usize,
    pub epoch: usize,
    /// Micro-batches of `epoch` already consumed.
    pub batch_in_epoch: usize,
    pub best_eval_loss: Option<f64>,
    /// The best evaluation's score (lower is better; `best_eval_loss` is its loss).
    #[serde(default)]
    pub best_eval_score: Option<f64>,
    pub evals_without_improvement: usize,
    pub last_train_loss: Option<f64>,
    pub elapsed_secs: f64,
}

/// Writes a checkpoint: the task's weights (via `save_weights`), optimiser state and the
/// trainer's position, swapped into place atomically.
pub fn save(
    dir: &Path,
    save_weights: impl FnOnce(&Path) -> Result<()>,
    optimizer: &dyn Optimizer,
    state: &TrainerState,
) -> Result<()> {
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    save_weights(&tmp)?;
    let opt: HashMap<String, Tensor> = optimizer.state_tensors()?.into_iter().collect();
    candle_core::safetensors::save(&opt, tmp.join(OPTIMIZER_FILE))?;
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
    // Swap in atomically so an interrupted save never leaves a half checkpoint behind.
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

pub fn save_vars(path: &Path, params: &[(String, Var)]) -> Result<()> {
    let map: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

/// Restores trainable weights (by name) and optimiser state; returns the trainer state.
pub fn load(
    dir: &Path,
    params: &[(String, Var)],
    optimizer: &mut dyn Optimizer,
) -> Result<TrainerState> {
    let device = match params.first() {
        Some((_, v)) => v.device().clone(),
        None => Device::Cpu,
    };
    let device = &device;
    let state_path = dir.join(STATE_FILE);
    let state: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("{}: cannot read", state_path.display()))?,
    )
    .with_context(|| format!("{}: invalid trainer state", state_path.display()))?;
    let weights = if dir.join(ADAPTER_WEIGHTS).exists() {
        dir.join(ADAPTER_WEIGHTS)
    } else {
        dir.join(FULL_WEIGHTS)
    };
    let tensors = candle_core::safetensors::load(&weights, device)
        .map_err(|e| anyhow!("{}: cannot read checkpoint weights: {e}", weights.display()))?;
    for (name, var) in params {
        let t = tensors
            .get(name)
            .ok_or_else(|| anyhow!("{}: checkpoint has no tensor `{name}`", weights.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: `{name}` has shape {:?}, the model expects {:?}",
                weights.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    let opath = dir.join(OPTIMIZER_FILE);
    let opt = candle_core::safetensors::load(&opath, device)
        .map_err(|e| anyhow!("{}: cannot read optimiser state: {e}", opath.display()))?;
    optimizer.load_state_tensors(&opt)?;
    Ok(state)
}

//! Checkpoints: trainable weights (a PEFT adapter for LoRA runs, so every checkpoint is
//! usable as it is), optimiser state and the trainer's position, for exact resume.
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::adapt::peft::ADAPTER_WEIGHTS;
use crate::files;
use crate::runs::layout::RunDir;
use crate::train::optim::Optimizer;

// The file names belong to the run layout (inference reads them too); re-exported because
// the training tasks write them through this module.
pub use crate::runs::layout::{FULL_WEIGHTS, OPTIMIZER_FILE, STATE_FILE};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: usize,
    pub epoch: usize,
    /// Batches (of `train.batch_size`) of `epoch` already consumed, whatever micro-batches
    /// they were run as: a resume with another micro-batch continues at the same example.
    pub batch_in_epoch: usize,
    pub best_eval_loss: Option<f64>,
    /// The best evaluation's score (lower is better; `best_eval_loss` is its loss).
    #[serde(default)]
    pub best_eval_score: Option<f64>,
    pub evals_without_improvement: usize,
    pub last_train_loss: Option<f64>,
    pub elapsed_secs: f64,
    // What the summary adds up over the whole run, carried across a resume so the
    // resumed session's summary covers every session (absent in older checkpoints).
    /// Every evaluation so far: (step, loss).
    #[serde(default)]
    pub eval_losses: Vec<(usize, f64)>,
    /// Metrics of the best evaluation.
    #[serde(default)]
    pub best_eval_metrics: BTreeMap<String, f64>,
    /// Sum of the per-step token rates and the number of steps they cover.
    #[serde(default)]
    pub token_rate_sum: f64,
    #[serde(default)]
    pub token_rate_steps: usize,
    /// The highest peak RSS of the sessions before this checkpoint was written.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

impl TrainerState {
    /// The run's peak RSS: the earlier sessions' and this process's, whichever is higher.
    pub fn peak_with_now(&self) -> Option<u64> {
        let now = crate::telemetry::memory::peak_rss_bytes(None).ok();
        self.peak_rss_bytes.max(now)
    }
}

/// The newest checkpoint of a run that can be resumed from, and the newer ones that
/// cannot (unreadable: a write cut short, a damaged disk), each with the reason.
#[derive(Debug, Default)]
pub struct Resumable {
    pub newest: Option<(usize, PathBuf)>,
    pub skipped: Vec<String>,
}

/// Looks for the newest readable checkpoint of `run`, newest first.
pub fn newest_valid(run: &RunDir) -> Resumable {
    let mut out = Resumable::default();
    for (step, dir) in run.list_checkpoints().into_iter().rev() {
        match validate(&dir) {
            Ok(()) => {
                out.newest = Some((step, dir));
                break;
            }
            Err(e) => out.skipped.push(format!("{e:#}")),
        }
    }
    out
}

/// Checks that a checkpoint's files are complete: the trainer state parses and every
/// safetensors file is as long as its header says. Reads only the headers.
pub fn validate(dir: &Path) -> Result<()> {
    read_state(dir)?;
    safetensors_complete(&weights_file(dir))?;
    safetensors_complete(&dir.join(OPTIMIZER_FILE))
}

/// Whether `path` is a whole safetensors file: its length is the header's end of data.
fn safetensors_complete(path: &Path) -> Result<()> {
    let bad = |why: &str| {
        anyhow!(
            "{}: not a complete safetensors file ({why})",
            path.display()
        )
    };
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| bad("no header"))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) {
        return Err(bad("header longer than the file"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| bad("header cut short"))?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| bad("unreadable header"))?;
    let data_end = header
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if 8 + n + data_end != len {
        return Err(bad(&format!(
            "{len} bytes, the header describes {}",
            8 + n + data_end
        )));
    }
    Ok(())
}

/// The trainer state of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("{}: cannot read", state_path.display()))?,
    )
    .with_context(|| format!("{}: invalid trainer state", state_path.display()))
}

/// The trainable weights of a checkpoint: a PEFT adapter, else full weights.
fn weights_file(dir: &Path) -> PathBuf {
    if dir.join(ADAPTER_WEIGHTS).exists() {
        dir.join(ADAPTER_WEIGHTS)
    } else {
        dir.join(FULL_WEIGHTS)
    }
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
        files::remove_dir_all(&tmp)?;
    }
    files::create_dir_all(&tmp)?;
    save_weights(&tmp)?;
    crate::weights_file::save_entries(&optimizer.state_entries()?, &tmp.join(OPTIMIZER_FILE))?;
    files::write(&tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
    // Swap in atomically so an interrupted save never leaves a half checkpoint behind.
    if dir.exists() {
        files::remove_dir_all(dir)?;
    }
    files::rename(&tmp, dir)
}

pub fn save_vars(path: &Path, params: &[(String, Var)]) -> Result<()> {
    let map: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    crate::weights_file::save(&map, path)?;
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
    let state = read_state(dir)?;
    let weights = weights_file(dir);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::{AdamW, AdamWConfig};

    /// A checkpoint write that fails for a full disk names the file: `trainer_state.json`
    /// is made a link to /dev/full, which answers every write with ENOSPC.
    #[test]
    fn a_full_disk_while_checkpointing_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("step-1");
        let var = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let opt = AdamW::new(vec![var.clone()], AdamWConfig::default()).unwrap();
        let params = [("w".to_string(), var)];
        let err = save(
            &dir,
            |d| {
                std::os::unix::fs::symlink("/dev/full", d.join(STATE_FILE))?;
                save_vars(&d.join(FULL_WEIGHTS), &params)
            },
            &opt,
            &TrainerState::default(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        let state = dir.with_extension("partial").join(STATE_FILE);
        assert!(
            msg.contains(&state.display().to_string()) && msg.contains("No space left"),
            "{msg}"
        );
        assert!(!dir.exists(), "no half checkpoint in place");
    }
}

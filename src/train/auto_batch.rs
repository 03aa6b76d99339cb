//! `train.auto_batch`: before a run loads anything, the largest micro-batch whose predicted
//! whole-process peak (the memory plan, loading and evaluation included) fits in the
//! memory available, with [`fit::SAFETY_MARGIN`]. Each batch of `train.batch_size` is then
//! run as `batch_size / micro` micro-batches whose gradients accumulate, so an optimiser
//! step still sees the preset's `batch_size × grad_accum` examples (the same ones, in the
//! same order) and loss curves stay comparable with the preset's. Only divisors of the
//! batch are candidates, which keeps that product exact.
//!
//! The step's gradient is the mean of the micro-batches' mean-token losses, as with
//! `grad_accum` today; it equals the whole batch's only when the micro-batches count the
//! same number of target tokens.
use anyhow::{bail, Result};

use super::setup::{arch_of, predicted_process_peak};
use super::sft_task::SftData;
use crate::config::{RunConfig, TaskKind};
use crate::model::ArchConfig;
use crate::plan::fit::{self, fit_micro_batch, with_margin, Fit, NoFit};
use crate::telemetry::available::{available_gpu, available_ram, Available};

/// `cfg` with its micro-batch set to `micro` (a divisor of the batch).
pub fn with_micro_batch(cfg: &RunConfig, micro: usize) -> RunConfig {
    let mut c = cfg.clone();
    c.train.micro_batch_size = Some(micro);
    c
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

/// How `cfg` batches: "micro-batch 2 × 4 per step = 8 examples per step (batch 4 ×
/// grad_accum 2)".
pub fn describe(cfg: &RunConfig) -> String {
    let t = &cfg.train;
    format!(
        "micro-batch {} × {} per step = {} examples per step (batch {} × grad_accum {})",
        t.micro_batch(),
        t.micro_batches_per_step(),
        t.effective_batch(),
        t.batch_size,
        t.grad_accum
    )
}

/// Chooses the micro-batch of `cfg` against `available` (RAM today; a GPU run passes
/// NVML's free device memory). The micro-batch never exceeds the one `cfg` already has
/// (a resumed run keeps a micro-batch the supervisor halved). Returns the config to run
/// (its choice recorded in `train.micro_batch_size`) and the line that says why; nothing
/// fitting is an error saying predicted against available and what to change.
pub fn choose_for(
    cfg: &RunConfig,
    arch: &ArchConfig,
    data: Option<&SftData>,
    available: &Available,
) -> Result<(RunConfig, String)> {
    let t = &cfg.train;
    let cap = t.micro_batch();
    // A micro-batch's rows follow from the data; a failure to walk them (none is
    // expected: the data was tokenised already) plans that candidate at its maximum.
    let fitted = fit_micro_batch(t.batch_size, cap, available.bytes, |m| {
        let c = with_micro_batch(cfg, m);
        predicted_process_peak(&c, arch, data)
            .or_else(|_| predicted_process_peak(&c, arch, None))
            .unwrap_or(u64::MAX)
    });
    let room = format!("{} available ({})", mib(available.bytes), available.source);
    match fitted {
        Ok(Fit {
            micro_batch,
            predicted,
        }) => {
            let chosen = with_micro_batch(cfg, micro_batch);
            let why = if micro_batch == cap {
                format!(
                    "predicted peak {} (+{:.0} % margin) fits in {room}",
                    mib(predicted),
                    fit::SAFETY_MARGIN * 100.0
                )
            } else {
                let above =
                    predicted_process_peak(&with_micro_batch(cfg, cap), arch, data).unwrap_or(0);
                format!(
                    "micro-batch {cap} would need {} with the {:.0} % margin, {room}; micro-batch {micro_batch} is predicted at {}",
                    mib(with_margin(above)),
                    fit::SAFETY_MARGIN * 100.0,
                    mib(predicted)
                )
            };
            Ok((chosen.clone(), format!("auto batch: {}: {why}", describe(&chosen))))
        }
        Err(NoFit {
            predicted,
            available: _,
        }) => bail!(
            "`{}` does not fit in memory: even micro-batch 1 is predicted at {} ({} with the {:.0} % margin) and {room}. Free memory or raise the limit, or make the run smaller: a shorter data.max_seq_len, model.gradient_checkpointing = true (with model.selective_checkpointing = false), LoRA or QLoRA ([lora], model.quant = \"nf4\"), train.optimizer = \"adamw8bit\"; train.auto_batch = false runs it anyway",
            cfg.name,
            mib(predicted),
            mib(with_margin(predicted)),
            fit::SAFETY_MARGIN * 100.0
        ),
    }
}

/// [`choose_for`] with the model's plan read from its metadata (no weights load), the rows
/// of its tokenised `data`, and the memory available now. `None` when `train.auto_batch` is off (the config runs as it is) or the
/// run has no memory plan (STS).
pub fn choose(cfg: &RunConfig, data: Option<&SftData>) -> Result<Option<(RunConfig, String)>> {
    if !cfg.train.auto_batch || cfg.task != TaskKind::Sft {
        return Ok(None);
    }
    let arch = arch_of(cfg)?;
    // A run on a GPU must fit in its free device memory; a CPU run in RAM.
    let measured = match cfg.model.device.cuda_ordinal() {
        Some(n) => available_gpu(n),
        None => available_ram(),
    };
    let available = match measured {
        Ok(a) => a,
        Err(e) => {
            let note = format!(
                "auto batch: {}: the available memory is unknown ({e:#})",
                describe(cfg)
            );
            return Ok(Some((cfg.clone(), note)));
        }
    };
    choose_for(cfg, &arch, data, &available).map(Some)
}

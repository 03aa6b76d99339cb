//! The training loop: gradient accumulation, clipping, schedule, evaluation with early
//! stopping, checkpoints with rotation, resume, and events. No printing: events go to
//! `metrics.jsonl` and to the caller's sink.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainerState};
use super::events::{EventLine, TrainEvent};
use super::optim::{
    clip_grad_norm, grad_norm, trained_params, AdamW, AdamW8bit, AdamWConfig, MasterWeights,
    Optimizer,
};
use super::schedule::LrSchedule;
use crate::config::{device_name, OptimizerKind, RunConfig};
use crate::files;
use crate::model::CausalLm;
use crate::runs::layout::RunDir;
use crate::telemetry::memory::{peak_rss_bytes, rss_bytes};

/// What one kind of training (instruction SFT of a causal LM, sentence-similarity
/// fine-tuning of an encoder) gives the loop; the loop owns accumulation, clipping, the
/// schedule, evaluation bookkeeping, checkpoints, resume and events.
pub trait TrainTask {
    type Batch;
    /// Trainable parameters by name (the optimiser's variables, in this order).
    fn params(&self) -> &[(String, Var)];
    fn total_params(&self) -> usize;
    /// Number of training examples (rows).
    fn train_len(&self) -> usize;
    /// Number of held-out examples an evaluation scores (0 without an eval set).
    fn eval_len(&self) -> usize;
    /// Micro-batches of one epoch, deterministic in (epoch, seed).
    fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<Self::Batch>>;
    /// The batches of one epoch, each cut into micro-batches of at most `micro` rows, so
    /// that an optimiser step sees the same examples whatever the micro-batch. A task that
    /// cannot cut its batches runs them whole and refuses a smaller `micro`.
    fn split_batches(
        &self,
        epoch: usize,
        batch_size: usize,
        micro: usize,
        seed: u64,
    ) -> Result<Vec<Vec<Self::Batch>>> {
        if micro < batch_size {
            bail!("this kind of run trains whole batches only: train.micro_batch_size ({micro}) must equal train.batch_size ({batch_size})");
        }
        Ok(self
            .batches(epoch, batch_size, seed)?
            .into_iter()
            .map(|b| vec![b])
            .collect())
    }
    /// Forward and backward of one micro-batch, adding into `accum` (aligned with
    /// `params`). Returns the mean loss and the number of tokens processed.
    fn forward_backward(
        &self,
        batch: &Self::Batch,
        noise_seed: u64,
        accum: &mut [Option<Tensor>],
    ) -> Result<(f64, usize)>;
    fn evaluate(&self, batch_size: usize, seed: u64) -> Result<Option<Evaluation>>;
    fn set_training(&mut self, training: bool);
    /// Writes the trainable weights to `dir` (a PEFT adapter, or safetensors by name):
    /// `trained` is [`Self::params`] with the optimiser's f32 master copies in place of
    /// the variables it keeps one of (the trained weights; `optim::trained_params`).
    fn save_weights(&mut self, dir: &Path, trained: &[(String, Var)]) -> Result<()>;
}

/// One evaluation pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub tokens: usize,
    /// Task metrics (e.g. Pearson and Spearman correlations).
    pub metrics: BTreeMap<String, f64>,
    /// What "best" and early stopping minimise (the loss, or −Spearman).
    pub score: f64,
}

/// The model side of a causal-LM run: the model with its trainable parameters.
pub struct TrainModel {
    pub model: CausalLm,
    pub params: Vec<(String, Var)>,
    pub total_params: usize,
    /// Name of the base model for adapter configs.
    pub base_name: String,
    /// Embedding noise for NEFTune (applied in training only).
    pub neftune_alpha: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run: String,
    pub technique: String,
    pub steps: usize,
    pub reason: String,
    pub elapsed_secs: f64,
    pub trainable_params: usize,
    pub total_params: usize,
    pub final_train_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub eval_losses: Vec<(usize, f64)>,
    /// Metrics of the evaluation with the best score.
    pub best_eval_metrics: BTreeMap<String, f64>,
    pub mean_tokens_per_sec: f64,
    pub peak_rss_bytes: Option<u64>,
    pub predicted_peak_bytes: Option<u64>,
    /// Rows per forward/backward pass and passes per optimiser step (absent in summaries
    /// written before micro-batches existed).
    #[serde(default)]
    pub micro_batch: Option<usize>,
    #[serde(default)]
    pub micro_batches_per_step: Option<usize>,
}

pub struct Trainer<T: TrainTask> {
    pub cfg: RunConfig,
    pub run: RunDir,
    pub task: T,
    pub predicted_peak_bytes: Option<u64>,
    /// Why the run's micro-batch is what it is (`train::auto_batch`); given, it is
    /// recorded as a `batch` event after the start event.
    pub batch_note: Option<String>,
}

fn trainable_count(params: &[(String, Var)]) -> usize {
    params.iter().map(|(_, v)| v.elem_count()).sum()
}

impl<T: TrainTask> Trainer<T> {
    fn optimizer(&self) -> Result<Box<dyn Optimizer>> {
        let vars: Vec<Var> = self.task.params().iter().map(|(_, v)| v.clone()).collect();
        let cfg = AdamWConfig {
            weight_decay: self.cfg.train.weight_decay,
            ..AdamWConfig::default()
        };
        // Variables in bf16 (the model's own tensors trained in a bf16 model) are updated
        // through f32 masters.
        let kind = self.cfg.train.optimizer;
        MasterWeights::wrap(vars, |vars| {
            Ok(match kind {
                OptimizerKind::Adamw => Box::new(AdamW::new(vars, cfg)?),
                OptimizerKind::Adamw8bit => Box::new(AdamW8bit::new(vars, cfg, 256, 4096)?),
            })
        })
    }

    /// Micro-batches per epoch and the optimiser steps the run will take.
    fn plan_steps(&self) -> Result<(usize, usize)> {
        let t = &self.cfg.train;
        let per_epoch = self.task.train_len().div_ceil(t.batch_size);
        if per_epoch == 0 {
            bail!("the training set is empty");
        }
        let steps_per_epoch = per_epoch.div_ceil(t.grad_accum);
        let total = if t.max_steps > 0 {
            t.max_steps
        } else {
            steps_per_epoch * t.epochs
        };
        Ok((per_epoch, total))
    }

    /// Runs (or resumes) training until the step budget, early stopping or `stop`.
    pub fn run(
        &mut self,
        resume: bool,
        stop: &AtomicBool,
        sink: &mut dyn FnMut(&EventLine),
    ) -> Result<Summary> {
        if resume {
            self.refuse_finished()?;
        }
        std::fs::create_dir_all(&self.run.root)
            .with_context(|| format!("{}: cannot create run directory", self.run.root.display()))?;
        let metrics_path = self.run.metrics();
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("{}: cannot open", metrics_path.display()))?;
        let mut emit = |e: TrainEvent| -> Result<()> {
            let line = EventLine::now(e);
            writeln!(metrics, "{}", serde_json::to_string(&line)?)
                .and_then(|()| metrics.flush())
                .with_context(|| format!("{}: cannot write", metrics_path.display()))?;
            sink(&line);
            Ok(())
        };
        let result = self.run_inner(resume, stop, &mut emit);
        if let Err(e) = &result {
            // The error is the run's: when the disk is full its event may not be written
            // either, and that second failure must not replace the first.
            let _ = emit(TrainEvent::Error {
                message: format!("{e:#}"),
            });
        }
        result
    }

    /// Resuming a finished run (completed, or early-stopped, under a config that asks for
    /// no more) would only rewrite its summary: refused, before anything is written.
    fn refuse_finished(&self) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(self.run.summary()) else {
            return Ok(());
        };
        let Ok(done) = serde_json::from_str::<Summary>(&text) else {
            return Ok(());
        };
        let (_, total_steps) = self.plan_steps()?;
        let patience = self.cfg.train.early_stopping_patience;
        let finished = match done.reason.as_str() {
            "completed" => done.steps >= total_steps,
            "early_stopping" => {
                let waited = checkpoint::newest_valid(&self.run)
                    .newest
                    .and_then(|(_, dir)| checkpoint::read_state(&dir).ok())
                    .map_or(0, |s| s.evals_without_improvement);
                done.steps >= total_steps || (patience > 0 && waited >= patience)
            }
            _ => false,
        };
        if finished {
            bail!(
                "{}: the run is finished ({} after {} steps, see summary.json); nothing to resume. To train further, raise train.max_steps (or train.early_stopping_patience) with --set",
                self.run.root.display(),
                done.reason,
                done.steps
            );
        }
        Ok(())
    }

    fn run_inner(
        &mut self,
        resume: bool,
        stop: &AtomicBool,
        emit: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<Summary> {
        let t = self.cfg.train.clone();
        let (per_epoch, total_steps) = self.plan_steps()?;
        let mut opt = self.optimizer()?;
        let mut state = TrainerState::default();
        if resume {
            // The newest readable checkpoint (the caller warns about newer broken ones).
            let (step, dir) = checkpoint::newest_valid(&self.run)
                .newest
                .with_context(|| {
                    format!("{}: no checkpoint to resume from", self.run.root.display())
                })?;
            let params = trained_params(self.task.params(), opt.as_ref());
            state = checkpoint::load(&dir, &params, opt.as_mut())?;
            debug_assert_eq!(state.step, step);
        }
        let schedule = LrSchedule {
            kind: t.schedule,
            base_lr: t.lr,
            warmup_steps: t.warmup_steps,
            total_steps,
            min_lr_ratio: 0.0,
        };
        let trainable = trainable_count(self.task.params());
        let device = self
            .task
            .params()
            .first()
            .map_or(candle_core::Device::Cpu, |(_, v)| v.device().clone());
        emit(TrainEvent::Start {
            run: self.run.id(),
            technique: self.cfg.technique().to_string(),
            model: self.cfg.model.spec.clone(),
            total_steps,
            trainable_params: trainable,
            total_params: self.task.total_params(),
            train_examples: self.task.train_len(),
            eval_examples: self.task.eval_len(),
            predicted_peak_bytes: self.predicted_peak_bytes,
            resumed_from_step: state.step,
            device: device_name(&device),
            dtype: self.cfg.compute_dtype(&device).as_str().to_string(),
        })?;
        if let Some(reason) = &self.batch_note {
            emit(TrainEvent::Batch {
                step: state.step,
                batch_size: t.batch_size,
                micro_batch: t.micro_batch(),
                micro_batches_per_step: t.micro_batches_per_step(),
                effective_batch: t.effective_batch(),
                reason: reason.clone(),
            })?;
        }
        let micro = t.micro_batch();
        let start = Instant::now();
        let base_elapsed = state.elapsed_secs;
        let mut reason = "completed".to_string();
        let mut accum: Vec<Option<Tensor>> = vec![None; self.task.params().len()];
        // Batches (of `t.batch_size`) and micro-batches taken in this optimiser step.
        let mut batches_in_step = 0usize;
        let mut micro_in_step = 0usize;
        let mut step_loss = 0.0;
        let mut step_tokens = 0usize;
        let mut step_start = Instant::now();
        if !resume && t.eval_on_start {
            // The untrained model's level, so the eval curve starts where training does.
            if let Some(ev) = self.task.evaluate(micro, t.seed)? {
                state.best_eval_score = Some(ev.score);
                state.best_eval_loss = Some(ev.loss);
                state.best_eval_metrics = ev.metrics.clone();
                state.eval_losses.push((0, ev.loss));
                emit(TrainEvent::Eval {
                    step: 0,
                    loss: ev.loss,
                    tokens: ev.tokens,
                    metrics: ev.metrics,
                    best: false,
                })?;
            }
        }
        self.task.set_training(true);
        'outer: while state.step < total_steps {
            let batches = self
                .task
                .split_batches(state.epoch, t.batch_size, micro, t.seed)?;
            while state.batch_in_epoch < batches.len() {
                for batch in &batches[state.batch_in_epoch] {
                    if stop.load(Ordering::SeqCst) {
                        // A stop inside gradient accumulation drops the half step (its
                        // gradient is not applied), so its batches are not consumed
                        // either: a resume replays them and takes the same step.
                        state.batch_in_epoch -= batches_in_step;
                        reason = "stopped".into();
                        break 'outer;
                    }
                    let noise_seed = t.seed ^ ((state.step as u64) << 20) ^ micro_in_step as u64;
                    let (loss, n) = self.task.forward_backward(batch, noise_seed, &mut accum)?;
                    if !loss.is_finite() {
                        bail!(
                            "loss became {loss} at step {}: stopping (lower the learning rate?)",
                            state.step + 1
                        );
                    }
                    micro_in_step += 1;
                    step_loss += loss;
                    step_tokens += n;
                }
                state.batch_in_epoch += 1;
                batches_in_step += 1;
                let epoch_done = state.batch_in_epoch == batches.len();
                if batches_in_step < t.grad_accum && !epoch_done {
                    continue;
                }
                // One optimiser step over the accumulated micro-batches.
                let avg = 1.0 / micro_in_step as f64;
                let (norm, clip) = if t.max_grad_norm > 0.0 {
                    let (norm, scale) = clip_grad_norm(&accum, t.max_grad_norm / avg)?;
                    (norm * avg, scale)
                } else {
                    (grad_norm(&accum)? * avg, 1.0)
                };
                if !norm.is_finite() {
                    bail!(
                        "gradient norm became {norm} at step {}: stopping",
                        state.step + 1
                    );
                }
                let lr = schedule.lr_at(state.step);
                opt.step(&accum, lr, avg * clip)?;
                accum.iter_mut().for_each(|a| *a = None);
                state.step += 1;
                let mean_loss = step_loss / micro_in_step as f64;
                state.last_train_loss = Some(mean_loss);
                let secs = step_start.elapsed().as_secs_f64();
                let tps = step_tokens as f64 / secs.max(1e-9);
                state.token_rate_sum += tps;
                state.token_rate_steps += 1;
                if state.step % t.log_every.max(1) == 0 || state.step == total_steps {
                    emit(TrainEvent::Step {
                        step: state.step,
                        total_steps,
                        epoch: state.epoch as f64 + state.batch_in_epoch as f64 / per_epoch as f64,
                        loss: mean_loss,
                        lr,
                        grad_norm: norm,
                        tokens: step_tokens,
                        tokens_per_sec: tps,
                        its: 1.0 / secs.max(1e-9),
                        elapsed_secs: base_elapsed + start.elapsed().as_secs_f64(),
                        rss_bytes: rss_bytes(None).ok(),
                        peak_rss_bytes: peak_rss_bytes(None).ok(),
                    })?;
                }
                micro_in_step = 0;
                batches_in_step = 0;
                step_loss = 0.0;
                step_tokens = 0;
                let last = state.step == total_steps;
                let eval_now = (t.eval_every > 0 && state.step % t.eval_every == 0)
                    || (t.eval_every == 0 && epoch_done)
                    || last;
                let mut improved = false;
                if eval_now {
                    self.task.set_training(false);
                    if let Some(ev) = self.task.evaluate(micro, t.seed)? {
                        improved = state.best_eval_score.is_none_or(|b| ev.score < b);
                        if improved {
                            state.best_eval_score = Some(ev.score);
                            state.best_eval_loss = Some(ev.loss);
                            state.evals_without_improvement = 0;
                            state.best_eval_metrics = ev.metrics.clone();
                        } else {
                            state.evals_without_improvement += 1;
                        }
                        state.eval_losses.push((state.step, ev.loss));
                        emit(TrainEvent::Eval {
                            step: state.step,
                            loss: ev.loss,
                            tokens: ev.tokens,
                            metrics: ev.metrics,
                            best: improved,
                        })?;
                    }
                    self.task.set_training(true);
                }
                state.elapsed_secs = base_elapsed + start.elapsed().as_secs_f64();
                if (t.save_every > 0 && state.step % t.save_every == 0)
                    || last
                    || (improved && t.keep_best)
                {
                    self.checkpoint(opt.as_ref(), &state, improved && t.keep_best, emit)?;
                }
                if t.early_stopping_patience > 0
                    && state.evals_without_improvement >= t.early_stopping_patience
                {
                    reason = "early_stopping".into();
                    break 'outer;
                }
                if last {
                    break 'outer;
                }
                step_start = Instant::now();
            }
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        self.task.set_training(false);
        state.elapsed_secs = base_elapsed + start.elapsed().as_secs_f64();
        // Stopped or early-stopped between checkpoints: keep the latest state. A valid
        // checkpoint of this step (a periodic one) already holds it and stays as it is.
        if state.step > 0 && checkpoint::validate(&self.run.checkpoint(state.step)).is_err() {
            self.checkpoint(opt.as_ref(), &state, false, emit)?;
        }
        self.save_final(opt.as_ref())?;
        let summary = Summary {
            run: self.run.id(),
            technique: self.cfg.technique().to_string(),
            steps: state.step,
            reason: reason.clone(),
            elapsed_secs: state.elapsed_secs,
            trainable_params: trainable,
            total_params: self.task.total_params(),
            final_train_loss: state.last_train_loss,
            best_eval_loss: state.best_eval_loss,
            eval_losses: state.eval_losses.clone(),
            best_eval_metrics: state.best_eval_metrics.clone(),
            mean_tokens_per_sec: if state.token_rate_steps > 0 {
                state.token_rate_sum / state.token_rate_steps as f64
            } else {
                0.0
            },
            peak_rss_bytes: state.peak_with_now(),
            predicted_peak_bytes: self.predicted_peak_bytes,
            micro_batch: Some(t.micro_batch()),
            micro_batches_per_step: Some(t.micro_batches_per_step()),
        };
        files::write(&self.run.summary(), serde_json::to_string_pretty(&summary)?)?;
        emit(TrainEvent::Done {
            step: state.step,
            reason,
            elapsed_secs: state.elapsed_secs,
            final_train_loss: state.last_train_loss,
            best_eval_loss: state.best_eval_loss,
            peak_rss_bytes: summary.peak_rss_bytes,
        })?;
        Ok(summary)
    }

    fn checkpoint(
        &mut self,
        opt: &dyn Optimizer,
        state: &TrainerState,
        best: bool,
        emit: &mut dyn FnMut(TrainEvent) -> Result<()>,
    ) -> Result<()> {
        let dir = self.run.checkpoint(state.step);
        let state = &TrainerState {
            peak_rss_bytes: state.peak_with_now(),
            ..state.clone()
        };
        let trained = trained_params(self.task.params(), opt);
        checkpoint::save(&dir, |d| self.task.save_weights(d, &trained), opt, state)?;
        if best {
            let best = self.run.best();
            checkpoint::save(&best, |d| self.task.save_weights(d, &trained), opt, state)?;
        }
        // Rotation: keep the newest `save_total_limit` step checkpoints.
        let all = self.run.list_checkpoints();
        let limit = self.cfg.train.save_total_limit.max(1);
        if all.len() > limit {
            for (_, old) in &all[..all.len() - limit] {
                std::fs::remove_dir_all(old)
                    .with_context(|| format!("{}: cannot remove", old.display()))?;
            }
        }
        emit(TrainEvent::Checkpoint {
            step: state.step,
            path: dir.display().to_string(),
        })
    }

    /// The run's result: `adapter/` (PEFT layout) for LoRA runs, else `model/`.
    fn save_final(&mut self, opt: &dyn Optimizer) -> Result<()> {
        let dir = if self.cfg.lora.is_some() {
            self.run.adapter()
        } else {
            self.run.model()
        };
        files::create_dir_all(&dir)?;
        let trained = trained_params(self.task.params(), opt);
        self.task.save_weights(&dir, &trained)
    }
}

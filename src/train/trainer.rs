//! The training loop: gradient accumulation, clipping, schedule, evaluation with early
//! stopping, checkpoints with rotation, resume, and events. No printing: events go to
//! `metrics.jsonl` and to the caller's sink.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Trainables, TrainerState};
use super::data::Batch;
use super::events::{EventLine, TrainEvent};
use super::optim::{clip_grad_norm, grad_norm, AdamW, AdamW8bit, AdamWConfig, Optimizer};
use super::schedule::LrSchedule;
use super::step::{eval_loss, forward_backward, EmbedNoise};
use crate::config::{OptimizerKind, RunConfig};
use crate::model::CausalLm;
use crate::runs::layout::RunDir;
use crate::telemetry::memory::{peak_rss_bytes, rss_bytes};

/// Batches for one epoch, deterministic in (epoch, seed).
pub trait BatchSource {
    /// Number of examples.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<Batch>>;
}

/// The model side of a run: a model with its trainable parameters.
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
    pub mean_tokens_per_sec: f64,
    pub peak_rss_bytes: Option<u64>,
    pub predicted_peak_bytes: Option<u64>,
}

pub struct Trainer<'a> {
    pub cfg: RunConfig,
    pub run: RunDir,
    pub tm: TrainModel,
    pub train: &'a dyn BatchSource,
    pub eval: Option<&'a dyn BatchSource>,
    pub predicted_peak_bytes: Option<u64>,
}

fn trainable_count(params: &[(String, Var)]) -> usize {
    params.iter().map(|(_, v)| v.elem_count()).sum()
}

impl<'a> Trainer<'a> {
    fn optimizer(&self) -> Result<Box<dyn Optimizer>> {
        let vars: Vec<Var> = self.tm.params.iter().map(|(_, v)| v.clone()).collect();
        let cfg = AdamWConfig {
            weight_decay: self.cfg.train.weight_decay,
            ..AdamWConfig::default()
        };
        Ok(match self.cfg.train.optimizer {
            OptimizerKind::Adamw => Box::new(AdamW::new(vars, cfg)?),
            OptimizerKind::Adamw8bit => Box::new(AdamW8bit::new(vars, cfg, 256, 4096)?),
        })
    }

    /// Micro-batches per epoch and the optimiser steps the run will take.
    fn plan_steps(&self) -> Result<(usize, usize)> {
        let t = &self.cfg.train;
        let per_epoch = self.train.len().div_ceil(t.batch_size);
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

    fn evaluate(&self) -> Result<Option<(f64, usize)>> {
        let Some(eval) = self.eval else {
            return Ok(None);
        };
        let mut sum = 0.0;
        let mut n = 0usize;
        for b in eval.batches(0, self.cfg.train.batch_size, self.cfg.train.seed)? {
            let (loss, count) = eval_loss(&self.tm.model, &b)?;
            sum += loss * count as f64;
            n += count;
        }
        Ok((n > 0).then(|| (sum / n as f64, n)))
    }

    /// Runs (or resumes) training until the step budget, early stopping or `stop`.
    pub fn run(
        &mut self,
        resume: bool,
        stop: &AtomicBool,
        sink: &mut dyn FnMut(&EventLine),
    ) -> Result<Summary> {
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
            writeln!(metrics, "{}", serde_json::to_string(&line)?)?;
            metrics.flush()?;
            sink(&line);
            Ok(())
        };
        let result = self.run_inner(resume, stop, &mut emit);
        if let Err(e) = &result {
            emit(TrainEvent::Error {
                message: format!("{e:#}"),
            })?;
        }
        result
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
        let device = self.tm.model.device().clone();
        let mut state = TrainerState::default();
        if resume {
            let (step, dir) = self.run.list_checkpoints().pop().with_context(|| {
                format!("{}: no checkpoint to resume from", self.run.root.display())
            })?;
            state = checkpoint::load(&dir, &self.tm.params, opt.as_mut(), &device)?;
            debug_assert_eq!(state.step, step);
        }
        let schedule = LrSchedule {
            kind: t.schedule,
            base_lr: t.lr,
            warmup_steps: t.warmup_steps,
            total_steps,
            min_lr_ratio: 0.0,
        };
        let trainable = trainable_count(&self.tm.params);
        emit(TrainEvent::Start {
            run: self.run.id(),
            technique: self.cfg.technique().to_string(),
            model: self.cfg.model.spec.clone(),
            total_steps,
            trainable_params: trainable,
            total_params: self.tm.total_params,
            train_examples: self.train.len(),
            eval_examples: self.eval.map_or(0, |e| e.len()),
            predicted_peak_bytes: self.predicted_peak_bytes,
            resumed_from_step: state.step,
        })?;
        let start = Instant::now();
        let base_elapsed = state.elapsed_secs;
        let mut eval_losses = Vec::new();
        let mut token_rate_sum = 0.0;
        let mut token_rate_n = 0usize;
        let mut reason = "completed".to_string();
        let mut accum: Vec<Option<Tensor>> = vec![None; self.tm.params.len()];
        let mut micro_in_step = 0usize;
        let mut step_loss = 0.0;
        let mut step_tokens = 0usize;
        let mut step_start = Instant::now();
        self.tm.model.set_training(true);
        'outer: while state.step < total_steps {
            let batches = self.train.batches(state.epoch, t.batch_size, t.seed)?;
            while state.batch_in_epoch < batches.len() {
                if stop.load(Ordering::SeqCst) {
                    reason = "stopped".into();
                    break 'outer;
                }
                let batch = &batches[state.batch_in_epoch];
                let noise_seed = t.seed ^ ((state.step as u64) << 20) ^ micro_in_step as u64;
                let alpha = self.tm.neftune_alpha;
                let noise = move |x: &Tensor| {
                    crate::train::data::neftune::neftune_noise(x, alpha, noise_seed)
                };
                let noise_ref: EmbedNoise = if alpha > 0.0 { Some(&noise) } else { None };
                let (loss, n) = forward_backward(
                    &self.tm.model,
                    &self.tm.params,
                    batch,
                    self.cfg.model.gradient_checkpointing,
                    noise_ref,
                    &mut accum,
                )?;
                if !loss.is_finite() {
                    bail!(
                        "loss became {loss} at step {}: stopping (lower the learning rate?)",
                        state.step + 1
                    );
                }
                state.batch_in_epoch += 1;
                micro_in_step += 1;
                step_loss += loss;
                // Throughput counts every processed token (prompt, response and padding).
                step_tokens += batch.input_ids.elem_count();
                let _ = n;
                let epoch_done = state.batch_in_epoch == batches.len();
                if micro_in_step < t.grad_accum && !epoch_done {
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
                token_rate_sum += tps;
                token_rate_n += 1;
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
                step_loss = 0.0;
                step_tokens = 0;
                let last = state.step == total_steps;
                let eval_now = (t.eval_every > 0 && state.step % t.eval_every == 0)
                    || (t.eval_every == 0 && epoch_done)
                    || last;
                let mut improved = false;
                if eval_now {
                    self.tm.model.set_training(false);
                    if let Some((loss, tokens)) = self.evaluate()? {
                        improved = state.best_eval_loss.is_none_or(|b| loss < b);
                        if improved {
                            state.best_eval_loss = Some(loss);
                            state.evals_without_improvement = 0;
                        } else {
                            state.evals_without_improvement += 1;
                        }
                        eval_losses.push((state.step, loss));
                        emit(TrainEvent::Eval {
                            step: state.step,
                            loss,
                            tokens,
                            best: improved,
                        })?;
                    }
                    self.tm.model.set_training(true);
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
        self.tm.model.set_training(false);
        state.elapsed_secs = base_elapsed + start.elapsed().as_secs_f64();
        if reason != "completed"
            || self.run.list_checkpoints().last().map(|c| c.0) != Some(state.step)
        {
            // Stopped or early-stopped between checkpoints: keep the latest state.
            if state.step > 0 {
                self.checkpoint(opt.as_ref(), &state, false, emit)?;
            }
        }
        self.save_final()?;
        let summary = Summary {
            run: self.run.id(),
            technique: self.cfg.technique().to_string(),
            steps: state.step,
            reason: reason.clone(),
            elapsed_secs: state.elapsed_secs,
            trainable_params: trainable,
            total_params: self.tm.total_params,
            final_train_loss: state.last_train_loss,
            best_eval_loss: state.best_eval_loss,
            eval_losses,
            mean_tokens_per_sec: if token_rate_n > 0 {
                token_rate_sum / token_rate_n as f64
            } else {
                0.0
            },
            peak_rss_bytes: peak_rss_bytes(None).ok(),
            predicted_peak_bytes: self.predicted_peak_bytes,
        };
        std::fs::write(self.run.summary(), serde_json::to_string_pretty(&summary)?)?;
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
        let lora = self.cfg.lora.clone();
        let base = self.tm.base_name.clone();
        let what = match &lora {
            Some(l) => Trainables::Lora {
                cfg: l,
                base_model: &base,
            },
            None => Trainables::Full,
        };
        checkpoint::save(&dir, &mut self.tm.model, &self.tm.params, &what, opt, state)?;
        if best {
            let best_dir = self.run.best();
            checkpoint::save(
                &best_dir,
                &mut self.tm.model,
                &self.tm.params,
                &what,
                opt,
                state,
            )?;
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

    /// The run's result: `adapter/` (PEFT layout) or `model/model.safetensors`.
    fn save_final(&mut self) -> Result<()> {
        match self.cfg.lora.clone() {
            Some(cfg) => {
                let base = self.tm.base_name.clone();
                let dir = self.run.adapter();
                crate::adapt::peft::save_adapter(
                    &dir,
                    &mut self.tm.model,
                    &cfg,
                    &base,
                    &self.tm.params,
                )
            }
            None => {
                let dir = self.run.model();
                std::fs::create_dir_all(&dir)?;
                checkpoint::save_vars(&dir.join(checkpoint::FULL_WEIGHTS), &self.tm.params)
            }
        }
    }
}

//! One run's record: its events folded into state ([`RunRecord::apply`], shared by the live
//! path and the history path), what the dashboard asks of it, and reading it back from its
//! directory.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::memory::{MemoryKind, MemoryPoint};
use super::status::{RunStatus, SupervisorRecord};
use crate::config::RunConfig;
use crate::runs::layout::RunDir;
use crate::train::events::{EventLine, TrainEvent};

/// One optimiser step as the charts need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPoint {
    pub step: usize,
    pub loss: f64,
    pub its: f64,
    pub tokens_per_sec: f64,
    pub elapsed_secs: f64,
    pub rss_bytes: Option<u64>,
}

/// Facts from the `start` event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StartInfo {
    pub technique: String,
    pub model: String,
    pub total_steps: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub train_examples: usize,
    pub predicted_peak_bytes: Option<u64>,
    pub resumed_from_step: usize,
    /// Where the worker computes (`cpu`, `cuda:0`); empty for runs of older versions.
    pub device: String,
    /// The dtype it computes in (`f32`, `bf16`); empty for runs of older versions.
    pub dtype: String,
}

/// Facts from the `done` event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DoneInfo {
    pub step: usize,
    pub reason: String,
    pub elapsed_secs: f64,
    pub final_train_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

/// Everything known about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub dir: PathBuf,
    pub config: Option<RunConfig>,
    pub status: RunStatus,
    pub start: Option<StartInfo>,
    pub steps: Vec<StepPoint>,
    /// (step, eval loss)
    pub evals: Vec<(usize, f64)>,
    /// The metrics of the latest eval besides its loss (perplexity; Pearson and Spearman of
    /// an STS run).
    pub eval_metrics: BTreeMap<String, f64>,
    pub done: Option<DoneInfo>,
    pub memory: Vec<MemoryPoint>,
    /// Seconds since the epoch of the first event (for memory timing of live runs).
    pub started_at: Option<f64>,
    /// Worker pid while it runs.
    pub pid: Option<u32>,
    /// An `error` event's message.
    pub error: Option<String>,
    /// Last lines of the worker's stderr (live runs; for a failure's detail).
    pub log_tail: Vec<String>,
    pub supervisor: Option<SupervisorRecord>,
    /// The latest `batch` event: the micro-batch chosen at launch or after an
    /// out-of-memory relaunch, and why.
    pub batch: Option<BatchNote>,
}

/// Facts from a `batch` event.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNote {
    pub step: usize,
    pub micro_batch: usize,
    pub micro_batches_per_step: usize,
    pub effective_batch: usize,
    pub reason: String,
}

impl BatchNote {
    /// "micro-batch 2 × 4 = 8 per step: REASON".
    pub fn line(&self) -> String {
        format!(
            "micro-batch {} × {} = {} per step: {}",
            self.micro_batch, self.micro_batches_per_step, self.effective_batch, self.reason
        )
    }
}

impl RunRecord {
    /// An empty record for a run directory (nothing read yet).
    pub fn new(dir: &Path) -> Self {
        Self {
            id: RunDir::new(dir).id(),
            dir: dir.to_path_buf(),
            config: None,
            status: RunStatus::Queued,
            start: None,
            steps: Vec::new(),
            evals: Vec::new(),
            eval_metrics: BTreeMap::new(),
            done: None,
            memory: Vec::new(),
            started_at: None,
            pid: None,
            error: None,
            log_tail: Vec::new(),
            supervisor: None,
            batch: None,
        }
    }

    /// Folds one event into the record (the live path and the history path share this).
    pub fn apply(&mut self, line: &EventLine) {
        match &line.event {
            TrainEvent::Start {
                technique,
                model,
                total_steps,
                trainable_params,
                total_params,
                train_examples,
                predicted_peak_bytes,
                resumed_from_step,
                device,
                dtype,
                ..
            } => {
                if self.started_at.is_none() {
                    self.started_at = Some(line.time);
                }
                self.start = Some(StartInfo {
                    technique: technique.clone(),
                    model: model.clone(),
                    total_steps: *total_steps,
                    trainable_params: *trainable_params,
                    total_params: *total_params,
                    train_examples: *train_examples,
                    predicted_peak_bytes: *predicted_peak_bytes,
                    resumed_from_step: *resumed_from_step,
                    device: device.clone(),
                    dtype: dtype.clone(),
                });
                // A resumed run starts again: the finished state of before no longer holds.
                self.done = None;
                self.error = None;
                self.status = RunStatus::Running;
            }
            TrainEvent::Step {
                step,
                loss,
                its,
                tokens_per_sec,
                elapsed_secs,
                rss_bytes,
                ..
            } => {
                // A resume replays from its checkpoint: drop points past it.
                self.steps.retain(|p| p.step < *step);
                self.steps.push(StepPoint {
                    step: *step,
                    loss: *loss,
                    its: *its,
                    tokens_per_sec: *tokens_per_sec,
                    elapsed_secs: *elapsed_secs,
                    rss_bytes: *rss_bytes,
                });
                if !matches!(self.status, RunStatus::Running) && self.done.is_none() {
                    self.status = RunStatus::Running;
                }
            }
            TrainEvent::Eval {
                step,
                loss,
                metrics,
                ..
            } => {
                self.evals.retain(|(s, _)| s < step);
                self.evals.push((*step, *loss));
                self.eval_metrics = metrics.clone();
            }
            TrainEvent::Checkpoint { .. } => {}
            TrainEvent::Done {
                step,
                reason,
                elapsed_secs,
                final_train_loss,
                best_eval_loss,
                peak_rss_bytes,
            } => {
                self.done = Some(DoneInfo {
                    step: *step,
                    reason: reason.clone(),
                    elapsed_secs: *elapsed_secs,
                    final_train_loss: *final_train_loss,
                    best_eval_loss: *best_eval_loss,
                    peak_rss_bytes: *peak_rss_bytes,
                });
                self.status = if reason == "stopped" {
                    RunStatus::Stopped
                } else {
                    RunStatus::Done(reason.clone())
                };
            }
            TrainEvent::Error { message } => {
                self.error = Some(message.clone());
                self.status = RunStatus::Failed(message.clone());
            }
            TrainEvent::Batch {
                step,
                micro_batch,
                micro_batches_per_step,
                effective_batch,
                reason,
                ..
            } => {
                self.batch = Some(BatchNote {
                    step: *step,
                    micro_batch: *micro_batch,
                    micro_batches_per_step: *micro_batches_per_step,
                    effective_batch: *effective_batch,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Adds a memory reading taken by the supervisor.
    pub fn push_memory(&mut self, p: MemoryPoint) {
        self.memory.push(p);
    }

    /// Technique: from the start event, else from the config.
    pub fn technique(&self) -> String {
        self.start
            .as_ref()
            .map(|s| s.technique.clone())
            .or_else(|| self.config.as_ref().map(|c| c.technique().to_string()))
            .unwrap_or_else(|| "?".into())
    }

    /// Model spec: from the start event, else from the config.
    pub fn model(&self) -> String {
        self.start
            .as_ref()
            .map(|s| s.model.clone())
            .or_else(|| self.config.as_ref().map(|c| c.model.spec.clone()))
            .unwrap_or_else(|| "?".into())
    }

    /// Device the run computes on ("cpu", "cuda:0").
    /// Where the run computes: what its worker said when it started (`auto` resolved),
    /// else what its config asks for.
    pub fn device(&self) -> String {
        if let Some(d) = self
            .start
            .as_ref()
            .map(|s| &s.device)
            .filter(|d| !d.is_empty())
        {
            return d.clone();
        }
        self.config
            .as_ref()
            .map(|c| c.model.device.to_string())
            .or_else(|| self.supervisor.as_ref().map(|s| s.device.clone()))
            .unwrap_or_else(|| "cpu".into())
    }

    pub fn total_steps(&self) -> Option<usize> {
        self.start.as_ref().map(|s| s.total_steps).or_else(|| {
            self.config
                .as_ref()
                .map(|c| c.train.max_steps)
                .filter(|n| *n > 0)
        })
    }

    /// The last step reached.
    pub fn current_step(&self) -> usize {
        self.done
            .as_ref()
            .map(|d| d.step)
            .into_iter()
            .chain(self.steps.last().map(|p| p.step))
            .max()
            .unwrap_or(0)
    }

    /// Fraction done, 0..=1.
    pub fn progress(&self) -> f64 {
        match self.total_steps() {
            Some(t) if t > 0 => (self.current_step() as f64 / t as f64).clamp(0.0, 1.0),
            _ => 0.0,
        }
    }

    /// Seconds left at the pace of the recent steps.
    pub fn eta_secs(&self) -> Option<f64> {
        if !matches!(self.status, RunStatus::Running) {
            return None;
        }
        let total = self.total_steps()?;
        let recent: Vec<&StepPoint> = self.steps.iter().rev().take(10).collect();
        if recent.len() < 2 {
            let p = recent.first()?;
            let per = p.elapsed_secs / p.step.max(1) as f64;
            return Some(per * total.saturating_sub(p.step) as f64);
        }
        let (a, b) = (recent[recent.len() - 1], recent[0]);
        let per = (b.elapsed_secs - a.elapsed_secs) / (b.step - a.step).max(1) as f64;
        Some(per.max(0.0) * total.saturating_sub(b.step) as f64)
    }

    /// Wall time of the training (from the done event, else the last step).
    pub fn wall_secs(&self) -> Option<f64> {
        self.done
            .as_ref()
            .map(|d| d.elapsed_secs)
            .or_else(|| self.steps.last().map(|p| p.elapsed_secs))
    }

    pub fn final_train_loss(&self) -> Option<f64> {
        self.done
            .as_ref()
            .and_then(|d| d.final_train_loss)
            .or_else(|| self.steps.last().map(|p| p.loss))
    }

    pub fn final_eval_loss(&self) -> Option<f64> {
        self.evals.last().map(|e| e.1)
    }

    /// The latest eval's headline metric besides the loss: Spearman for an STS run,
    /// perplexity for a language model.
    pub fn headline_metric(&self) -> Option<(&'static str, f64)> {
        ["spearman", "perplexity"]
            .into_iter()
            .find_map(|k| self.eval_metrics.get(k).map(|v| (k, *v)))
    }

    /// Mean tokens/s over the steps seen (the first step, which warms up, left out when
    /// there are others).
    pub fn mean_tokens_per_sec(&self) -> Option<f64> {
        let pts: Vec<f64> = self
            .steps
            .iter()
            .skip(usize::from(self.steps.len() > 2))
            .map(|p| p.tokens_per_sec)
            .collect();
        (!pts.is_empty()).then(|| pts.iter().sum::<f64>() / pts.len() as f64)
    }

    /// The memory curve: the supervisor's samples, else the worker's own RSS per step.
    pub fn memory_curve(&self) -> (MemoryKind, Vec<(f64, u64)>) {
        if !self.memory.is_empty() {
            let kind = self.memory.last().map(|m| m.kind).unwrap_or_default();
            return (
                kind,
                self.memory
                    .iter()
                    .filter(|m| m.kind == kind)
                    .map(|m| (m.secs, m.bytes))
                    .collect(),
            );
        }
        (
            MemoryKind::Ram,
            self.steps
                .iter()
                .filter_map(|p| p.rss_bytes.map(|b| (p.elapsed_secs, b)))
                .collect(),
        )
    }

    /// Measured peak: the largest of VmHWM/NVML readings and the worker's own report.
    pub fn peak_memory(&self) -> Option<u64> {
        let from_samples = self
            .memory
            .iter()
            .map(|m| m.peak.unwrap_or(m.bytes).max(m.bytes))
            .max();
        let from_done = self.done.as_ref().and_then(|d| d.peak_rss_bytes);
        let from_steps = self.steps.iter().filter_map(|p| p.rss_bytes).max();
        match from_samples.filter(|_| self.memory.iter().any(|m| m.kind.is_gpu())) {
            Some(gpu) => Some(gpu),
            None => [from_samples, from_done, from_steps]
                .into_iter()
                .flatten()
                .max(),
        }
    }

    /// What [`Self::peak_memory`] measures: `VRAM` (NVML) or `RAM` (RSS).
    pub fn memory_kind_short(&self) -> &'static str {
        if self.memory.iter().any(|m| m.kind.is_gpu()) {
            "VRAM"
        } else {
            "RAM"
        }
    }

    /// Predicted peak: the worker's start event, else the caller's prediction.
    pub fn predicted_peak(&self) -> Option<u64> {
        self.start.as_ref().and_then(|s| s.predicted_peak_bytes)
    }

    /// A LoRA adapter or full fine-tuned weights to load for inference.
    pub fn has_result(&self) -> bool {
        RunDir::new(&self.dir).has_result()
    }

    /// The run's resolved config, once the worker has written it (a config that does not
    /// parse counts as none: the record shows what it can).
    pub fn read_config(dir: &Path) -> Option<RunConfig> {
        std::fs::read_to_string(RunDir::new(dir).config())
            .ok()
            .and_then(|t| RunConfig::from_toml_str(&t).ok())
    }

    /// Reads a run directory: config, events, supervisor record and memory samples.
    pub fn load(dir: &Path) -> Self {
        let run = RunDir::new(dir);
        let mut rec = RunRecord::new(dir);
        rec.config = Self::read_config(dir);
        rec.supervisor = std::fs::read_to_string(run.supervisor_record())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Ok(text) = std::fs::read_to_string(run.metrics()) {
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Ok(line) = EventLine::parse(l) {
                    rec.apply(&line);
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(run.memory()) {
            rec.memory = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
        // Nothing runs a run from history: one left "running" or "queued" died with the ftlab
        // that supervised it (or is run by another ftlab — it then shows as interrupted here).
        if rec.status.is_live() {
            rec.status = match rec.supervisor.as_ref().and_then(|s| s.outcome.clone()) {
                Some(outcome) => outcome,
                None if rec.start.is_none() && rec.steps.is_empty() => RunStatus::Failed(
                    "interrupted before it started (no events; see worker.log)".into(),
                ),
                None => RunStatus::Failed(format!(
                    "interrupted at step {} (no done event: the worker or ftlab exited, or it runs in another process)",
                    rec.current_step()
                )),
            };
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: TrainEvent, time: f64) -> EventLine {
        EventLine {
            v: crate::train::events::SCHEMA_VERSION,
            time,
            event,
        }
    }

    fn step(step: usize, loss: f64) -> TrainEvent {
        TrainEvent::Step {
            step,
            total_steps: 10,
            epoch: 0.0,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 100,
            tokens_per_sec: 50.0,
            its: 0.5,
            elapsed_secs: step as f64 * 2.0,
            rss_bytes: Some(1000 + step as u64),
            peak_rss_bytes: None,
        }
    }

    #[test]
    fn events_fold_into_status_progress_and_eta() {
        let mut r = RunRecord::new(Path::new("/tmp/runs/20250101-000000-x"));
        assert_eq!(r.id, "20250101-000000-x");
        r.apply(&line(
            TrainEvent::Start {
                run: "x".into(),
                technique: "LoRA".into(),
                model: "m".into(),
                total_steps: 10,
                trainable_params: 5,
                total_params: 50,
                train_examples: 3,
                eval_examples: 1,
                predicted_peak_bytes: Some(4096),
                resumed_from_step: 0,
                device: "cpu".into(),
                dtype: "f32".into(),
            },
            100.0,
        ));
        assert_eq!(r.status, RunStatus::Running);
        for s in 1..=4 {
            r.apply(&line(step(s, 3.0 - s as f64 * 0.1), 100.0 + s as f64));
        }
        assert!((r.progress() - 0.4).abs() < 1e-9);
        assert!((r.eta_secs().unwrap() - 12.0).abs() < 1e-9);
        assert_eq!(r.memory_curve().1.len(), 4);
        assert_eq!(r.predicted_peak(), Some(4096));
        r.apply(&line(
            TrainEvent::Error {
                message: "boom".into(),
            },
            110.0,
        ));
        assert_eq!(r.status, RunStatus::Failed("boom".into()));
        assert_eq!(r.status.describe(), "failed: boom");
    }

    #[test]
    fn stopped_and_done_reasons() {
        let mut r = RunRecord::new(Path::new("r"));
        let done = |reason: &str| TrainEvent::Done {
            step: 3,
            reason: reason.into(),
            elapsed_secs: 1.0,
            final_train_loss: Some(1.0),
            best_eval_loss: None,
            peak_rss_bytes: None,
        };
        r.apply(&line(done("stopped"), 0.0));
        assert_eq!(r.status, RunStatus::Stopped);
        r.apply(&line(done("early_stopping"), 0.0));
        assert_eq!(r.status.describe(), "done (early stopping)");
    }
}

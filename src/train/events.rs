//! What a training run reports: one JSON object per line in `metrics.jsonl`, and the same
//! objects on the worker's stdout for the dashboard. The schema is versioned (`v`).
use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Start {
        run: String,
        technique: String,
        model: String,
        total_steps: usize,
        trainable_params: usize,
        total_params: usize,
        train_examples: usize,
        eval_examples: usize,
        predicted_peak_bytes: Option<u64>,
        resumed_from_step: usize,
        /// Where the run computes: `cpu` or `cuda:N` (empty in runs of older versions).
        #[serde(default)]
        device: String,
        /// The dtype it computes in (`f32`, `bf16`, `f16`; what it trains stays f32: LoRA
        /// factors, or f32 masters of the model's own tensors). Empty in runs of older
        /// versions.
        #[serde(default)]
        dtype: String,
    },
    Step {
        step: usize,
        total_steps: usize,
        epoch: f64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        /// Tokens processed in this step (all micro-batches, padding included).
        tokens: usize,
        tokens_per_sec: f64,
        its: f64,
        elapsed_secs: f64,
        rss_bytes: Option<u64>,
        peak_rss_bytes: Option<u64>,
    },
    Eval {
        step: usize,
        loss: f64,
        tokens: usize,
        /// Task metrics, e.g. {"pearson": 0.81, "spearman": 0.79}.
        #[serde(default)]
        metrics: std::collections::BTreeMap<String, f64>,
        best: bool,
    },
    Checkpoint {
        step: usize,
        path: String,
    },
    Done {
        step: usize,
        reason: String,
        elapsed_secs: f64,
        final_train_loss: Option<f64>,
        best_eval_loss: Option<f64>,
        peak_rss_bytes: Option<u64>,
    },
    Error {
        message: String,
    },
    /// The micro-batch the run trains with, chosen at launch from the memory plan and the
    /// memory available, or halved after an out-of-memory death (the supervisor's
    /// relaunch). The effective batch (examples per optimiser step) never changes.
    Batch {
        /// The step the run continues from.
        step: usize,
        batch_size: usize,
        micro_batch: usize,
        /// Forward/backward passes per optimiser step (grad_accum × batch_size / micro_batch).
        micro_batches_per_step: usize,
        effective_batch: usize,
        /// Why: the prediction against the memory available, or the out-of-memory death.
        reason: String,
    },
}

/// A line of `metrics.jsonl`: the event plus schema version and wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    pub v: u32,
    /// Seconds since the Unix epoch.
    pub time: f64,
    #[serde(flatten)]
    pub event: TrainEvent,
}

impl EventLine {
    pub fn now(event: TrainEvent) -> Self {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Self {
            v: SCHEMA_VERSION,
            time,
            event,
        }
    }

    /// Parses a line, rejecting other schema versions with a clear message.
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(line)?;
        let v = raw.get("v").and_then(|v| v.as_u64()).unwrap_or(0);
        if v != SCHEMA_VERSION as u64 {
            anyhow::bail!("event schema version {v} is not supported (expected {SCHEMA_VERSION})");
        }
        Ok(serde_json::from_value(raw)?)
    }
}

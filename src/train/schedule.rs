//! Learning-rate schedules with Hugging Face `transformers` semantics.
//!
//! `lr_at(step)` is `base_lr * lambda(step)` where `lambda` is the `LambdaLR` factor of
//! `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` or
//! `get_cosine_schedule_with_warmup` (`num_cycles = 0.5`). `step` counts optimizer
//! steps already taken: the first update uses `lr_at(0)`, which is 0 when there is
//! warmup (exactly as HF's Trainer).
//!
//! `min_lr_ratio` (0 = HF behaviour) makes linear and cosine decay end at
//! `min_lr_ratio * base_lr` instead of 0, as HF's `get_cosine_with_min_lr_schedule_with_warmup`
//! (`factor * (1 - min) + min`); it does not affect warmup or the constant schedule.
//! Past `total_steps` the factor stays at its final value (HF's cosine would rise again).

use serde::{Deserialize, Serialize};

// The kind is part of the run's config; the curve is computed here.
pub use crate::config::ScheduleKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    pub total_steps: usize,
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    pub fn new(kind: ScheduleKind, base_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
            min_lr_ratio: 0.0,
        }
    }

    pub fn with_min_lr_ratio(mut self, r: f64) -> Self {
        self.min_lr_ratio = r;
        self
    }

    /// The multiplier applied to `base_lr` at `step` (HF's `lr_lambda`).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_len = (self.total_steps as f64 - self.warmup_steps as f64).max(1.0);
        let since = (step - self.warmup_steps) as f64;
        let min = self.min_lr_ratio;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let f = ((self.total_steps as f64 - step as f64) / decay_len).max(0.0);
                f * (1.0 - min) + min
            }
            ScheduleKind::Cosine => {
                let progress = (since / decay_len).min(1.0);
                let f = (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0);
                f * (1.0 - min) + min
            }
        }
    }

    /// Learning rate for the optimizer step that follows `step` completed steps.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }
}

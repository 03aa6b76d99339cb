//! Text rendering of a plan (MiB table) and of a predicted-vs-measured comparison.
use std::fmt;

use super::{mib, MemoryPlan};

pub(super) fn table(p: &MemoryPlan, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let on = match p.device {
        super::PlanDevice::Cpu => "",
        super::PlanDevice::Cuda => ", GPU memory (VRAM)",
    };
    writeln!(
        f,
        "memory plan: {}{on} ({:.1}M params, {:.2}M trainable)",
        p.label,
        p.params as f64 / 1e6,
        p.trainable_params as f64 / 1e6
    )?;
    let rows = [
        ("weights", p.weights),
        ("gradients", p.gradients),
        ("optimizer", p.optimizer),
        ("activations", p.activations),
        ("overhead", p.overhead),
    ];
    for (name, b) in rows {
        writeln!(f, "  {name:<12} {:>10.1} MiB", mib(b))?;
    }
    writeln!(f, "  {:<12} {:>10.1} MiB", "total", mib(p.total))?;
    write!(f, "  {:<12} {:>10.1} MiB", "load peak", mib(p.load_peak))
}

/// Predicted against measured peak memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub predicted: u64,
    pub measured: u64,
}

impl Comparison {
    pub fn new(predicted: u64, measured: u64) -> Self {
        Self {
            predicted,
            measured,
        }
    }

    /// (predicted − measured) / measured: positive when the plan overestimates.
    pub fn relative_error(&self) -> f64 {
        if self.measured == 0 {
            return f64::INFINITY;
        }
        (self.predicted as f64 - self.measured as f64) / self.measured as f64
    }

    pub fn within(&self, tolerance: f64) -> bool {
        self.relative_error().abs() <= tolerance
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "predicted {:.1} MiB, measured {:.1} MiB ({:+.1} %)",
            mib(self.predicted),
            mib(self.measured),
            100.0 * self.relative_error()
        )
    }
}

//! Memory readings of a run, labelled with what they measured.
use serde::{Deserialize, Serialize};

/// What a memory reading measured, so that charts label it honestly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// Resident set of the worker process (`/proc/<pid>/status` VmRSS).
    #[default]
    Ram,
    /// The worker's own GPU memory through NVML.
    GpuProcess,
    /// The whole GPU's used memory (NVML did not list the worker's pid).
    GpuDevice,
}

impl MemoryKind {
    pub fn label(&self) -> &'static str {
        match self {
            MemoryKind::Ram => "process RAM (RSS)",
            MemoryKind::GpuProcess => "GPU memory, this run (NVML)",
            MemoryKind::GpuDevice => "GPU memory, all processes (NVML)",
        }
    }

    pub fn is_gpu(&self) -> bool {
        !matches!(self, MemoryKind::Ram)
    }
}

/// One memory reading, `secs` after the run started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemoryPoint {
    pub secs: f64,
    pub bytes: u64,
    #[serde(default)]
    pub kind: MemoryKind,
    /// Peak so far where the source keeps one (VmHWM).
    #[serde(default)]
    pub peak: Option<u64>,
    /// Device capacity for GPU readings.
    #[serde(default)]
    pub capacity: Option<u64>,
    /// The device's used memory, all processes, for GPU readings.
    #[serde(default)]
    pub device_used: Option<u64>,
}

//! Measurement: process memory (`/proc` RSS and its high-water mark), GPU memory through
//! NVML when a driver is present, and throughput meters.
//!
//! A missing GPU is a normal state, not an error: [`GpuProbe::init`] returns
//! [`GpuUnavailable`] ("no GPU: showing RAM") and [`sample`] falls back to process RAM.
pub mod available;
pub mod gpu_peak;
pub mod memory;
pub mod nvml;
pub mod throughput;

pub use memory::{peak_rss_bytes, reset_peak, reset_peak_of, rss_bytes};
pub use nvml::{GpuMemory, GpuProbe, GpuUnavailable};
pub use throughput::ThroughputMeter;

/// One reading of a run's memory, saying honestly what was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySample {
    /// Device memory from NVML: `used`/`total` of the whole device; `process` is the
    /// process's own share when NVML reports it.
    Gpu {
        used: u64,
        total: u64,
        process: Option<u64>,
    },
    /// Process RAM from `/proc/<pid>/status`: VmRSS and VmHWM (peak since start or reset).
    Ram { rss: u64, peak: u64 },
    /// Neither could be read (not Linux, process gone); the reason says why.
    Unavailable(String),
}

impl MemorySample {
    /// Which measurement this is: "GPU memory (NVML)" or "process RAM (RSS)".
    pub fn label(&self) -> &'static str {
        match self {
            MemorySample::Gpu { .. } => "GPU memory (NVML)",
            MemorySample::Ram { .. } => "process RAM (RSS)",
            MemorySample::Unavailable(_) => "memory unavailable",
        }
    }

    /// What the headline figure covers, for a detail line.
    pub fn scope(&self) -> &'static str {
        match self {
            MemorySample::Gpu {
                process: Some(_), ..
            } => "this process on the GPU",
            MemorySample::Gpu { process: None, .. } => "whole GPU, all processes",
            MemorySample::Ram { .. } => "resident set of the process",
            MemorySample::Unavailable(_) => "nothing measured",
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, MemorySample::Gpu { .. })
    }

    /// The headline bytes: the process's GPU memory (else the device's used memory), or RSS.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            MemorySample::Gpu { used, process, .. } => Some(process.unwrap_or(*used)),
            MemorySample::Ram { rss, .. } => Some(*rss),
            MemorySample::Unavailable(_) => None,
        }
    }

    /// Peak bytes where the source keeps one (VmHWM for RAM; NVML has no peak).
    pub fn peak(&self) -> Option<u64> {
        match self {
            MemorySample::Ram { peak, .. } => Some(*peak),
            _ => None,
        }
    }

    /// Capacity the headline is measured against (device total for GPU).
    pub fn capacity(&self) -> Option<u64> {
        match self {
            MemorySample::Gpu { total, .. } => Some(*total),
            _ => None,
        }
    }
}

/// Samples the memory of `pid` (this process for `None`).
///
/// With a `gpu` probe the reading is the GPU's (the process's share when NVML lists the
/// pid, else the whole device); pass a probe only for runs that compute on that GPU — a
/// CPU run on a GPU machine should pass `None` so that its RAM is what is shown. A failed
/// GPU query falls back to RAM, and a failed RAM read gives `Unavailable`.
pub fn sample(pid: Option<u32>, gpu: Option<&dyn GpuMemory>) -> MemorySample {
    if let Some(probe) = gpu {
        if let Ok((used, total)) = probe.device_memory() {
            let own = pid.unwrap_or_else(std::process::id);
            return MemorySample::Gpu {
                used,
                total,
                process: probe.process_memory(own),
            };
        }
    }
    match (rss_bytes(pid), peak_rss_bytes(pid)) {
        (Ok(rss), Ok(peak)) => MemorySample::Ram {
            rss,
            peak: peak.max(rss),
        },
        (Err(e), _) | (_, Err(e)) => MemorySample::Unavailable(format!("{e:#}")),
    }
}

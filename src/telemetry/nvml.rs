//! GPU memory through NVML (the library behind `nvidia-smi`), loaded at run time.
//!
//! On machines without an NVIDIA driver — the normal case on CPU machines and CI —
//! `libnvidia-ml.so.1` cannot be opened and [`GpuProbe::init`] returns a
//! [`GpuUnavailable`] value: the UI says "no GPU: showing RAM" and falls back to
//! process RAM. Nothing here panics or aborts for a missing GPU.
use std::fmt;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

/// Why GPU telemetry is not available (no driver, no device, a failed query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuUnavailable {
    /// What NVML said, for logs and a detail line.
    pub reason: String,
}

impl GpuUnavailable {
    /// The short line the UI shows in place of GPU memory.
    pub const MESSAGE: &'static str = "no GPU: showing RAM";

    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    pub fn message(&self) -> &'static str {
        Self::MESSAGE
    }
}

impl fmt::Display for GpuUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", Self::MESSAGE, self.reason)
    }
}

impl std::error::Error for GpuUnavailable {}

fn describe(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) => {
            format!("NVIDIA driver library not found: {e}")
        }
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not running".to_string(),
        NvmlError::NoPermission => "no permission to query the NVIDIA driver".to_string(),
        other => other.to_string(),
    }
}

/// Where GPU memory readings come from: NVML ([`GpuProbe`]), or a stand-in in tests.
pub trait GpuMemory: Send + Sync {
    /// (used, total) bytes of device memory, all processes together.
    fn device_memory(&self) -> Result<(u64, u64), GpuUnavailable>;
    /// Device memory held by process `pid`, when the driver reports it.
    fn process_memory(&self, pid: u32) -> Option<u64>;
}

impl GpuMemory for GpuProbe {
    fn device_memory(&self) -> Result<(u64, u64), GpuUnavailable> {
        GpuProbe::device_memory(self)
    }
    fn process_memory(&self, pid: u32) -> Option<u64> {
        GpuProbe::process_memory(self, pid)
    }
}

/// One NVIDIA device, queried through NVML.
pub struct GpuProbe {
    nvml: Nvml,
    index: u32,
    name: String,
}

impl fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuProbe")
            .field("index", &self.index)
            .field("name", &self.name)
            .finish()
    }
}

impl GpuProbe {
    /// Device 0. No driver or no device is an `Err(GpuUnavailable)` value, never a panic.
    pub fn init() -> Result<Self, GpuUnavailable> {
        Self::init_index(0)
    }

    /// The device CUDA calls `ordinal` (`cuda:N`): NVML numbers every GPU of the machine
    /// (as `nvidia-smi`), CUDA only those `CUDA_VISIBLE_DEVICES` lists, in its order (by
    /// index or by UUID). Without it the two agree on a machine whose GPUs CUDA orders as
    /// NVML does (one GPU, or `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    pub fn for_cuda_ordinal(ordinal: usize) -> Result<Self, GpuUnavailable> {
        match visible_device(
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
            ordinal,
        ) {
            Visible::Index(i) => Self::init_index(i),
            Visible::Uuid(uuid) => {
                let nvml = Nvml::init().map_err(|e| GpuUnavailable::new(describe(&e)))?;
                let index = nvml
                    .device_by_uuid(uuid.as_str())
                    .and_then(|d| d.index())
                    .map_err(|e| GpuUnavailable::new(format!("GPU {uuid}: {}", describe(&e))))?;
                drop(nvml);
                Self::init_index(index)
            }
            Visible::None => Err(GpuUnavailable::new(format!(
                "CUDA_VISIBLE_DEVICES lists no device {ordinal}"
            ))),
        }
    }

    /// Device `index` (as numbered by NVML, like `nvidia-smi`).
    pub fn init_index(index: u32) -> Result<Self, GpuUnavailable> {
        // Loading a shared library can in principle panic inside a binding; keep that a value.
        let nvml = std::panic::catch_unwind(Nvml::init)
            .map_err(|_| GpuUnavailable::new("NVML initialisation panicked"))?
            .map_err(|e| GpuUnavailable::new(describe(&e)))?;
        let count = nvml
            .device_count()
            .map_err(|e| GpuUnavailable::new(describe(&e)))?;
        if index >= count {
            return Err(GpuUnavailable::new(format!(
                "GPU {index} requested, NVML reports {count} device(s)"
            )));
        }
        let name = nvml
            .device_by_index(index)
            .and_then(|d| d.name())
            .map_err(|e| GpuUnavailable::new(describe(&e)))?;
        Ok(Self { nvml, index, name })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device's marketing name ("NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (used, total) bytes of device memory, all processes together.
    pub fn device_memory(&self) -> Result<(u64, u64), GpuUnavailable> {
        let dev = self
            .nvml
            .device_by_index(self.index)
            .map_err(|e| GpuUnavailable::new(describe(&e)))?;
        let info = dev
            .memory_info()
            .map_err(|e| GpuUnavailable::new(describe(&e)))?;
        Ok((info.used, info.total))
    }

    /// Device memory used by process `pid` (compute and graphics contexts summed), or
    /// `None` when it holds none, the driver does not report it, or the pid is not visible:
    /// NVML reports host pids, so inside a container with its own pid namespace a worker's
    /// pid may not match — callers then fall back to [`GpuProbe::device_memory`].
    pub fn process_memory(&self, pid: u32) -> Option<u64> {
        let dev = self.nvml.device_by_index(self.index).ok()?;
        let mut found = false;
        let mut total = 0u64;
        let lists = [
            dev.running_compute_processes().unwrap_or_default(),
            dev.running_graphics_processes().unwrap_or_default(),
        ];
        for p in lists.iter().flatten().filter(|p| p.pid == pid) {
            if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                // A process with both kinds of context is listed twice with the same figure.
                if !found || bytes > total {
                    total = bytes;
                }
                found = true;
            }
        }
        found.then_some(total)
    }
}
/// Which NVML device CUDA's device `ordinal` is, by `CUDA_VISIBLE_DEVICES`.
#[derive(Debug, PartialEq, Eq)]
enum Visible {
    Index(u32),
    Uuid(String),
    None,
}

fn visible_device(list: Option<&str>, ordinal: usize) -> Visible {
    let Some(list) = list.map(str::trim).filter(|l| !l.is_empty()) else {
        return Visible::Index(ordinal as u32);
    };
    match list.split(',').map(str::trim).nth(ordinal) {
        Some(e) => match e.parse::<u32>() {
            Ok(i) => Visible::Index(i),
            Err(_) => Visible::Uuid(e.to_string()),
        },
        None => Visible::None,
    }
}

#[cfg(test)]
mod visible_tests {
    use super::*;

    #[test]
    fn cuda_ordinals_map_to_nvml_devices_through_cuda_visible_devices() {
        assert_eq!(visible_device(None, 1), Visible::Index(1));
        assert_eq!(visible_device(Some(" "), 0), Visible::Index(0));
        assert_eq!(visible_device(Some("2,3"), 0), Visible::Index(2));
        assert_eq!(visible_device(Some("2, 3"), 1), Visible::Index(3));
        assert_eq!(visible_device(Some("2,3"), 2), Visible::None);
        assert_eq!(
            visible_device(Some("GPU-8f6c1a2b"), 0),
            Visible::Uuid("GPU-8f6c1a2b".into())
        );
    }
}

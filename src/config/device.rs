//! `model.device` and `--device`: the one device choice of a run or a command (`auto` |
//! `cpu` | `cuda` | `cuda:N`), resolved once when it starts ([`DeviceChoice::resolve`]) and
//! passed down; nothing below picks a device by itself.
//!
//! `auto` (the default) is the first CUDA device when this binary was built with CUDA
//! (`--features cuda`) and a device answers, else the CPU. `cuda` on a binary built
//! without CUDA fails at once, before anything loads, with the command that builds one.
//! The choice is a plain string in TOML (serde goes through `FromStr` / `Display`), so
//! `to_toml` writes the value back as it was spelled (`cuda` stays `cuda`).
use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use candle_core::Device;

/// The command that builds ftlab with CUDA, for error messages.
pub const CUDA_BUILD_HINT: &str =
    "cargo install --path . --features cuda (needs the CUDA toolkit; \
     scripts/cuda/build.sh installs one from PyPI and builds without a GPU)";

/// Where a run computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA device when there is one (and the binary has CUDA), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// `cuda` (`None`: the default GPU, ordinal 0) or `cuda:N`.
    Cuda(Option<usize>),
}

impl DeviceChoice {
    /// The spellings a config may use, for error messages.
    pub const ALLOWED: &'static str = "auto, cpu, cuda or cuda:N";

    /// The supervisor's queue of runs that share this device: `cuda` and `cuda:0` are one
    /// queue, and so is `auto` where it means the GPU (a CUDA build).
    pub fn queue_key(self) -> String {
        match self.cuda_ordinal() {
            Some(n) => format!("cuda:{n}"),
            None => "cpu".to_string(),
        }
    }

    /// The CUDA device this choice can mean with this binary: `cuda:N`, and device 0 for
    /// `auto` in a CUDA build; `None` for the CPU.
    pub fn cuda_ordinal(self) -> Option<usize> {
        match self {
            Self::Cuda(n) => Some(n.unwrap_or(0)),
            Self::Auto if cuda_built() => Some(0),
            Self::Auto | Self::Cpu => None,
        }
    }

    /// Whether this choice can mean a GPU (so its memory is GPU memory).
    pub fn may_be_gpu(self) -> bool {
        self.cuda_ordinal().is_some()
    }

    /// Refuses at once what this binary cannot do (`cuda` without CUDA compiled in),
    /// before anything loads.
    pub fn check_available(self) -> Result<()> {
        if let Self::Cuda(_) = self {
            if !cuda_built() {
                bail!(
                    "device `{self}`: this ftlab was built without CUDA; build it with: {CUDA_BUILD_HINT}"
                );
            }
        }
        Ok(())
    }

    /// The candle device: `cuda[:N]` must answer (its error says why not); `auto` takes
    /// CUDA device 0 when it answers and the CPU otherwise.
    pub fn resolve(self) -> Result<Device> {
        self.check_available()?;
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let n = n.unwrap_or(0);
                Device::new_cuda(n).map_err(|e| {
                    // candle's error text carries a backtrace after its first line.
                    let e = e.to_string();
                    let why = e.lines().next().unwrap_or_default();
                    anyhow!(
                        "device `cuda:{n}` cannot be used: {why} (is an NVIDIA driver installed and the GPU visible to `nvidia-smi`? device = \"cpu\" computes on the CPU)"
                    )
                })
            }
            Self::Auto if cuda_built() => Ok(Device::new_cuda(0).unwrap_or(Device::Cpu)),
            Self::Auto => Ok(Device::Cpu),
        }
    }
}

/// Whether this binary was built with CUDA.
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// How a resolved device is named in events, logs and the dashboard: `cpu`, `cuda:N`.
pub fn device_name(dev: &Device) -> String {
    match dev {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match dev.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_string(),
        },
        Device::Metal(_) => "metal".to_string(),
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    /// Case-insensitive; `gpu` is read as `cuda` (as the supervisor always did).
    fn from_str(s: &str) -> Result<Self> {
        let d = s.trim().to_ascii_lowercase();
        let unknown = || anyhow!("unknown device `{s}`, expected {}", Self::ALLOWED);
        match d.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(None)),
            _ => match d.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(|n| Self::Cuda(Some(n)))
                    .map_err(|_| unknown()),
                None => Err(unknown()),
            },
        }
    }
}

super::serde_as_string!(DeviceChoice);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_and_prints_back() {
        for s in ["auto", "cpu", "cuda", "cuda:0", "cuda:3"] {
            let d: DeviceChoice = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(" CPU ".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "gpu".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(None)
        );
    }

    #[test]
    fn unknown_devices_name_the_allowed_values() {
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", ""] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains(DeviceChoice::ALLOWED), "{bad}: {err}");
        }
    }

    /// (`cuda` → `cuda:0` and `cpu` are checked in the supervisor's tests.)
    #[test]
    fn cuda_and_cuda_0_share_a_queue() {
        let key = |s: &str| s.parse::<DeviceChoice>().unwrap().queue_key();
        assert_eq!(key("cuda:0"), key("cuda"));
        let auto = if cuda_built() { "cuda:0" } else { "cpu" };
        assert_eq!(key("auto"), auto);
    }

    #[test]
    fn auto_and_cpu_resolve_and_a_cpu_build_refuses_cuda_with_the_build_command() {
        assert!(DeviceChoice::Cpu.resolve().unwrap().is_cpu());
        assert_eq!(DeviceChoice::default(), DeviceChoice::Auto);
        if cuda_built() {
            return;
        }
        assert!(DeviceChoice::Auto.resolve().unwrap().is_cpu());
        for d in ["cuda", "cuda:1", "gpu"] {
            let err = d
                .parse::<DeviceChoice>()
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("built without CUDA") && err.contains("--features cuda"),
                "{err}"
            );
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }
}

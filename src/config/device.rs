//! `model.device`: the one device choice of a run (`auto` | `cpu` | `cuda` | `cuda:N`).
//!
//! Today every run computes on the CPU and the choice only picks the supervisor's queue
//! ([`DeviceChoice::queue_key`]). It is a plain string in TOML (serde goes through
//! `FromStr` / `Display`), so presets read as before and `to_toml` writes the value back as
//! it was spelled (`cuda` stays `cuda`, it does not become `cuda:0`).
use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, Result};

/// Where a run computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// Whatever the machine offers (resolved when the run starts).
    Auto,
    #[default]
    Cpu,
    /// `cuda` (`None`: the default GPU, ordinal 0) or `cuda:N`.
    Cuda(Option<usize>),
}

impl DeviceChoice {
    /// The spellings a config may use, for error messages.
    pub const ALLOWED: &'static str = "auto, cpu, cuda or cuda:N";

    /// The supervisor's queue of runs that share this device: `cuda` and `cuda:0` are one
    /// queue.
    pub fn queue_key(self) -> String {
        match self {
            Self::Cuda(n) => format!("cuda:{}", n.unwrap_or(0)),
            other => other.to_string(),
        }
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
        assert_eq!(key("auto"), "auto");
    }
}

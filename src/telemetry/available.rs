//! How much memory a new run may use, and whether the OOM killer has struck: RAM from
//! `/proc/meminfo` (MemAvailable) and the memory cgroup the process lives in (v2
//! `memory.max − memory.current`, v1 `memory.limit_in_bytes − memory.usage_in_bytes`, the
//! tightest level from the process's own cgroup up to the root).
//!
//! `FTLAB_MEMORY_LIMIT` (bytes, or with a K/M/G suffix in binary units: `900M`, `1.5G`)
//! replaces the measurement: a test or a user who wants a run to stay under a limit the
//! machine does not enforce sets it, for RAM ([`available_ram`]) and GPU memory
//! ([`available_gpu`]) alike.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// The environment variable that sets the available bytes instead of measuring them.
pub const MEMORY_LIMIT_ENV: &str = "FTLAB_MEMORY_LIMIT";

/// Memory a run may use, and where the figure comes from (for the message that quotes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// "MemAvailable", "cgroup memory.max − memory.current", "FTLAB_MEMORY_LIMIT".
    pub source: String,
}

/// RAM available to a new run: `FTLAB_MEMORY_LIMIT` when set, else the smaller of
/// MemAvailable and the cgroup's headroom. An unreadable source is skipped; none at all
/// (not Linux) is an error.
pub fn available_ram() -> Result<Available> {
    if let Some(limit) = limit_from_env()? {
        return Ok(limit);
    }
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| super::memory::parse_status_kb(&t, "MemAvailable"))
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable".into(),
        });
    let cgroup = cgroup_headroom();
    match (mem, cgroup) {
        (Some(m), Some(c)) => Ok(if c.bytes < m.bytes { c } else { m }),
        (Some(a), None) | (None, Some(a)) => Ok(a),
        (None, None) => bail!("cannot tell the available memory: no /proc/meminfo and no memory cgroup (set {MEMORY_LIMIT_ENV})"),
    }
}

/// Device memory available to a new run on `cuda:ordinal`: `FTLAB_MEMORY_LIMIT` when set,
/// else NVML's free memory of the device (total − used, all processes).
pub fn available_gpu(ordinal: usize) -> Result<Available> {
    if let Some(limit) = limit_from_env()? {
        return Ok(limit);
    }
    let probe = super::GpuProbe::for_cuda_ordinal(ordinal).map_err(|e| anyhow!("{}", e.reason))?;
    let (used, total) = probe.device_memory().map_err(|e| anyhow!("{}", e.reason))?;
    Ok(Available {
        bytes: total.saturating_sub(used),
        source: format!("free memory of cuda:{ordinal}, {} (NVML)", probe.name()),
    })
}

/// `FTLAB_MEMORY_LIMIT`, when set, in place of a measurement.
fn limit_from_env() -> Result<Option<Available>> {
    let Ok(v) = std::env::var(MEMORY_LIMIT_ENV) else {
        return Ok(None);
    };
    let bytes = parse_bytes(&v).map_err(|e| anyhow!("{MEMORY_LIMIT_ENV}={v}: {e}"))?;
    Ok(Some(Available {
        bytes,
        source: MEMORY_LIMIT_ENV.into(),
    }))
}

/// `123`, `900M`, `1.5G`, `512KiB`: bytes in binary units.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("expected a size such as 900M, 2G or 1073741824"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("unknown unit `{u}` (use K, M, G or T)"),
    };
    Ok((n * scale as f64) as u64)
}

/// Which cgroup hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupVersion {
    V1,
    V2,
}

/// The memory cgroup directories of this process, its own first, up to the mount's root.
fn cgroup_levels() -> Option<(CgroupVersion, Vec<PathBuf>)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (version, rel, mount) = memory_cgroup_entry(&text)?;
    let mount = Path::new(mount);
    // In a container the recorded path may lie outside the namespace's mount: walk up
    // from the deepest level that exists.
    let mut levels = Vec::new();
    let mut rel = Path::new(rel.trim_start_matches('/')).to_path_buf();
    loop {
        let dir = mount.join(&rel);
        if dir.is_dir() {
            levels.push(dir);
        }
        if !rel.pop() {
            break;
        }
    }
    (!levels.is_empty()).then_some((version, levels))
}

/// The memory controller's line of `/proc/self/cgroup`: (version, path, mount point).
fn memory_cgroup_entry(text: &str) -> Option<(CgroupVersion, &str, &'static str)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some((CgroupVersion::V1, path, "/sys/fs/cgroup/memory"));
        }
        if controllers.is_empty() {
            v2 = Some((CgroupVersion::V2, path, "/sys/fs/cgroup"));
        }
    }
    v2.filter(|_| Path::new("/sys/fs/cgroup/cgroup.controllers").exists())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The tightest limit minus usage over the cgroup levels; `None` without a limit.
fn cgroup_headroom() -> Option<Available> {
    let (version, levels) = cgroup_levels()?;
    let (limit_file, usage_file, source) = match version {
        CgroupVersion::V2 => (
            "memory.max",
            "memory.current",
            "cgroup memory.max − memory.current",
        ),
        CgroupVersion::V1 => (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "cgroup memory.limit_in_bytes − memory.usage_in_bytes",
        ),
    };
    levels
        .iter()
        .filter_map(|dir| {
            // v2 says "max" when unlimited (no number); v1 a huge page-aligned number.
            let limit = read_u64(&dir.join(limit_file)).filter(|l| *l < 1 << 60)?;
            let usage = read_u64(&dir.join(usage_file)).unwrap_or(0);
            Some(limit.saturating_sub(usage))
        })
        .min()
        .map(|bytes| Available {
            bytes,
            source: source.into(),
        })
}

/// `key N` from a flat key-value file (memory.events, memory.oom_control, /proc/vmstat).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Processes the OOM killer has ended so far: the kernel's count (`/proc/vmstat`) plus the
/// count of every cgroup level of this process (v2 `memory.events`, v1
/// `memory.oom_control`). Compared before and after a worker's death, a rise says the OOM
/// killer was at work; `None` when nothing can be read.
pub fn oom_kill_count() -> Option<u64> {
    let global = std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|t| counter(&t, "oom_kill"));
    let cgroups = cgroup_levels().map(|(version, levels)| {
        let file = match version {
            CgroupVersion::V2 => "memory.events",
            CgroupVersion::V1 => "memory.oom_control",
        };
        levels
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .filter_map(|t| counter(&t, "oom_kill"))
            .sum::<u64>()
    });
    match (global, cgroups) {
        (None, None) => None,
        (g, c) => Some(g.unwrap_or(0) + c.unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_bytes("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("900M").unwrap(), 900 << 20);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("512 KiB").unwrap(), 512 << 10);
        assert!(parse_bytes("lots")
            .unwrap_err()
            .to_string()
            .contains("900M"));
        assert!(parse_bytes("3X").unwrap_err().to_string().contains("unit"));
    }

    #[test]
    fn the_memory_controller_line_is_found_in_v1_and_v2_files() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let (v, path, mount) = memory_cgroup_entry(v1).unwrap();
        assert_eq!(
            (v, path, mount),
            (
                CgroupVersion::V1,
                "/process_api/abc",
                "/sys/fs/cgroup/memory"
            )
        );
        assert_eq!(
            counter("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(counter("low 0\noom 2\noom_kill 1\n", "oom"), Some(2));
    }

    #[test]
    fn this_machine_reports_some_available_memory() {
        if std::env::var_os(MEMORY_LIMIT_ENV).is_some() {
            return;
        }
        let a = available_ram().unwrap();
        assert!(a.bytes > 16 << 20, "{a:?}");
    }
}

//! Process memory from `/proc/<pid>/status`: resident set (VmRSS) and its high-water mark
//! (VmHWM), and a reset of the high-water mark so a peak can be measured per phase.
//!
//! Everything here is Linux-only by nature; elsewhere (or with /proc unreadable) the
//! functions return an error naming the file, and callers fall back to showing nothing.
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

fn status_path(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/status")),
        None => PathBuf::from("/proc/self/status"),
    }
}

/// Parses one `Key:   1234 kB` line of a `/proc/<pid>/status` text into bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let scale = match parts.next() {
            Some("kB") | Some("KB") | Some("kb") => 1024,
            Some("mB") | Some("MB") => 1024 * 1024,
            None => 1,
            Some(_) => return None,
        };
        Some(value * scale)
    })
}

fn read_status_field(pid: Option<u32>, key: &str) -> Result<u64> {
    let path = status_path(pid);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read process memory (needs Linux /proc)",
            path.display()
        )
    })?;
    parse_status_kb(&text, key).ok_or_else(|| anyhow!("{}: no `{key}` line", path.display()))
}

/// Resident set size (VmRSS) in bytes of `pid`, or of this process for `None`.
pub fn rss_bytes(pid: Option<u32>) -> Result<u64> {
    read_status_field(pid, "VmRSS")
}

/// Peak resident set size (VmHWM) in bytes since the process started or since the last
/// [`reset_peak`].
pub fn peak_rss_bytes(pid: Option<u32>) -> Result<u64> {
    read_status_field(pid, "VmHWM")
}

/// Resets this process's VmHWM to its current RSS (writes `5` to `/proc/self/clear_refs`).
pub fn reset_peak() -> Result<()> {
    reset_peak_of(None)
}

/// Resets the VmHWM of `pid` (or of this process). Writing another process's `clear_refs`
/// needs the same permissions as ptrace (same user, usually fine for a child).
pub fn reset_peak_of(pid: Option<u32>) -> Result<()> {
    let path = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/clear_refs")),
        None => PathBuf::from("/proc/self/clear_refs"),
    };
    std::fs::write(&path, b"5").with_context(|| {
        format!(
            "{}: cannot reset the peak-memory mark (needs Linux /proc)",
            path.display()
        )
    })
}

/// Returns the heap memory that the allocator keeps after frees to the operating system
/// (glibc's `malloc_trim`). Loading a model frees large f32 buffers (GGUF dequantisation,
/// the dense copies a 4-bit quantisation replaces); without this they stay resident and
/// count against the run's peak. A no-op on other platforms. Returns whether memory was
/// released.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own heap bookkeeping; it takes no pointers
        // from us and is safe to call at any time from any thread.
        unsafe { malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// One heap for every thread of the process (glibc's `M_ARENA_MAX` = 1) instead of one
/// per thread that allocates. Work moves between the CPU pool's threads (`model::pool`),
/// and with a heap per thread the memory one thread freed was not reused by the next:
/// a full fine-tuning step of SmolLM2 peaked 150 MiB higher. Call it first in `main`,
/// before any thread starts. A no-op elsewhere; returns whether the allocator took it.
pub fn one_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters; it takes no pointers.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// From now on, blocks up to 32 MiB that training frees stay in the allocator for the
/// next allocation instead of going back to the operating system (glibc's `mallopt`:
/// a fixed mmap threshold of 32 MiB, its maximum, and no trimming of the heap's top; a
/// no-op elsewhere). A step allocates and frees the same tensors every time; returned to
/// the system, each was faulted in again as fresh zeroed pages: at 1 × 512 tokens a
/// SmolLM2 LoRA step took 3.1 s instead of 2.4. Larger blocks (a 49k- or 262k-token
/// vocabulary's logits and embedding gradients) are still mapped and unmapped each time:
/// kept, they left holes that raised Gemma 3's peak by 13 %. The peak is otherwise the
/// step's own; the resident size no longer shrinks between steps. Call it once the model
/// is loaded (after [`release_free_heap`]), in a process that trains. Returns whether the
/// allocator took the settings.
pub fn keep_freed_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation parameters; it takes no pointers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tftlab\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
        // A key that is a prefix of another must not match it.
        assert_eq!(parse_status_kb("VmRSSx: 5 kB\n", "VmRSS"), None);
    }

    #[test]
    fn missing_process_is_an_error_naming_the_file() {
        let err = rss_bytes(Some(u32::MAX)).unwrap_err().to_string();
        assert!(err.contains(&format!("/proc/{}/status", u32::MAX)), "{err}");
    }
}

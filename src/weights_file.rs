//! Writing safetensors files. candle saves through safetensors' temporary file, which is
//! created mode 0600 and renamed into place; a weights file should be readable as every
//! other file ftlab writes is (0666 less the umask, e.g. 0644), so that a run or a merged
//! model can be shared or served by another user.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;

/// Saves `tensors` to `path` (as `candle_core::safetensors::save`), with the mode a newly
/// created file gets.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask()))
        .with_context(|| format!("{}: cannot set its permissions", path.display()))
}

/// The process's umask (Linux reports it in /proc/self/status); 022 if unknown.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

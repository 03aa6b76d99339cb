//! Paths inside a run directory.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A fresh directory `<parent>/<YYYYmmdd-HHMMSS>-<name>` (suffixed if taken).
    pub fn create_unique(parent: &Path, name: &str) -> Result<Self> {
        let stamp = timestamp();
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        for n in 0..1000 {
            let id = if n == 0 {
                format!("{stamp}-{safe}")
            } else {
                format!("{stamp}-{safe}-{n}")
            };
            let root = parent.join(id);
            match std::fs::create_dir_all(parent).and_then(|_| std::fs::create_dir(&root)) {
                Ok(()) => return Ok(Self { root }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{}: cannot create run directory", root.display())
                    })
                }
            }
        }
        anyhow::bail!(
            "{}: could not find a free run directory name",
            parent.display()
        )
    }

    pub fn id(&self) -> String {
        self.root
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn checkpoint(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("step-{step}"))
    }
    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }
    /// Final LoRA adapter (PEFT layout).
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }
    /// Final full-fine-tuning weights.
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    /// Step checkpoints present on disk, oldest first.
    pub fn list_checkpoints(&self) -> Vec<(usize, PathBuf)> {
        let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse().ok()?;
                e.path()
                    .join(super::super::train::checkpoint::STATE_FILE)
                    .exists()
                    .then(|| (step, e.path()))
            })
            .collect();
        out.sort();
        out
    }
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_779), (2026, 11, 22));
    }
}

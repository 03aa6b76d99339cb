//! The layout of a run directory: every file name in it, and what a run produced.
//!
//! ```text
//! runs/<id>/config.toml      fully resolved RunConfig                     (the worker)
//!          metrics.jsonl    one EventLine per line                        (the worker)
//!          checkpoints/step-N/{adapter_config.json, adapter_model.safetensors | model.safetensors,
//!                              optimizer.safetensors, trainer_state.json}
//!          best/            copy of the best checkpoint (lowest eval score)
//!          adapter/         final LoRA adapter (PEFT layout) — or model/ for full fine-tuning
//!          summary.json
//!          supervisor.json  how the dashboard launched the run, how it ended (the supervisor)
//!          memory.jsonl     the supervisor's memory samples
//!          worker.log       the worker's stderr
//!          .lock            PID of the process writing the run, under an OS file lock  (runs::lock)
//! ```
//!
//! What a run's "trained model" is depends on who loads it, and each use keeps the order it
//! has always had (users rely on both):
//! - a **language model** ([`lm_result`]) takes the directory itself (an adapter or a
//!   checkpoint), else the run's final `adapter/`, else `best/`, else the final `model/`
//!   ([`RunDir::lm_search_order`]);
//! - a **sentence encoder** ([`encoder_result`]) takes the directory itself (an adapter or
//!   a complete encoder directory), else — in a run — the checkpoint with the best held-out
//!   Spearman `best/`, else `adapter/`, else `model/` ([`RunDir::encoder_search_order`]).
//!
//! Layering: inference and training both read this module, so it knows file names and
//! checks which files exist, and imports nothing above `adapt` (whose PEFT file names it
//! shares).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::adapt::peft::ADAPTER_CONFIG;

/// The trainer's position inside a checkpoint directory.
pub const STATE_FILE: &str = "trainer_state.json";
/// Optimiser state inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Fully fine-tuned weights inside a checkpoint, `best/` or `model/` directory.
pub const FULL_WEIGHTS: &str = "model.safetensors";
/// The supervisor's own record of a run, next to the worker's files.
pub const SUPERVISOR_FILE: &str = "supervisor.json";
/// Memory samples taken by the supervisor, one JSON object per line.
pub const MEMORY_FILE: &str = "memory.jsonl";
/// The worker's stderr, kept for the failure reason and for reading later.
pub const WORKER_LOG: &str = "worker.log";
/// The config of a complete HF model directory (a base model or a full encoder).
const HF_CONFIG: &str = "config.json";

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
    pub fn supervisor_record(&self) -> PathBuf {
        self.root.join(SUPERVISOR_FILE)
    }
    pub fn memory(&self) -> PathBuf {
        self.root.join(MEMORY_FILE)
    }
    pub fn worker_log(&self) -> PathBuf {
        self.root.join(WORKER_LOG)
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

    /// Whether the worker has written here (its config or its events): a run, not a model.
    pub fn is_run(&self) -> bool {
        self.config().exists() || self.metrics().exists()
    }

    /// Whether the run left something to load for inference (a final adapter or full
    /// weights, or a best checkpoint).
    pub fn has_result(&self) -> bool {
        self.adapter().exists() || self.model().exists() || self.best().exists()
    }

    /// Where a language model looks for the run's result, in order.
    pub fn lm_search_order(&self) -> [PathBuf; 3] {
        [self.adapter(), self.best(), self.model()]
    }

    /// Where a sentence encoder looks for the run's result, in order: the best held-out
    /// Spearman first.
    pub fn encoder_search_order(&self) -> [PathBuf; 3] {
        [self.best(), self.adapter(), self.model()]
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
                e.path().join(STATE_FILE).exists().then(|| (step, e.path()))
            })
            .collect();
        out.sort();
        out
    }
}

/// A language model's training result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmResult {
    /// A PEFT LoRA adapter directory (`adapter_config.json`).
    Adapter(PathBuf),
    /// Fully fine-tuned weights: the `model.safetensors` file.
    FullWeights(PathBuf),
}

impl LmResult {
    /// What `dir` holds: an adapter, else full weights.
    fn in_dir(dir: &Path) -> Option<Self> {
        if dir.join(ADAPTER_CONFIG).exists() {
            return Some(Self::Adapter(dir.to_path_buf()));
        }
        let full = dir.join(FULL_WEIGHTS);
        full.exists().then_some(Self::FullWeights(full))
    }
}

/// The training result at `path` for a language model — a PEFT adapter directory, a
/// checkpoint, or a run directory (see [`RunDir::lm_search_order`]). Full weights in `path`
/// itself count only when it is not a complete HF model directory (`config.json`): that is
/// a base model, not a result.
pub fn lm_result(path: &Path) -> Option<LmResult> {
    let base_model = path.join(HF_CONFIG).exists();
    LmResult::in_dir(path)
        .filter(|r| !(base_model && matches!(r, LmResult::FullWeights(_))))
        .or_else(|| {
            RunDir::new(path)
                .lm_search_order()
                .iter()
                .find_map(|d| LmResult::in_dir(d))
        })
}

/// What a directory holds for a sentence encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderResult {
    /// A PEFT LoRA adapter directory (on the base model it names).
    Adapter(PathBuf),
    /// A complete HF sentence-encoder directory (`config.json` beside the weights).
    Encoder(PathBuf),
    /// A run directory with no encoder in `best/`, `adapter/` or `model/`.
    RunWithoutResult,
    /// Neither: the spec names a model some other way.
    NotARun,
}

impl EncoderResult {
    /// What `dir` itself holds: an adapter, else a complete encoder.
    fn in_dir(dir: &Path) -> Option<Self> {
        if dir.join(ADAPTER_CONFIG).is_file() {
            return Some(Self::Adapter(dir.to_path_buf()));
        }
        dir.join(HF_CONFIG)
            .is_file()
            .then(|| Self::Encoder(dir.to_path_buf()))
    }
}

/// The sentence encoder at `path`: the directory itself (an adapter or a complete encoder),
/// else, in a run directory, the first of [`RunDir::encoder_search_order`] that holds one.
pub fn encoder_result(path: &Path) -> EncoderResult {
    if !path.is_dir() {
        return EncoderResult::NotARun;
    }
    if let Some(r) = EncoderResult::in_dir(path) {
        return r;
    }
    let run = RunDir::new(path);
    if !run.is_run() {
        return EncoderResult::NotARun;
    }
    run.encoder_search_order()
        .iter()
        .find_map(|d| EncoderResult::in_dir(d))
        .unwrap_or(EncoderResult::RunWithoutResult)
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
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_779), (2026, 11, 22));
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    /// A run with both a final adapter and a best checkpoint: language models take the
    /// final adapter, sentence encoders the best checkpoint.
    #[test]
    fn each_use_keeps_its_result_order() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        assert_eq!(encoder_result(tmp.path()), EncoderResult::NotARun);
        touch(&run.metrics());
        assert!(!run.has_result());
        assert_eq!(lm_result(tmp.path()), None);
        assert_eq!(encoder_result(tmp.path()), EncoderResult::RunWithoutResult);
        touch(&run.adapter().join(ADAPTER_CONFIG));
        touch(&run.best().join(ADAPTER_CONFIG));
        assert!(run.has_result());
        assert_eq!(
            lm_result(tmp.path()),
            Some(LmResult::Adapter(run.adapter()))
        );
        assert_eq!(
            encoder_result(tmp.path()),
            EncoderResult::Adapter(run.best())
        );
    }

    /// An HF model directory is a base model for a language model (no result), and a
    /// complete encoder for search; full weights elsewhere are a result.
    #[test]
    fn model_directories_and_full_weights() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        touch(&dir.join(HF_CONFIG));
        touch(&dir.join(FULL_WEIGHTS));
        assert_eq!(lm_result(dir), None);
        assert_eq!(
            encoder_result(dir),
            EncoderResult::Encoder(dir.to_path_buf())
        );
        let run = RunDir::new(dir.join("run"));
        touch(&run.model().join(FULL_WEIGHTS));
        touch(&run.config());
        assert_eq!(
            lm_result(&run.root),
            Some(LmResult::FullWeights(run.model().join(FULL_WEIGHTS)))
        );
    }
}

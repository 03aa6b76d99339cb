//! How a training worker ended, as the supervisor judges it: finished, stopped, failed
//! (with the reason from its exit status and stderr), or dead for memory — the OOM
//! killer's SIGKILL, a CUDA out-of-memory error, an allocation that failed — in which case
//! a run with `train.auto_batch` is relaunched from its last checkpoint with half the
//! micro-batch and twice the accumulation ([`halve`]), the effective batch unchanged.
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use super::layout::RunDir;
use super::registry::RunStatus;
use crate::config::{RunConfig, TaskKind};
use crate::plan::fit::candidates;
use crate::train::checkpoint;
use crate::train::events::{EventLine, TrainEvent};

/// What the supervisor saw of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerEnd {
    pub status: ExitStatus,
    /// The last `done` or `error` event.
    pub last_event: Option<TrainEvent>,
    /// Stop requests sent to it (a SIGKILL after a second one is no OOM).
    pub stops: usize,
    /// The end of its stderr.
    pub tail: Vec<String>,
}

/// The run's status from how its worker ended.
pub fn outcome(end: &WorkerEnd) -> RunStatus {
    match &end.last_event {
        Some(TrainEvent::Done { reason, .. }) if reason == "stopped" => RunStatus::Stopped,
        Some(TrainEvent::Done { reason, .. }) => RunStatus::Done(reason.clone()),
        Some(TrainEvent::Error { message }) => RunStatus::Failed(message.clone()),
        _ if end.stops > 0 => RunStatus::Stopped,
        _ => RunStatus::Failed(failure_reason(&end.status, &end.tail)),
    }
}

/// The reason a worker failed, from how it exited and the end of its stderr.
pub fn failure_reason(status: &ExitStatus, tail: &[String]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (_, Some(9)) => "killed by SIGKILL (out of memory, or killed)".to_string(),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(0), _) => "worker exited without a done event".to_string(),
        (Some(c), _) => format!("worker exited with status {c}"),
        (None, None) => "worker exited".to_string(),
    };
    // The most telling stderr lines: an `error:` line if there is one, else the last ones.
    let lines: Vec<&String> = tail.iter().filter(|l| !l.trim().is_empty()).collect();
    let detail = match lines.iter().rposition(|l| l.starts_with("error")) {
        Some(i) => lines[i..]
            .iter()
            .take(3)
            .map(|s| s.trim())
            .collect::<Vec<_>>()
            .join(" | "),
        None => lines
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(|s| s.trim())
            .collect::<Vec<_>>()
            .join(" | "),
    };
    if detail.is_empty() {
        how
    } else {
        format!("{how}: {detail}")
    }
}

/// Whether a message is an out-of-memory failure: CUDA's, the kernel's ENOMEM, or Rust's
/// "memory allocation of N bytes failed" (printed before the abort).
fn is_oom_text(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("out of memory")
        || t.contains("cannot allocate memory")
        || (t.contains("memory allocation of") && t.contains("failed"))
}

/// Why `end` looks like a death for memory, or `None`. `oom_kills` is the OOM killer's
/// count before and after the worker ran ([`crate::telemetry::available::oom_kill_count`]):
/// a rise confirms a SIGKILL was its; without one a SIGKILL nobody asked for is still the
/// likely OOM kill, and said so.
pub fn memory_death(end: &WorkerEnd, oom_kills: (Option<u64>, Option<u64>)) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if end.stops > 0 || matches!(end.last_event, Some(TrainEvent::Done { .. })) {
        return None;
    }
    if let Some(TrainEvent::Error { message }) = &end.last_event {
        return is_oom_text(message).then(|| format!("a step ran out of memory: {message}"));
    }
    if let Some(line) = end.tail.iter().rev().find(|l| is_oom_text(l)) {
        return Some(format!("the worker ran out of memory: {}", line.trim()));
    }
    if end.status.signal() != Some(9) {
        return None;
    }
    Some(match oom_kills {
        (Some(before), Some(after)) if after > before => {
            "killed by the OOM killer (its oom_kill count rose)".to_string()
        }
        _ => "killed by SIGKILL without a stop request: most likely the OOM killer".to_string(),
    })
}

/// A relaunch with a smaller micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Halving {
    /// The run's config with the new micro-batch.
    pub cfg: RunConfig,
    pub from: usize,
    /// The checkpoint step the relaunch continues from (0: it starts over).
    pub step: usize,
}

/// Why a run dead for memory is not relaunched.
#[derive(Debug, Clone, PartialEq)]
pub enum NoRelaunch {
    /// `train.auto_batch = false`: the run fails as it always did.
    Off,
    /// It cannot be made smaller (or its config cannot be read); the reason says why.
    Cannot(String),
}

/// The smaller micro-batch for the run in `dir` after a death for memory: the largest
/// divisor of the batch at most half the micro-batch it died with. Refused when the run
/// has `train.auto_batch = false`, is not SFT, or already ran micro-batches of 1.
pub fn halve(dir: &Path) -> Result<Halving, NoRelaunch> {
    let run = RunDir::new(dir);
    let cfg =
        RunConfig::load(&run.config(), &[]).map_err(|e| NoRelaunch::Cannot(format!("{e:#}")))?;
    if !cfg.train.auto_batch {
        return Err(NoRelaunch::Off);
    }
    if cfg.task != TaskKind::Sft {
        return Err(NoRelaunch::Cannot("only SFT runs are re-batched".into()));
    }
    let from = cfg.train.micro_batch();
    let Some(&to) = candidates(cfg.train.batch_size, from / 2)
        .first()
        .filter(|_| from > 1)
    else {
        return Err(NoRelaunch::Cannot(format!(
            "it already ran micro-batches of 1, so it cannot be split further: make the run smaller (a shorter data.max_seq_len, model.gradient_checkpointing = true (with model.selective_checkpointing = false), LoRA or QLoRA, train.optimizer = \"adamw8bit\") or free memory, then `ftlab train --resume {}`",
            dir.display()
        )));
    };
    let step = checkpoint::newest_valid(&run).newest.map_or(0, |(s, _)| s);
    let mut cfg = cfg;
    cfg.train.micro_batch_size = Some(to);
    Ok(Halving { cfg, from, step })
}

impl Halving {
    /// The `batch` event that records the change.
    pub fn event(&self, death: &str) -> TrainEvent {
        let t = &self.cfg.train;
        let from = if self.step > 0 {
            format!("from the checkpoint of step {}", self.step)
        } else {
            "from the start (no checkpoint yet)".to_string()
        };
        TrainEvent::Batch {
            step: self.step,
            batch_size: t.batch_size,
            micro_batch: t.micro_batch(),
            micro_batches_per_step: t.micro_batches_per_step(),
            effective_batch: t.effective_batch(),
            reason: format!(
                "{death} at micro-batch {}; relaunched {from} with micro-batch {}",
                self.from,
                t.micro_batch()
            ),
        }
    }

    /// The worker's arguments: resume the run (or start it over) with the new micro-batch.
    pub fn worker_args(&self, dir: &Path) -> Vec<String> {
        vec![
            "train".into(),
            "--resume".into(),
            dir.display().to_string(),
            "--relaunch".into(),
            "--events".into(),
            "--set".into(),
            format!("train.micro_batch_size={}", self.cfg.train.micro_batch()),
        ]
    }
}

/// Appends `event` to the run's `metrics.jsonl` (on a line of its own even when a killed
/// worker left half a line) and returns the line written.
pub fn append_event(dir: &Path, event: TrainEvent) -> std::io::Result<EventLine> {
    let line = EventLine::now(event);
    let path: PathBuf = RunDir::new(dir).metrics();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)?;
    let len = f.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
    }
    let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
    let lead = if last[0] == b'\n' { "" } else { "\n" };
    writeln!(f, "{lead}{text}")?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn end(raw: i32, last_event: Option<TrainEvent>, stops: usize, tail: &[&str]) -> WorkerEnd {
        WorkerEnd {
            status: ExitStatus::from_raw(raw),
            last_event,
            stops,
            tail: tail.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn failure_reasons_name_the_signal_and_the_error_line() {
        let killed = ExitStatus::from_raw(9);
        let r = failure_reason(&killed, &["step 3".into()]);
        assert!(r.starts_with("killed by SIGKILL"), "{r}");
        let code1 = ExitStatus::from_raw(1 << 8);
        let r = failure_reason(
            &code1,
            &[
                "run directory: x".into(),
                "error: presets/x.toml: line 3: bad".into(),
            ],
        );
        assert_eq!(
            r,
            "worker exited with status 1: error: presets/x.toml: line 3: bad"
        );
    }

    #[test]
    fn deaths_for_memory_are_told_from_other_ends() {
        let sigkill = end(9, None, 0, &["step 3"]);
        let likely = memory_death(&sigkill, (None, None)).unwrap();
        assert!(likely.contains("most likely the OOM killer"), "{likely}");
        let sure = memory_death(&sigkill, (Some(2), Some(3))).unwrap();
        assert!(
            sure.contains("OOM killer (its oom_kill count rose)"),
            "{sure}"
        );
        // Killed after a stop request: the user's doing.
        assert_eq!(memory_death(&end(9, None, 2, &[]), (None, None)), None);
        let cuda = TrainEvent::Error {
            message: "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        };
        assert!(memory_death(&end(1 << 8, Some(cuda), 0, &[]), (None, None)).is_some());
        let abort = end(
            6,
            None,
            0,
            &["memory allocation of 4294967296 bytes failed"],
        );
        assert!(memory_death(&abort, (None, None)).is_some());
        let other = TrainEvent::Error {
            message: "loss became NaN".into(),
        };
        assert_eq!(
            memory_death(&end(1 << 8, Some(other), 0, &[]), (None, None)),
            None
        );
        assert_eq!(memory_death(&end(15, None, 0, &[]), (None, None)), None);
    }

    /// A run directory whose config.toml has `train` settings `extra`.
    fn run_with(extra: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "name = \"t\"\n[model]\nspec = \"smollm2\"\n[data]\ntrain = \"x.jsonl\"\n[train]\nlr = 1e-4\n{extra}\n"
        );
        std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        dir
    }

    #[test]
    fn halving_keeps_divisors_of_the_batch_and_stops_at_one() {
        let micro = |extra: &str| halve(run_with(extra).path()).map(|h| h.cfg.train.micro_batch());
        assert_eq!(micro("batch_size = 8"), Ok(4));
        assert_eq!(micro("batch_size = 8\nmicro_batch_size = 2"), Ok(1));
        // 6 → 3 → 1: only divisors keep every step's examples.
        assert_eq!(micro("batch_size = 6\nmicro_batch_size = 3"), Ok(1));
        let h = halve(run_with("batch_size = 8\ngrad_accum = 2").path()).unwrap();
        let t = &h.cfg.train;
        assert_eq!(
            (t.micro_batches_per_step(), t.effective_batch(), h.step),
            (4, 16, 0)
        );
        let at_one = micro("batch_size = 4\nmicro_batch_size = 1");
        assert!(
            matches!(&at_one, Err(NoRelaunch::Cannot(why)) if why.contains("micro-batches of 1")),
            "{at_one:?}"
        );
        assert_eq!(
            micro("batch_size = 4\nauto_batch = false"),
            Err(NoRelaunch::Off)
        );
    }

    #[test]
    fn an_event_after_half_a_line_starts_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "{\"v\":1,\"ti").unwrap();
        let ev = TrainEvent::Error {
            message: "x".into(),
        };
        append_event(dir.path(), ev.clone()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(EventLine::parse(last).unwrap().event, ev);
    }
}

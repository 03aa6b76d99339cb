//! The history of runs: every run directory under `runs/`, read back into the state the
//! dashboard shows (status, curves, memory), so that restarting ftlab shows them again.
//!
//! A run's record is built from the same [`EventLine`](crate::train::events::EventLine)s
//! whether they are read from `metrics.jsonl` or arrive live from a worker's stdout:
//! [`RunRecord::apply`] is the one place that turns events into state. Two small files
//! written by the supervisor complete the picture: `supervisor.json` (how the run was
//! launched and how it ended, for runs that died without a `done` event) and `memory.jsonl`
//! (the supervisor's memory samples).
//!
//! - [`status`]: [`RunStatus`] and the [`SupervisorRecord`];
//! - [`memory`]: [`MemoryPoint`]s and what they measured;
//! - [`record`]: [`RunRecord`], one run's state;
//! - here: [`Registry`], the runs under one root.
use std::path::PathBuf;

pub mod memory;
pub mod record;
pub mod status;

pub use memory::{MemoryKind, MemoryPoint};
pub use record::{BatchNote, DoneInfo, RunRecord, StartInfo, StepPoint};
pub use status::{RunStatus, SupervisorRecord};
// The supervisor writes these files; their names belong to the run layout.
pub use crate::runs::layout::{MEMORY_FILE, SUPERVISOR_FILE, WORKER_LOG};

use crate::runs::layout::RunDir;

/// The run directories under one root.
#[derive(Debug, Clone)]
pub struct Registry {
    pub root: PathBuf,
}

impl Registry {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Directories that look like runs (a config, events or a supervisor record), by id.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let run = RunDir::new(p);
                p.is_dir() && (run.is_run() || run.supervisor_record().exists())
            })
            .collect();
        dirs.sort();
        dirs
    }

    /// Every run, oldest first (ids start with a timestamp).
    pub fn scan(&self) -> Vec<RunRecord> {
        self.run_dirs().iter().map(|d| RunRecord::load(d)).collect()
    }

    pub fn get(&self, id: &str) -> Option<RunRecord> {
        let dir = self.root.join(id);
        dir.is_dir().then(|| RunRecord::load(&dir))
    }
}

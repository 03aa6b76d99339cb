//! Where a run stands, and the supervisor's record of how it was launched and ended.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for its device (runs on one device queue by default).
    Queued,
    Running,
    /// Finished: "completed" or "early_stopping".
    Done(String),
    /// Stopped by the user (the worker saved a checkpoint and its result).
    Stopped,
    /// Crashed, killed (OOM), bad config, or ftlab exited under it: the reason says which.
    Failed(String),
}

impl RunStatus {
    pub fn is_live(&self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn is_finished_ok(&self) -> bool {
        matches!(self, RunStatus::Done(_) | RunStatus::Stopped)
    }

    /// One word for lists: queued, running, done, stopped, failed.
    pub fn word(&self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Done(_) => "done",
            RunStatus::Stopped => "stopped",
            RunStatus::Failed(_) => "failed",
        }
    }

    /// The word plus the reason where there is one.
    pub fn describe(&self) -> String {
        match self {
            RunStatus::Done(r) if r != "completed" => format!("done ({})", r.replace('_', " ")),
            RunStatus::Failed(r) => format!("failed: {r}"),
            other => other.word().to_string(),
        }
    }
}

/// What the supervisor writes into `supervisor.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SupervisorRecord {
    pub preset: Option<PathBuf>,
    #[serde(default)]
    pub overrides: Vec<String>,
    #[serde(default)]
    pub device: String,
    /// Final status when the supervisor saw the worker exit; absent while live.
    #[serde(default)]
    pub outcome: Option<RunStatus>,
}

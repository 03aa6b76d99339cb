//! Run directories: the history of every run, readable after restarts.
//!
//! - [`layout`]: the file names of a run directory and what a run produced (read by
//!   training and inference too, so it depends on nothing above `adapt`);
//! - [`exit`]: how a worker ended, and the relaunch with a smaller micro-batch after a
//!   death for memory;
//! - [`lock`]: one writer per run directory (a PID file under an OS file lock);
//! - [`registry`]: every run directory read back into what the dashboard shows;
//! - [`supervisor`]: training workers as child processes, watched.
pub mod exit;
pub mod layout;
pub mod lock;
pub mod registry;
pub mod supervisor;

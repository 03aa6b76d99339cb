//! One writer per run directory. `RUN/.lock` holds the PID of the process writing the run,
//! under an OS file lock (`flock`) that the kernel drops when that process exits, however
//! it exits: a lock file left behind by a dead process is no obstacle.
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// The exclusive right to write a run directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of the run directory `dir` (which must exist), or fails naming the
    /// process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}: cannot open the run's lock file", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                bail!(
                    "{}: the run is being written by process {} (lock file {}); wait for it to finish or stop it first",
                    dir.display(),
                    if pid.is_empty() { "(unknown)" } else { pid },
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock", path.display()))
            }
        }
        // Ours now: record who holds it, for the message another writer gets.
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(Self { _file: file })
    }
}

//! File-system writes whose errors name the path. A write that fails — a full disk
//! (ENOSPC), a read-only mount, a path whose parent is a file — must say which file it was
//! writing: the bare OS error ("No space left on device (os error 28)") does not.
use std::path::Path;

use anyhow::{Context, Result};

/// `std::fs::write`, naming `path` on failure.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("{}: cannot write", path.display()))
}

/// `std::fs::create_dir_all`, naming `dir` on failure.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))
}

/// `std::fs::remove_dir_all`, naming `dir` on failure.
pub fn remove_dir_all(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("{}: cannot remove", dir.display()))
}

/// `std::fs::rename`, naming both paths on failure.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("{}: cannot move it to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_names_the_file() {
        // /dev/full answers every write with ENOSPC, as a full disk does.
        let err = write(Path::new("/dev/full"), b"x").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("/dev/full: cannot write"), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
    }

    #[test]
    fn a_parent_that_is_a_file_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let under = file.join("d");
        for err in [
            create_dir_all(&under).unwrap_err(),
            write(&under, b"x").unwrap_err(),
            rename(&file, &under).unwrap_err(),
            remove_dir_all(&under).unwrap_err(),
        ] {
            assert!(
                format!("{err:#}").contains(&under.display().to_string()),
                "{err:#}"
            );
        }
    }
}

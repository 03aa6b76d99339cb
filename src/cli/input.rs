//! Reading user-supplied text files with errors that point at the problem.
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads a UTF-8 text file. Invalid UTF-8 is reported with the file, line and byte offset.
pub fn read_utf8_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!(
                "{}:{line}: not valid UTF-8 text (invalid byte at offset {at}); ftlab reads UTF-8 text files",
                path.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let dir = std::env::temp_dir().join(format!("ftlab-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.txt");
        std::fs::write(&p, b"ok line\nsecond \xff\xfe line\n").unwrap();
        let err = read_utf8_file(&p).unwrap_err().to_string();
        assert!(err.contains("bad.txt:2:"), "{err}");
        assert!(err.contains("UTF-8"), "{err}");
        std::fs::write(&p, "日本語\n".as_bytes()).unwrap();
        assert_eq!(read_utf8_file(&p).unwrap(), "日本語\n");
    }
}

//! The presets and datasets shipped with ftlab, compiled into the binary (`build.rs` embeds
//! every file of `presets/`, `data/sft`, `data/sts` and `data/docs`), so that `ftlab` works
//! from any directory.
//!
//! A path that starts with `builtin:` names an embedded file: `builtin:sft/train.jsonl`,
//! `builtin:sts/heldout.jsonl`, `builtin:docs` (a folder), `builtin:presets/qlora.toml`.
//! The readers of presets and data files go through [`read`], which serves those from memory
//! and every other path from the disk. Read from memory rather than written out to a cache
//! folder: nothing to keep in step with the binary, nothing written to the user's disk, and
//! errors name `builtin:sft/train.jsonl` instead of a hashed cache path.
//!
//! It sits at the bottom (next to `located`): configs, training data and documents all read
//! through it.
use std::path::{Path, PathBuf};

mod files {
    include!(concat!(env!("OUT_DIR"), "/builtin_files.rs"));
}

/// The prefix of an embedded path.
pub const SCHEME: &str = "builtin:";

/// Every embedded file as (key, bytes), sorted by key; a key is `presets/NAME.toml`,
/// `sft/FILE`, `sts/FILE` or `docs/FILE`.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    files::FILES
}

/// The key of an embedded path (`builtin:sft/train.jsonl` → `sft/train.jsonl`); `None` for
/// an ordinary path.
pub fn key(path: &Path) -> Option<&str> {
    let key = path.to_str()?.strip_prefix(SCHEME)?;
    Some(key.trim_matches('/'))
}

/// Whether `path` names something embedded (a file or a folder) rather than a file on disk.
pub fn is_builtin(path: &Path) -> bool {
    key(path).is_some()
}

/// The `builtin:` path of a key.
pub fn path_of(key: &str) -> PathBuf {
    PathBuf::from(format!("{SCHEME}{key}"))
}

/// The bytes of the embedded file `key`.
pub fn file(key: &str) -> Option<&'static [u8]> {
    files().iter().find(|(k, _)| *k == key).map(|(_, b)| *b)
}

/// The files of an embedded folder (`builtin:docs`) as (file name, bytes), sorted by name;
/// `None` when `path` is not an embedded folder.
pub fn folder(path: &Path) -> Option<Vec<(&'static str, &'static [u8])>> {
    let key = key(path)?;
    let found: Vec<_> = files()
        .iter()
        .filter_map(|(k, b)| Some((k.strip_prefix(key)?.strip_prefix('/')?, *b)))
        .filter(|(name, _)| !name.contains('/'))
        .collect();
    (!found.is_empty()).then_some(found)
}

/// Whether `path` is a folder: an embedded one, or one on disk.
pub fn is_dir(path: &Path) -> bool {
    folder(path).is_some() || path.is_dir()
}

/// The bytes of a file: embedded for a `builtin:` path, else read from disk.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    match key(path) {
        Some(k) => file(k).map(<[u8]>::to_vec).ok_or_else(|| missing(k)),
        None => std::fs::read(path),
    }
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    match key(path) {
        Some(k) => {
            let bytes = file(k).ok_or_else(|| missing(k))?;
            String::from_utf8(bytes.to_vec())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
        None => std::fs::read_to_string(path),
    }
}

fn missing(key: &str) -> std::io::Error {
    let known: Vec<&str> = files()
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !k.starts_with("docs/"))
        .collect();
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "no built-in file `{key}` (built-in: {}, docs)",
            known.join(", ")
        ),
    )
}

/// A file or folder of the repository (`data/sft/heldout.jsonl`, `presets/lora.toml`,
/// `data/docs`) for a default: the path itself where it exists (in a checkout, as always),
/// else its built-in copy (`builtin:sft/heldout.jsonl`), so that the default works anywhere.
pub fn repo_or_builtin(repo_path: &str) -> PathBuf {
    let local = Path::new(repo_path);
    if local.exists() {
        return local.to_path_buf();
    }
    path_of(repo_path.strip_prefix("data/").unwrap_or(repo_path))
}

/// The built-in presets as (name, `builtin:presets/NAME.toml`), sorted by name.
pub fn presets() -> Vec<(String, PathBuf)> {
    files()
        .iter()
        .filter_map(|(k, _)| {
            let name = k.strip_prefix("presets/")?.strip_suffix(".toml")?;
            Some((name.to_string(), path_of(k)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_paths_read_from_memory_and_others_from_disk() {
        let p = Path::new("builtin:sft/train.jsonl");
        assert_eq!(key(p), Some("sft/train.jsonl"));
        assert!(!read(p).unwrap().is_empty());
        assert_eq!(key(Path::new("data/sft/train.jsonl")), None);
        let err = read(Path::new("builtin:sft/nope.jsonl")).unwrap_err();
        assert!(err.to_string().contains("sft/train.jsonl"), "{err}");
        let docs = folder(Path::new("builtin:docs")).unwrap();
        assert!(docs.iter().any(|(n, _)| *n == "questions.jsonl"));
        assert!(is_dir(Path::new("builtin:docs/")));
        assert!(!is_dir(Path::new("builtin:sft/train.jsonl")));
        assert!(presets().iter().any(|(n, _)| n == "qlora"));
        // Unit tests run in the checkout: its files win; elsewhere the built-in copy.
        assert_eq!(repo_or_builtin("data/docs"), Path::new("data/docs"));
        assert_eq!(
            repo_or_builtin("data/no-such-folder"),
            Path::new("builtin:no-such-folder")
        );
    }
}

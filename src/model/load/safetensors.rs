//! Hugging Face model directories: `config.json` + `*.safetensors` (single file or
//! sharded with an index), memory-mapped.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

use super::source::{check_shape, Init, TensorSource};

pub struct SafetensorsSource {
    dir: PathBuf,
    st: MmapedSafetensors,
}

impl SafetensorsSource {
    /// Opens the weights of an HF model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let files = weight_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; ftlab never writes to a model
        // directory while it is loaded.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| anyhow!("{}: cannot read safetensors weights: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            st,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.st.tensors().into_iter().map(|(n, _)| n).collect()
    }
}

/// The safetensors files of a model directory: `model.safetensors`, else the shards named
/// by `model.safetensors.index.json`, else every `*.safetensors` file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: no `weight_map` object", index.display()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors weight files", dir.display());
    }
    Ok(files)
}

impl TensorSource for SafetensorsSource {
    fn get(&self, name: &str, shape: &Shape, _init: Init, device: &Device) -> Result<Tensor> {
        let t = self
            .st
            .load(name, device)
            .map_err(|e| anyhow!("{}: tensor `{name}`: {e}", self.dir.display()))?
            .to_dtype(DType::F32)?;
        check_shape(&t, name, shape, &self.dir)?;
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn origin(&self) -> &Path {
        &self.dir
    }
}

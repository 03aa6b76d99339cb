//! One type for every causal-LM architecture, loaded from a GGUF file or an HF directory.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::gpt_neox::{GptNeox, GptNeoxConfig};
use super::kv_cache::{KvCache, LayerCache};
use super::linear::Linear;
use super::llama::{model_type_of, Llama, LlamaConfig};
use super::load::gguf::{GgufFile, GgufLlamaSource};
use super::load::safetensors::SafetensorsSource;
use super::load::{ParamBuilder, TensorSource};
use super::ops;

pub const SUPPORTED_HF_CAUSAL: &[&str] = &["llama", "qwen2", "gpt_neox"];
pub const SUPPORTED_GGUF: &[&str] = &["llama", "qwen2"];

#[derive(Debug, Clone)]
pub enum CausalLm {
    Llama(Llama),
    GptNeox(GptNeox),
}

/// How to build a model's parameters.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Base weights become `Var`s (full fine-tuning) instead of frozen tensors.
    pub trainable: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            trainable: false,
        }
    }
}

/// A loaded model and its trainable parameters (empty when frozen).
pub struct LoadedCausalLm {
    pub model: CausalLm,
    pub params: Vec<(String, Var)>,
}

/// Architecture configs that `CausalLm` can be built from.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    Llama(LlamaConfig),
    GptNeox(GptNeoxConfig),
}

impl CausalLm {
    /// Builds a model from any tensor source (files, or random weights in tests).
    pub fn build(
        src: &dyn TensorSource,
        cfg: &ArchConfig,
        opts: &LoadOptions,
    ) -> Result<LoadedCausalLm> {
        let mut pb = ParamBuilder::new(src, &opts.device, opts.dtype, opts.trainable);
        let model = match cfg {
            ArchConfig::Llama(c) => CausalLm::Llama(Llama::load(&mut pb, c)?),
            ArchConfig::GptNeox(c) => CausalLm::GptNeox(GptNeox::load(&mut pb, c)?),
        };
        Ok(LoadedCausalLm {
            model,
            params: pb.into_params(),
        })
    }

    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedCausalLm> {
        Self::from_gguf_file(GgufFile::open(path)?, opts)
    }

    pub fn from_gguf_file(file: GgufFile, opts: &LoadOptions) -> Result<LoadedCausalLm> {
        let path = file.path().to_path_buf();
        let arch = file.architecture()?;
        if !SUPPORTED_GGUF.contains(&arch.as_str()) {
            bail!(
                "{}: unsupported GGUF architecture `{arch}` (supported: {})",
                path.display(),
                SUPPORTED_GGUF.join(", ")
            );
        }
        let cfg = LlamaConfig::from_gguf(&file)?;
        let src = GgufLlamaSource::new(file, cfg.num_attention_heads, cfg.num_key_value_heads)?;
        Self::build(&src, &ArchConfig::Llama(cfg), opts)
    }

    pub fn from_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedCausalLm> {
        let cfg = read_hf_causal_config(dir)?;
        let src = SafetensorsSource::open_dir(dir)?;
        Self::build(&src, &cfg, opts)
    }

    pub fn num_blocks(&self) -> usize {
        match self {
            CausalLm::Llama(m) => m.blocks.len(),
            CausalLm::GptNeox(m) => m.blocks.len(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            CausalLm::Llama(m) => m.cfg.vocab_size,
            CausalLm::GptNeox(m) => m.cfg.vocab_size,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            CausalLm::Llama(m) => m.cfg.max_position_embeddings,
            CausalLm::GptNeox(m) => m.cfg.max_position_embeddings,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            CausalLm::Llama(m) => m.cfg.hidden_size,
            CausalLm::GptNeox(m) => m.cfg.hidden_size,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            CausalLm::Llama(m) => m.device(),
            CausalLm::GptNeox(m) => m.device(),
        }
    }

    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            CausalLm::Llama(m) => m.embed(ids),
            CausalLm::GptNeox(m) => m.embed(ids),
        }
    }

    pub fn block(
        &self,
        i: usize,
        x: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        match self {
            CausalLm::Llama(m) => m.block(i, x, start, mask, cache),
            CausalLm::GptNeox(m) => m.block(i, x, start, mask, cache),
        }
    }

    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            CausalLm::Llama(m) => m.head(x),
            CausalLm::GptNeox(m) => m.head(x),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_blocks())
    }

    /// Causal mask for `t` new positions after `start` cached ones (None for one token).
    pub fn mask(&self, t: usize, start: usize, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if t <= 1 {
            return Ok(None);
        }
        ops::causal_mask(t, start, x.dtype(), x.device()).map(Some)
    }

    /// Logits (b, t, vocab) for `ids` (b, t) at positions `start..`; appends to `cache`.
    pub fn forward(
        &self,
        ids: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let mut x = self.embed(ids)?;
        let t = x.dim(1)?;
        let mask = self.mask(t, start, &x)?;
        for i in 0..self.num_blocks() {
            let layer = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = self.block(i, &x, start, mask.as_ref(), layer)?;
        }
        self.head(&x)
    }

    pub fn set_embed(&mut self, t: Tensor) {
        match self {
            CausalLm::Llama(m) => m.set_embed(t),
            CausalLm::GptNeox(m) => m.set_embed(t),
        }
    }

    pub fn embed_weight(&self) -> &Tensor {
        match self {
            CausalLm::Llama(m) => m.embed_weight(),
            CausalLm::GptNeox(m) => m.embed_weight(),
        }
    }

    /// HF name of the input embedding module.
    pub fn embed_module_name(&self) -> &'static str {
        match self {
            CausalLm::Llama(_) => "model.embed_tokens",
            CausalLm::GptNeox(_) => "gpt_neox.embed_in",
        }
    }

    /// HF name of the (untied) output head module.
    pub fn head_module_name(&self) -> &'static str {
        match self {
            CausalLm::Llama(_) => "lm_head",
            CausalLm::GptNeox(_) => "embed_out",
        }
    }

    pub fn lm_head_mut(&mut self) -> Option<&mut Linear> {
        match self {
            CausalLm::Llama(m) => m.lm_head_mut(),
            CausalLm::GptNeox(m) => m.lm_head_mut(),
        }
    }

    /// Every weight that is not inside a transformer linear layer, by HF name.
    pub fn other_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            CausalLm::Llama(m) => m.other_tensors(),
            CausalLm::GptNeox(m) => m.other_tensors(),
        }
    }

    /// For inference: no weight (adapters, a trained embedding or head included) is
    /// tracked for autograd any more, so forward passes keep no graph.
    pub fn freeze(&mut self) {
        for (_, l) in self.linears_mut() {
            l.freeze();
        }
        if let Some(h) = self.lm_head_mut() {
            h.freeze();
        }
        let embed = self.embed_weight().detach();
        self.set_embed(embed);
    }

    /// Sets train/eval mode (LoRA dropout is active only in training).
    pub fn set_training(&mut self, training: bool) {
        for (_, l) in self.linears_mut() {
            if let Some(a) = l.lora_mut() {
                a.training = training;
            }
        }
    }

    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match self {
            CausalLm::Llama(m) => m.linears_mut(),
            CausalLm::GptNeox(m) => m.linears_mut(),
        }
    }
}

/// The architecture config of a resolved model, read from metadata only (no weights).
pub fn arch_config_of(source: &crate::hub::ModelSource) -> Result<ArchConfig> {
    match source {
        crate::hub::ModelSource::Gguf { path } => Ok(ArchConfig::Llama(LlamaConfig::from_gguf(
            &GgufFile::open(path)?,
        )?)),
        crate::hub::ModelSource::HfDir { dir } => read_hf_causal_config(dir),
    }
}

/// Reads `config.json` of an HF directory into an architecture config.
pub fn read_hf_causal_config(dir: &Path) -> Result<ArchConfig> {
    let v = read_config_json(dir)?;
    let path = dir.join("config.json");
    let model_type = model_type_of(&v).with_context(|| path.display().to_string())?;
    let cfg = match model_type.as_str() {
        "llama" | "qwen2" => ArchConfig::Llama(
            LlamaConfig::from_hf(&v, &model_type).with_context(|| format!("{}", path.display()))?,
        ),
        "gpt_neox" => ArchConfig::GptNeox(
            GptNeoxConfig::from_hf(&v).with_context(|| format!("{}", path.display()))?,
        ),
        other => bail!(
            "{}: unsupported model_type `{other}` for a causal LM (supported: {})",
            path.display(),
            SUPPORTED_HF_CAUSAL.join(", ")
        ),
    };
    Ok(cfg)
}

/// Parses `DIR/config.json`, with errors that name the directory and the problem.
pub fn read_config_json(dir: &Path) -> Result<serde_json::Value> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let path = dir.join("config.json");
    if !path.exists() {
        bail!(
            "{}: not a model directory: config.json is missing (expected config.json, *.safetensors and tokenizer.json)",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: invalid JSON at line {}, column {}: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

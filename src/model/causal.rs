//! One type for every causal-LM architecture, loaded from a GGUF file or an HF directory.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::arch::{self, ArchConfig, DecoderArch, Slot, Weight, WeightKind, WeightMut};
use super::kv_cache::KvCache;
use super::linear::{Linear, Quant4Kind};
use super::llama::model_type_of;
use super::load::gguf::GgufFile;
use super::load::safetensors::SafetensorsSource;
use super::load::{ModelSource, ParamBuilder, TensorSource};
use super::ops;

/// Any registered decoder architecture (see `model::arch::REGISTRY`), used through its
/// forward pieces and its weight table.
#[derive(Debug)]
pub struct CausalLm(Box<dyn DecoderArch>);

/// The architecture's own methods (config, shape, embed, block, head, weights) are
/// reached through the box.
impl std::ops::Deref for CausalLm {
    type Target = dyn DecoderArch;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl std::ops::DerefMut for CausalLm {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut()
    }
}

impl Clone for CausalLm {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

/// How to build a model's parameters.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Base weights become `Var`s (full fine-tuning) instead of frozen tensors.
    pub trainable: bool,
    /// Block linear weights stored in 4 bits as they are read (kind, double quantisation).
    pub quant4: Option<(Quant4Kind, bool)>,
    /// Inference: frozen block linear weights kept in a GGUF's own quantisation (read by
    /// a quantised matmul: a quarter of the memory traffic of f32 per token).
    pub keep_quantized: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            trainable: false,
            quant4: None,
            keep_quantized: false,
        }
    }
}

/// A loaded model and its trainable parameters (empty when frozen).
pub struct LoadedCausalLm {
    pub model: CausalLm,
    pub params: Vec<(String, Var)>,
}

impl CausalLm {
    /// Builds a model from any tensor source (files, or random weights in tests).
    pub fn build(
        src: &dyn TensorSource,
        cfg: &ArchConfig,
        opts: &LoadOptions,
    ) -> Result<LoadedCausalLm> {
        let mut pb = ParamBuilder::new(src, &opts.device, opts.dtype, opts.trainable)
            .with_quant4(opts.quant4)
            .with_keep_quantized(opts.keep_quantized);
        let model = CausalLm(cfg.build(&mut pb)?);
        Ok(LoadedCausalLm {
            model,
            params: pb.into_params(),
        })
    }

    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedCausalLm> {
        Self::from_gguf_file(GgufFile::open(path)?, opts)
    }

    pub fn from_gguf_file(file: GgufFile, opts: &LoadOptions) -> Result<LoadedCausalLm> {
        let (cfg, gguf) = gguf_config(&file)?;
        let src = (gguf.source)(file, &cfg.shape())?;
        Self::build(src.as_ref(), &cfg, opts)
    }

    pub fn from_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedCausalLm> {
        let cfg = read_hf_causal_config(dir)?;
        let src = SafetensorsSource::open_dir(dir)?;
        Self::build(&src, &cfg, opts)
    }

    pub fn num_blocks(&self) -> usize {
        self.shape().layers
    }

    pub fn vocab_size(&self) -> usize {
        self.shape().vocab
    }

    pub fn max_positions(&self) -> usize {
        self.config().max_positions()
    }

    pub fn hidden_size(&self) -> usize {
        self.shape().hidden
    }

    pub fn device(&self) -> &Device {
        self.embed_weight().device()
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

    fn embed_slot(&self) -> Slot<Weight<'_>> {
        self.weights()
            .into_iter()
            .find(|w| matches!(w.kind, WeightKind::Embedding { .. }))
            .expect("every architecture's table has an embedding")
    }

    /// Replaces the input embedding table (made trainable by `modules_to_save`).
    pub fn set_embed(&mut self, t: Tensor) {
        for w in self.weights_mut() {
            if let (WeightMut::Tensor(p), WeightKind::Embedding { .. }) = (w.weight, w.kind) {
                p.0 = t;
                return;
            }
        }
    }

    pub fn embed_weight(&self) -> &Tensor {
        match self.embed_slot().weight {
            Weight::Tensor(t) => t,
            w => unreachable!("the embedding entry holds a tensor, not {w:?}"),
        }
    }

    /// HF name of the input embedding module.
    pub fn embed_module_name(&self) -> String {
        self.embed_slot().name
    }

    /// HF name of the (untied) output head module.
    pub fn head_module_name(&self) -> String {
        self.weights()
            .into_iter()
            .find(|w| matches!(w.kind, WeightKind::Head { .. }))
            .map(|w| w.name)
            .expect("every architecture's table names its head")
    }

    /// The untied LM head, if any.
    pub fn lm_head_mut(&mut self) -> Option<&mut Linear> {
        self.weights_mut().into_iter().find_map(|w| match w.weight {
            WeightMut::OptLinear(l) => l.as_mut(),
            _ => None,
        })
    }

    /// Every weight that is not inside a linear layer (embeddings, norms), by HF tensor
    /// name.
    pub fn other_tensors(&self) -> Vec<(String, Tensor)> {
        self.weights()
            .into_iter()
            .filter_map(|w| match w.weight {
                Weight::Tensor(t) => Some((w.tensor_name(), t.clone())),
                _ => None,
            })
            .collect()
    }

    /// For inference: no weight (adapters, a trained embedding or head included) is
    /// tracked for autograd any more, so forward passes keep no graph.
    pub fn freeze(&mut self) {
        for w in self.weights_mut() {
            match w.weight {
                WeightMut::Linear(l) => l.freeze(),
                WeightMut::OptLinear(Some(l)) => l.freeze(),
                WeightMut::OptLinear(None) => {}
                WeightMut::Tensor(p) => p.0 = p.0.detach(),
            }
        }
    }

    /// Sets train/eval mode (LoRA dropout is active only in training).
    pub fn set_training(&mut self, training: bool) {
        for (_, l) in self.linears_mut() {
            if let Some(a) = l.lora_mut() {
                a.training = training;
            }
        }
    }

    /// Every linear layer of the blocks with its HF module name (LoRA targets, 4-bit
    /// quantisation); the LM head is not among them.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        arch::linears(self.weights_mut())
    }
}

/// The config of a GGUF file's architecture, with how that architecture reads GGUF.
fn gguf_config(file: &GgufFile) -> Result<(ArchConfig, &'static arch::GgufSupport)> {
    let name = file.architecture()?;
    let Some(a) = arch::for_gguf(&name) else {
        bail!(
            "{}: unsupported GGUF architecture `{name}` (supported: {})",
            file.path().display(),
            arch::supported_gguf().join(", ")
        );
    };
    let gguf = a
        .spec()
        .gguf
        .as_ref()
        .expect("for_gguf returns GGUF readers");
    Ok(((gguf.config)(file)?, gguf))
}

/// The architecture config of a model's files, read from metadata only (no weights).
pub fn arch_config_of(source: &ModelSource) -> Result<ArchConfig> {
    match source {
        ModelSource::Gguf { path } => Ok(gguf_config(&GgufFile::open(path)?)?.0),
        ModelSource::HfDir { dir } => read_hf_causal_config(dir),
    }
}

/// Reads `config.json` of an HF directory into an architecture config.
pub fn read_hf_causal_config(dir: &Path) -> Result<ArchConfig> {
    let v = read_config_json(dir)?;
    let path = dir.join("config.json");
    let model_type = model_type_of(&v).with_context(|| path.display().to_string())?;
    let Some(a) = arch::for_hf_model_type(&model_type) else {
        bail!(
            "{}: unsupported model_type `{model_type}` for a causal LM (supported: {})",
            path.display(),
            arch::supported_hf_model_types().join(", ")
        );
    };
    (a.spec().from_hf)(&v, &model_type).with_context(|| format!("{}", path.display()))
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

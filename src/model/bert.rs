//! BERT encoder written for training (all-MiniLM-L6-v2 and other BERT-style sentence
//! encoders).
//!
//! Post-norm blocks: x = LN(x + attn(x)), then x = LN(x + ffn(x)); learned absolute
//! position and token-type embeddings; GELU (erf or tanh) feed-forward. Every op has a
//! backward pass (no fused layer norm, softmax or embedding kernels), and the forward pass
//! is staged (`embed`, `layer`) so that per-layer gradient checkpointing can wrap it.
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;

use super::arch::{
    all_weights, all_weights_mut, linear, linears, vector, weight_table, Param, Slot, Weight,
    WeightKind, WeightMut,
};
use super::causal::{read_config_json, LoadOptions};
use super::linear::Linear;
use super::load::safetensors::SafetensorsSource;
use super::load::{Init, ParamBuilder, TensorSource};
use super::ops;

/// Feed-forward activation of a BERT block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BertActivation {
    /// Exact GELU, `x·Φ(x)` (HF `gelu`).
    #[default]
    Gelu,
    /// Tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl BertActivation {
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => bail!(
                "unsupported hidden_act `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ),
        })
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: BertActivation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

#[derive(Debug, Deserialize)]
struct HfBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    layer_norm_eps: f64,
    position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// From an HF `config.json` value (`model_type: bert`).
    pub fn from_hf(v: &serde_json::Value) -> Result<Self> {
        let c: HfBertConfig = serde_json::from_value(v.clone())?;
        if let Some(p) = c.position_embedding_type.as_deref() {
            if p != "absolute" {
                bail!("position_embedding_type `{p}` is not supported (only `absolute`)");
            }
        }
        let cfg = Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            hidden_act: BertActivation::from_hf(&c.hidden_act)?,
            max_position_embeddings: c.max_position_embeddings,
            type_vocab_size: c.type_vocab_size,
            layer_norm_eps: c.layer_norm_eps,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses `DIR/config.json`; errors name the file.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let v = read_config_json(dir)?;
        let path = dir.join("config.json");
        if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()) {
            if mt != "bert" {
                bail!(
                    "{}: model_type `{mt}` is not a BERT encoder (expected `bert`)",
                    path.display()
                );
            }
        }
        Self::from_hf(&v).with_context(|| path.display().to_string())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.type_vocab_size == 0 || self.max_position_embeddings == 0 {
            bail!("type_vocab_size and max_position_embeddings must be positive");
        }
        Ok(())
    }
}

/// Layer norm weight and bias (HF `LayerNorm.weight` / `LayerNorm.bias`).
#[derive(Debug, Clone, Default)]
pub struct BertLayerNorm {
    pub weight: Param,
    pub bias: Param,
    eps: f64,
}

impl BertLayerNorm {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug, Clone, Default)]
pub struct BertEmbeddings {
    pub word: Param,
    pub position: Param,
    pub token_type: Param,
    pub norm: BertLayerNorm,
}

// The weights before the layers: HF name (after the optional `bert.`) ↔ field ↔ size.
weight_table!(BertEmbeddings, |s: BertConfig| {
    "embeddings.word_embeddings.weight" => word: matrix(s.vocab_size, s.hidden_size),
    "embeddings.position_embeddings.weight" => position: matrix(s.max_position_embeddings, s.hidden_size),
    "embeddings.token_type_embeddings.weight" => token_type: matrix(s.type_vocab_size, s.hidden_size),
    "embeddings.LayerNorm.weight" => norm.weight: vector(s.hidden_size, Init::Ones),
    "embeddings.LayerNorm.bias" => norm.bias: vector(s.hidden_size, Init::Zeros),
});

fn matrix(rows: usize, cols: usize) -> WeightKind {
    WeightKind::Matrix {
        rows,
        cols,
        init: Init::Normal(0.02),
    }
}

#[derive(Debug, Clone, Default)]
pub struct BertAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `attention.output.dense`.
    pub output: Linear,
    pub norm: BertLayerNorm,
    n_head: usize,
    head_dim: usize,
}

impl BertAttention {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor| {
            y.reshape((b, t, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let y = ops::attention(&q, &k, &v, mask)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.n_head * self.head_dim))?;
        let y = self.output.forward(&y)?;
        self.norm.forward(&(y + x)?)
    }
}

#[derive(Debug, Clone, Default)]
pub struct BertLayer {
    pub attention: BertAttention,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    pub output_norm: BertLayerNorm,
    act: BertActivation,
}

// The one list of a layer's weights: HF name (after `encoder.layer.N.`) ↔ field ↔ size.
weight_table!(BertLayer, |s: BertConfig| {
    "attention.self.query" => attention.query: linear(s.hidden_size, s.hidden_size, true, true),
    "attention.self.key" => attention.key: linear(s.hidden_size, s.hidden_size, true, true),
    "attention.self.value" => attention.value: linear(s.hidden_size, s.hidden_size, true, true),
    "attention.output.dense" => attention.output: linear(s.hidden_size, s.hidden_size, true, false),
    "attention.output.LayerNorm.weight" => attention.norm.weight: vector(s.hidden_size, Init::Ones),
    "attention.output.LayerNorm.bias" => attention.norm.bias: vector(s.hidden_size, Init::Zeros),
    "intermediate.dense" => intermediate: linear(s.hidden_size, s.intermediate_size, true, false),
    "output.dense" => output: linear(s.intermediate_size, s.hidden_size, true, false),
    "output.LayerNorm.weight" => output_norm.weight: vector(s.hidden_size, Init::Ones),
    "output.LayerNorm.bias" => output_norm.bias: vector(s.hidden_size, Init::Zeros),
});

impl BertLayer {
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = self.attention.forward(x, mask)?;
        let h = self.act.apply(&self.intermediate.forward(&x)?)?;
        let h = self.output.forward(&h)?;
        self.output_norm.forward(&(h + x)?)
    }
}

#[derive(Debug, Clone)]
pub struct Bert {
    pub cfg: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    /// `""` or `"bert."`, as found in the weights; used for module names.
    prefix: String,
}

/// A loaded BERT and its trainable parameters (empty when frozen).
pub struct LoadedBert {
    pub model: Bert,
    pub params: Vec<(String, Var)>,
}

impl Bert {
    /// Builds the encoder from `pb` through its weight tables, reading HF names with or
    /// without a `bert.` prefix (the pooler, unused by sentence encoders, is not loaded).
    pub fn load(pb: &mut ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        cfg.validate()?;
        let prefix = if pb.contains("bert.embeddings.word_embeddings.weight")
            && !pb.contains("embeddings.word_embeddings.weight")
        {
            "bert"
        } else {
            ""
        };
        let mut m = Self {
            cfg: cfg.clone(),
            embeddings: BertEmbeddings::default(),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| BertLayer::default())
                .collect(),
            prefix: prefix.to_string(),
        };
        for slot in m.weights_mut() {
            slot.load(pb, false)?;
        }
        let eps = cfg.layer_norm_eps;
        m.embeddings.norm.eps = eps;
        for l in &mut m.layers {
            l.attention.norm.eps = eps;
            l.output_norm.eps = eps;
            l.attention.n_head = cfg.num_attention_heads;
            l.attention.head_dim = cfg.head_dim();
            l.act = cfg.hidden_act;
        }
        Ok(m)
    }

    /// Every weight by full HF name, from the tables.
    pub fn weights(&self) -> Vec<Slot<Weight<'_>>> {
        let p = &self.prefix;
        let layer = |i| join(p, &format!("encoder.layer.{i}"));
        all_weights(&self.cfg, p, &self.embeddings, &self.layers, layer)
    }

    /// [`Bert::weights`], writable.
    pub fn weights_mut(&mut self) -> Vec<Slot<WeightMut<'_>>> {
        let p = &self.prefix;
        let layer = |i| join(p, &format!("encoder.layer.{i}"));
        all_weights_mut(&self.cfg, p, &mut self.embeddings, &mut self.layers, layer)
    }

    /// Builds a model from any tensor source (files, or random weights in tests).
    pub fn build(
        src: &dyn TensorSource,
        cfg: &BertConfig,
        opts: &LoadOptions,
    ) -> Result<LoadedBert> {
        let src = LegacyNormNames(src);
        let mut pb = ParamBuilder::new(&src, &opts.device, opts.dtype, opts.trainable);
        let model = Self::load(&mut pb, cfg)?;
        Ok(LoadedBert {
            model,
            params: pb.into_params(),
        })
    }

    /// Loads `DIR/config.json` + `DIR/*.safetensors`.
    pub fn from_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedBert> {
        let cfg = BertConfig::from_dir(dir)?;
        let src = SafetensorsSource::open_dir(dir)?;
        Self::build(&src, &cfg, opts)
    }

    pub fn device(&self) -> &Device {
        self.embeddings.word.device()
    }

    pub fn dtype(&self) -> DType {
        self.embeddings.word.dtype()
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token + position + token-type embeddings, layer-normed: (b, t) → (b, t, h).
    /// `token_type_ids` defaults to all zeros (single sentences).
    pub fn embed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        if t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {t} tokens exceeds the model's maximum of {} positions",
                self.cfg.max_position_embeddings
            );
        }
        let e = &self.embeddings;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let words = e.word.index_select(&ids, 0)?.reshape((b, t, h))?;
        let pos = e.position.narrow(0, 0, t)?.unsqueeze(0)?;
        let types = match token_type_ids {
            Some(tt) => {
                let tt = tt.to_dtype(DType::U32)?.flatten_all()?;
                e.token_type.index_select(&tt, 0)?.reshape((b, t, h))?
            }
            None => e
                .token_type
                .narrow(0, 0, 1)?
                .unsqueeze(0)?
                .broadcast_as((b, t, h))?,
        };
        let x = words.broadcast_add(&pos)?.add(&types)?;
        e.norm.forward(&x)
    }

    /// Additive attention mask (b, 1, 1, t) from a 0/1 mask (b, t): 0 on real tokens and a
    /// large negative value on padding keys, in the model's dtype.
    pub fn additive_mask(&self, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
        additive_mask(attention_mask, self.dtype())
    }

    /// Encoder layer `i`: (b, t, h) → (b, t, h).
    pub fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        attention_mask_additive: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.layers[i].forward(hidden, attention_mask_additive)
    }

    /// Last hidden state (b, t, h) for `input_ids` (b, t) and an optional 0/1
    /// `attention_mask` (b, t) (None: no padding).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mask = attention_mask.map(|m| self.additive_mask(m)).transpose()?;
        let mut x = self.embed(input_ids, None)?;
        for i in 0..self.num_layers() {
            x = self.layer(i, &x, mask.as_ref())?;
        }
        Ok(x)
    }

    /// Every linear layer with its HF module name (for LoRA targeting), e.g.
    /// `encoder.layer.0.attention.self.query`, `encoder.layer.0.output.dense`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        linears(self.weights_mut())
    }
}

/// Older BERT checkpoints call the layer-norm weight and bias `gamma` and `beta`: this
/// source answers the table's names (`LayerNorm.weight` / `.bias`) from them.
struct LegacyNormNames<'a>(&'a dyn TensorSource);

impl LegacyNormNames<'_> {
    fn resolve(&self, name: &str) -> String {
        if self.0.contains(name) {
            return name.to_string();
        }
        let legacy = name
            .strip_suffix("LayerNorm.weight")
            .map(|p| format!("{p}LayerNorm.gamma"))
            .or_else(|| {
                name.strip_suffix("LayerNorm.bias")
                    .map(|p| format!("{p}LayerNorm.beta"))
            });
        match legacy {
            Some(l) if self.0.contains(&l) => l,
            _ => name.to_string(),
        }
    }
}

impl TensorSource for LegacyNormNames<'_> {
    fn get(
        &self,
        name: &str,
        shape: &candle_core::Shape,
        init: Init,
        device: &Device,
    ) -> Result<Tensor> {
        self.0.get(&self.resolve(name), shape, init, device)
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(&self.resolve(name))
    }
    fn origin(&self) -> &Path {
        self.0.origin()
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The additive value for a padding key in `dtype` (exp underflows to exactly 0).
fn mask_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -6.0e4,
        _ => -1.0e9,
    }
}

/// Additive attention mask (b, 1, 1, t) from a 0/1 mask (b, t).
pub fn additive_mask(attention_mask: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let (b, t) = attention_mask.dims2()?;
    let m = attention_mask.to_dtype(DType::F32)?;
    let add = ((1.0 - m)? * mask_min(dtype))?;
    add.reshape((b, 1, 1, t))?.to_dtype(dtype)
}

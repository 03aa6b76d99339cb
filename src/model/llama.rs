//! LLaMA-family decoder: SmolLM2, TinyLlama, llm-jp-3 and (with q/k/v biases) Qwen2.
//!
//! Pre-norm blocks: x + attn(rms_norm(x)), then x + mlp(rms_norm(x)); grouped-query
//! attention; half-split RoPE (GGUF Q/K rows are un-permuted at load); SwiGLU MLP.
use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use serde::Deserialize;

use super::arch::{
    self, linear, vector, weight_table, ArchConfig, ArchSpec, Decoder, DecoderArch, DecoderBlock,
    DecoderConfig, DecoderEnds, GgufSupport, MemoryProfile, Param, Positions, WeightKind,
};
use super::kv_cache::LayerCache;
use super::linear::{Linear, QuantizedTiedHead};
use super::load::gguf::{GgufFile, GgufSource, LLAMA_LAYOUT};
use super::load::{Init, ParamBuilder, TensorSource};
use super::ops::{self, Rope};
use super::shape::{Arch, ModelShape, RowOps};

/// The LLaMA family in the registry (`model::arch::REGISTRY`).
pub const ARCH: Arch = Arch::new(&SPEC);

pub const SPEC: ArchSpec = ArchSpec {
    name: "llama",
    hf_model_types: &["llama", "qwen2"],
    aliases: &["mistral"],
    block_prefix: "model.layers",
    from_hf: |v, model_type| Ok(LlamaConfig::from_hf(v, model_type)?.into()),
    gguf: Some(GgufSupport {
        architectures: &["llama", "qwen2"],
        config: |f| Ok(LlamaConfig::from_gguf(f)?.into()),
        source: |f, s| {
            Ok(
                Box::new(GgufSource::new(f, &LLAMA_LAYOUT, s.heads, s.kv_heads)?)
                    as Box<dyn TensorSource>,
            )
        },
    }),
    tables: arch::tables::<Ends>(),
    memory: MemoryProfile {
        block_kept_per_token,
        final_norm_kept_per_token: |s, _| s.hidden as f64,
    },
};

/// Elements one block keeps per token for backward (see `plan::activations`): two
/// RMSNorms (their outputs, h each: `model::shape::RowOps`), q/k/v/o projections (2·qd +
/// 4·kvd, + q/k/v biases), RoPE on q and k, attention
/// (`ModelShape::attention_kept_per_token`), the two residual adds, and SwiGLU (gate, up,
/// their product: 3I; + h).
fn block_kept_per_token(s: &ModelShape, ops: RowOps) -> f64 {
    let (h, i) = (s.hidden as f64, s.intermediate as f64);
    let (qd, kvd) = (s.q_dim() as f64, s.kv_dim() as f64);
    let norm = h;
    let bias = if s.attention_bias {
        qd + 2.0 * kvd
    } else {
        0.0
    };
    let proj = 2.0 * qd + 4.0 * kvd + bias;
    let mlp = 3.0 * i + h;
    2.0 * norm
        + proj
        + s.rope_kept_per_token(s.heads, ops)
        + s.rope_kept_per_token(s.kv_heads, ops)
        + s.attention_kept_per_token()
        + h
        + h
        + mlp
        + h
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
}

/// The fields of an HF `config.json` that LLaMA and Qwen2 share.
#[derive(Debug, Deserialize)]
struct HfLlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
}

impl LlamaConfig {
    /// From an HF `config.json` value; `qwen2` implies q/k/v biases.
    pub fn from_hf(v: &serde_json::Value, model_type: &str) -> Result<Self> {
        let c: HfLlamaConfig = serde_json::from_value(v.clone())?;
        let rope_params = c.rope_parameters.as_ref().or(c.rope_scaling.as_ref());
        if let Some(kind) = rope_params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(|t| t.as_str())
        {
            if kind != "default" {
                bail!("RoPE scaling `{kind}` is not supported yet (only the default RoPE)");
            }
        }
        let theta = c
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|t| t.as_f64())
            })
            .unwrap_or(10_000.0);
        Ok(Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: theta,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
            attention_bias: c.attention_bias.unwrap_or(model_type == "qwen2"),
        })
    }

    /// From GGUF metadata (`llama.*` or `qwen2.*` keys).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.architecture()?;
        let k = |s: &str| format!("{arch}.{s}");
        let vocab_size = f.vocab_size()?;
        let hidden = f.meta_usize(&k("embedding_length"))?;
        let heads = f.meta_usize(&k("attention.head_count"))?;
        let kv_heads = f.meta_usize(&k("attention.head_count_kv")).unwrap_or(heads);
        Ok(Self {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: f.meta_usize(&k("feed_forward_length"))?,
            num_hidden_layers: f.meta_usize(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: f
                .meta_usize(&k("attention.key_length"))
                .unwrap_or(hidden / heads),
            rms_norm_eps: f.meta_f64(&k("attention.layer_norm_rms_epsilon"))?,
            rope_theta: f.meta_f64(&k("rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: f.meta_usize(&k("context_length")).unwrap_or(2048),
            tie_word_embeddings: !f.has_tensor("output.weight"),
            attention_bias: f.has_tensor("blk.0.attn_q.bias"),
        })
    }

    fn validate(&self) -> Result<()> {
        check_heads(
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )
    }

    pub fn shape(&self) -> ModelShape {
        ModelShape {
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            tied_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            arch: ARCH,
            rotary_dim: self.head_dim,
        }
    }
}

impl DecoderConfig for LlamaConfig {
    fn shape(&self) -> ModelShape {
        LlamaConfig::shape(self)
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn build(&self, cfg: &ArchConfig, pb: &mut ParamBuilder) -> Result<Box<dyn DecoderArch>> {
        self.validate()?;
        let mut shape = self.shape();
        shape.tied_embeddings = self.tie_word_embeddings || !pb.contains("lm_head.weight");
        let rope = Rope::new(
            self.head_dim,
            self.rope_theta,
            self.max_position_embeddings,
            pb.dtype(),
            pb.device(),
        )?;
        let mut m = Llama::load(pb, cfg, shape, rope)?;
        m.ends.eps = self.rms_norm_eps;
        for b in &mut m.blocks {
            b.attn.n_head = self.num_attention_heads;
            b.attn.n_kv_head = self.num_key_value_heads;
            b.attn.head_dim = self.head_dim;
            b.eps = self.rms_norm_eps;
        }
        Ok(Box::new(m))
    }

    fn hf_config(&self) -> serde_json::Value {
        let qwen2 = self.attention_bias;
        serde_json::json!({
            "architectures": [if qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if qwen2 { "qwen2" } else { "llama" },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let split = |y: Tensor, heads: usize| ops::split_heads(&y, heads, self.head_dim);
        let q = split(self.q_proj.forward(x)?, self.n_head)?;
        let k = split(self.k_proj.forward(x)?, self.n_kv_head)?;
        let v = split(self.v_proj.forward(x)?, self.n_kv_head)?;
        let q = pos.rope.apply(&q, pos.start)?;
        let k = pos.rope.apply(&k, pos.start)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y = ops::grouped_attention(&q, &k, &v, pos.mask, scale)?;
        self.o_proj.forward(&y)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj
            .forward(&super::fused_rows::swiglu(&gate, &up)?)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Block {
    pub attn: Attention,
    pub mlp: Mlp,
    input_norm: Param,
    post_attn_norm: Param,
    eps: f64,
}

// The one list of a block's weights: HF name (after `model.layers.N.`) ↔ field ↔ size.
weight_table!(Block, |s| {
    "self_attn.q_proj" => attn.q_proj: linear(s.hidden, s.q_dim(), s.attention_bias, true),
    "self_attn.k_proj" => attn.k_proj: linear(s.hidden, s.kv_dim(), s.attention_bias, true),
    "self_attn.v_proj" => attn.v_proj: linear(s.hidden, s.kv_dim(), s.attention_bias, true),
    "self_attn.o_proj" => attn.o_proj: linear(s.q_dim(), s.hidden, false, false),
    "mlp.gate_proj" => mlp.gate_proj: linear(s.hidden, s.intermediate, false, false),
    "mlp.up_proj" => mlp.up_proj: linear(s.hidden, s.intermediate, false, false),
    "mlp.down_proj" => mlp.down_proj: linear(s.intermediate, s.hidden, false, false),
    "input_layernorm.weight" => input_norm: vector(s.hidden, Init::Ones),
    "post_attention_layernorm.weight" => post_attn_norm: vector(s.hidden, Init::Ones),
});

impl DecoderBlock for Block {
    fn forward(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let h = ops::rms_norm(x, &self.input_norm, self.eps)?;
        let x = (x + self.attn.forward(&h, pos, cache)?)?;
        let h = ops::rms_norm(&x, &self.post_attn_norm, self.eps)?;
        x + self.mlp.forward(&h)?
    }
}

/// The weights around the blocks.
#[derive(Debug, Clone, Default)]
pub struct Ends {
    embed: Param,
    norm: Param,
    /// `None` when the LM head is tied to the input embeddings.
    lm_head: Option<Linear>,
    eps: f64,
    /// The tied head in the file's quantisation, for decoding (inference only).
    head_q: QuantizedTiedHead,
}

weight_table!(Ends, |s| {
    "model.embed_tokens" => embed: WeightKind::Embedding { vocab: s.vocab, hidden: s.hidden },
    "model.norm.weight" => norm: vector(s.hidden, Init::Ones),
    "lm_head" => lm_head: WeightKind::Head { vocab: s.vocab, hidden: s.hidden },
});

impl DecoderEnds for Ends {
    type Block = Block;

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        ops::embedding(&self.embed, ids)
    }

    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = ops::rms_norm(x, &self.norm, self.eps)?;
        super::linear::lm_head(&x, self.lm_head.as_ref(), &self.embed, &self.head_q)
    }

    fn keep_quantized_head(&mut self, pb: &mut ParamBuilder) -> Result<()> {
        let tied = self.lm_head.is_none();
        self.head_q = pb.quantized_tied_head(tied, "model.embed_tokens.weight", &self.embed)?;
        Ok(())
    }

    fn head_split(&self, x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let Some(w) = super::linear::dense_lm_head(self.lm_head.as_ref(), &self.embed) else {
            return Ok(None);
        };
        Ok(Some((ops::rms_norm(x, &self.norm, self.eps)?, w)))
    }
}

/// A loaded LLaMA-family model.
pub type Llama = Decoder<Ends>;

/// Grouped-query attention's head counts and a RoPE-able head size.
pub(crate) fn check_heads(heads: usize, kv_heads: usize, head_dim: usize) -> Result<()> {
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("invalid head counts: {heads} attention heads, {kv_heads} key/value heads");
    }
    if !head_dim.is_multiple_of(2) {
        bail!("head_dim {head_dim} must be even for RoPE");
    }
    Ok(())
}

pub(crate) fn model_type_of(v: &serde_json::Value) -> Result<String> {
    v.get("model_type")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("config.json has no `model_type` field"))
}

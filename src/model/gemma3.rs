//! Gemma 3 text decoder (Gemma 3 270M, 1B): Google's multilingual model family.
//!
//! Differences from LLaMA: every RMSNorm scales by (1 + w) (llama.cpp stores 1 + w in a
//! GGUF: the loader subtracts it back); q and k get their own RMSNorm per head before RoPE;
//! four norms per block (before and after attention, before and after the MLP, the "after"
//! ones applied to the branch before the residual add); GeGLU MLP with the tanh GELU;
//! embeddings scaled by √hidden (the tied LM head uses the unscaled table); scores scaled by
//! `query_pre_attn_scalar^-½`; local layers attend within a sliding window with their own
//! RoPE base, every sixth layer (by default) attends globally.
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Deserialize;

use super::arch::{
    self, linear, vector, weight_table, ArchConfig, ArchSpec, Decoder, DecoderArch, DecoderBlock,
    DecoderConfig, DecoderEnds, GgufSupport, MemoryProfile, Param, Positions, WeightKind,
};
use super::kv_cache::LayerCache;
use super::linear::{Linear, QuantizedTiedHead};
use super::load::gguf::{GgufFile, GgufLayout, GgufSource};
use super::load::{Init, ParamBuilder, TensorSource};
use super::ops::{self, Rope};
use super::shape::{Arch, ModelShape, RowOps};

/// Gemma 3 in the registry (`model::arch::REGISTRY`).
pub const ARCH: Arch = Arch::new(&SPEC);

pub const SPEC: ArchSpec = ArchSpec {
    name: "gemma3",
    hf_model_types: &["gemma3_text"],
    aliases: &["gemma-3"],
    block_prefix: "model.layers",
    from_hf: |v, _| Ok(Gemma3Config::from_hf(v)?.into()),
    gguf: Some(GgufSupport {
        architectures: &["gemma3"],
        config: |f| Ok(Gemma3Config::from_gguf(f)?.into()),
        source: |f, s| {
            Ok(
                Box::new(GgufSource::new(f, &GEMMA3_LAYOUT, s.heads, s.kv_heads)?)
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

/// llama.cpp's names of a Gemma 3 block (its `ffn_norm` is the pre-MLP norm, as in LLaMA;
/// the post-attention norm is a separate tensor here).
const GEMMA3_LAYOUT: GgufLayout = GgufLayout {
    block_name: |rest| {
        Some(match rest {
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "post_attention_norm.weight",
            "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
            "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
            _ => return None,
        })
    },
    norm_shift: 1.0,
};

/// Elements one block keeps per token for backward (see `plan::activations`): four
/// RMSNorms over h (their outputs, h each; the (1 + w) is a vector), the q/k norms over
/// their heads (qd + kvd),
/// q/k/v/o projections (2·qd + 4·kvd), RoPE on q and k, attention
/// (`ModelShape::attention_kept_per_token`), the two residual adds, and GeGLU (4I + h).
fn block_kept_per_token(s: &ModelShape, ops: RowOps) -> f64 {
    let (h, i) = (s.hidden as f64, s.intermediate as f64);
    let (qd, kvd) = (s.q_dim() as f64, s.kv_dim() as f64);
    let norm = h;
    let qk_norms = qd + kvd;
    let proj = 2.0 * qd + 4.0 * kvd;
    let mlp = 4.0 * i + h;
    4.0 * norm
        + qk_norms
        + proj
        + s.rope_kept_per_token(s.heads, ops)
        + s.rope_kept_per_token(s.kv_heads, ops)
        + s.attention_kept_per_token()
        + 2.0 * h
        + mlp
}

/// Whether a layer attends within the sliding window or to every earlier position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Sliding,
    Full,
}

impl LayerKind {
    fn hf_name(self) -> &'static str {
        match self {
            Self::Sliding => "sliding_attention",
            Self::Full => "full_attention",
        }
    }

    /// HF's default: every `pattern`-th layer (1-based) is global.
    fn pattern(layers: usize, pattern: usize) -> Vec<Self> {
        (0..layers)
            .map(|i| {
                if (i + 1) % pattern.max(1) == 0 {
                    Self::Full
                } else {
                    Self::Sliding
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base of the global layers.
    pub rope_theta: f64,
    /// RoPE base of the sliding-window layers.
    pub rope_local_theta: f64,
    pub max_position_embeddings: usize,
    /// Positions a local layer's query sees, itself included.
    pub sliding_window: usize,
    pub query_pre_attn_scalar: f64,
    pub layer_types: Vec<LayerKind>,
    pub tie_word_embeddings: bool,
}

/// The fields of an HF `config.json` (`model_type = "gemma3_text"`) that ftlab reads.
#[derive(Debug, Deserialize)]
struct HfGemma3Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: usize,
    sliding_window: Option<usize>,
    sliding_window_pattern: Option<usize>,
    #[serde(rename = "_sliding_window_pattern")]
    sliding_window_pattern_private: Option<usize>,
    layer_types: Option<Vec<String>>,
    query_pre_attn_scalar: Option<f64>,
    hidden_activation: Option<String>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    use_bidirectional_attention: Option<bool>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
}

/// llama.cpp does not store the local RoPE base or the layer pattern: Gemma 3 fixes them.
const GEMMA3_LOCAL_ROPE_THETA: f64 = 10_000.0;
const GEMMA3_GLOBAL_ROPE_THETA: f64 = 1_000_000.0;
const GEMMA3_SLIDING_PATTERN: usize = 6;

impl Gemma3Config {
    /// From an HF `config.json` value; refuses what ftlab does not implement (soft-capping,
    /// bidirectional attention, RoPE scaling, another activation) rather than computing
    /// something else.
    pub fn from_hf(v: &serde_json::Value) -> Result<Self> {
        let c: HfGemma3Config = serde_json::from_value(v.clone())?;
        if c.final_logit_softcapping.is_some() || c.attn_logit_softcapping.is_some() {
            bail!("Gemma logit soft-capping (Gemma 2) is not supported");
        }
        if c.use_bidirectional_attention == Some(true) {
            bail!("bidirectional Gemma 3 (an embedding model) is not supported");
        }
        if c.attention_bias == Some(true) {
            bail!("Gemma 3 with attention biases is not supported");
        }
        if let Some(act) = c.hidden_activation.as_deref() {
            if !matches!(act, "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") {
                bail!(
                    "hidden_activation `{act}` is not supported (Gemma 3 uses gelu_pytorch_tanh)"
                );
            }
        }
        let (global, local) = rope_bases(&c)?;
        let layer_types = match &c.layer_types {
            Some(names) => names
                .iter()
                .map(|n| match n.as_str() {
                    "sliding_attention" => Ok(LayerKind::Sliding),
                    "full_attention" => Ok(LayerKind::Full),
                    other => bail!("layer_types: unknown layer type `{other}`"),
                })
                .collect::<Result<Vec<_>>>()?,
            None => LayerKind::pattern(
                c.num_hidden_layers,
                c.sliding_window_pattern
                    .or(c.sliding_window_pattern_private)
                    .unwrap_or(GEMMA3_SLIDING_PATTERN),
            ),
        };
        let head_dim = c.head_dim.unwrap_or(256);
        Ok(Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: global,
            rope_local_theta: local,
            max_position_embeddings: c.max_position_embeddings,
            sliding_window: c.sliding_window.unwrap_or(4096),
            query_pre_attn_scalar: c.query_pre_attn_scalar.unwrap_or(head_dim as f64),
            layer_types,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(true),
        })
    }

    /// From GGUF metadata (`gemma3.*` keys); the local RoPE base and the layer pattern are
    /// Gemma 3's fixed ones (llama.cpp hard-codes them too).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let k = |s: &str| format!("gemma3.{s}");
        let hidden = f.meta_usize(&k("embedding_length"))?;
        let heads = f.meta_usize(&k("attention.head_count"))?;
        let layers = f.meta_usize(&k("block_count"))?;
        let head_dim = f.meta_usize(&k("attention.key_length"))?;
        Ok(Self {
            vocab_size: f.vocab_size()?,
            hidden_size: hidden,
            intermediate_size: f.meta_usize(&k("feed_forward_length"))?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: f.meta_usize(&k("attention.head_count_kv")).unwrap_or(heads),
            head_dim,
            rms_norm_eps: f.meta_f64(&k("attention.layer_norm_rms_epsilon"))?,
            rope_theta: f
                .meta_f64(&k("rope.freq_base"))
                .unwrap_or(GEMMA3_GLOBAL_ROPE_THETA),
            rope_local_theta: GEMMA3_LOCAL_ROPE_THETA,
            max_position_embeddings: f.meta_usize(&k("context_length")).unwrap_or(32_768),
            sliding_window: f.meta_usize(&k("attention.sliding_window"))?,
            query_pre_attn_scalar: head_dim as f64,
            layer_types: LayerKind::pattern(layers, GEMMA3_SLIDING_PATTERN),
            tie_word_embeddings: !f.has_tensor("output.weight"),
        })
    }

    fn validate(&self) -> Result<()> {
        super::llama::check_heads(
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )?;
        if self.layer_types.len() != self.num_hidden_layers {
            bail!(
                "layer_types lists {} layers but num_hidden_layers is {}",
                self.layer_types.len(),
                self.num_hidden_layers
            );
        }
        if self.sliding_window == 0 {
            bail!("sliding_window must be at least 1");
        }
        Ok(())
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
            attention_bias: false,
            arch: ARCH,
            rotary_dim: self.head_dim,
        }
    }
}

/// The (global, local) RoPE bases: transformers 5 nests them under `rope_parameters`
/// per layer type; older configs have `rope_theta` and `rope_local_base_freq`.
fn rope_bases(c: &HfGemma3Config) -> Result<(f64, f64)> {
    let params = c.rope_parameters.as_ref().or(c.rope_scaling.as_ref());
    let of = |kind: &str| params.and_then(|p| p.get(kind));
    for kind in ["full_attention", "sliding_attention"] {
        let rope_type = of(kind)
            .and_then(|p| p.get("rope_type"))
            .and_then(|t| t.as_str());
        if let Some(t) = rope_type.filter(|t| *t != "default") {
            bail!("RoPE scaling `{t}` ({kind}) is not supported yet (only the default RoPE)");
        }
    }
    let theta = |kind: &str| {
        of(kind)
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
    };
    let global = theta("full_attention")
        .or(c.rope_theta)
        .unwrap_or(GEMMA3_GLOBAL_ROPE_THETA);
    let local = theta("sliding_attention")
        .or(c.rope_local_base_freq)
        .unwrap_or(GEMMA3_LOCAL_ROPE_THETA);
    Ok((global, local))
}

impl DecoderConfig for Gemma3Config {
    fn shape(&self) -> ModelShape {
        Gemma3Config::shape(self)
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn build(&self, cfg: &ArchConfig, pb: &mut ParamBuilder) -> Result<Box<dyn DecoderArch>> {
        self.validate()?;
        let mut shape = self.shape();
        shape.tied_embeddings = self.tie_word_embeddings || !pb.contains("lm_head.weight");
        let rope = |theta| {
            Rope::new(
                self.head_dim,
                theta,
                self.max_position_embeddings,
                pb.dtype(),
                pb.device(),
            )
            .context("building RoPE tables")
        };
        let global = rope(self.rope_theta)?;
        let local = rope(self.rope_local_theta)?;
        let mut m = Gemma3::load(pb, cfg, shape, global)?;
        m.ends.eps = self.rms_norm_eps;
        m.ends.embed_scale = (self.hidden_size as f64).sqrt();
        for (b, kind) in m.blocks.iter_mut().zip(&self.layer_types) {
            let a = &mut b.attn;
            a.n_head = self.num_attention_heads;
            a.n_kv_head = self.num_key_value_heads;
            a.head_dim = self.head_dim;
            a.scale = self.query_pre_attn_scalar.powf(-0.5);
            a.eps = self.rms_norm_eps;
            if *kind == LayerKind::Sliding {
                a.window = Some(self.sliding_window);
                a.local_rope = Some(local.clone());
            }
            b.eps = self.rms_norm_eps;
        }
        Ok(Box::new(m))
    }

    fn hf_config(&self) -> serde_json::Value {
        let rope = |theta: f64| serde_json::json!({"rope_type": "default", "rope_theta": theta});
        serde_json::json!({
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {
                "full_attention": rope(self.rope_theta),
                "sliding_attention": rope(self.rope_local_theta),
            },
            "max_position_embeddings": self.max_position_embeddings,
            "sliding_window": self.sliding_window,
            "layer_types": self.layer_types.iter().map(|k| k.hf_name()).collect::<Vec<_>>(),
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        })
    }
}

/// Gemma's RMSNorm: `x / rms(x) · (1 + w)`.
fn norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    ops::rms_norm(x, &(w + 1.0)?, eps)
}

#[derive(Debug, Clone, Default)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    q_norm: Param,
    k_norm: Param,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    scale: f64,
    eps: f64,
    /// Positions a query sees (itself included) on a sliding-window layer.
    window: Option<usize>,
    /// The local RoPE base's tables on a sliding-window layer (global layers use the
    /// decoder's).
    local_rope: Option<Rope>,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let t = x.dim(1)?;
        let split = |y: Tensor, heads: usize| ops::split_heads(&y, heads, self.head_dim);
        let rope = self.local_rope.as_ref().unwrap_or(pos.rope);
        let q = norm(
            &split(self.q_proj.forward(x)?, self.n_head)?,
            &self.q_norm,
            self.eps,
        )?;
        let k = norm(
            &split(self.k_proj.forward(x)?, self.n_kv_head)?,
            &self.k_norm,
            self.eps,
        )?;
        let v = split(self.v_proj.forward(x)?, self.n_kv_head)?;
        let q = rope.apply(&q, pos.start)?;
        let k = rope.apply(&k, pos.start)?;
        let (k, v, first) = match (cache, self.window) {
            (Some(c), Some(w)) => c.append_window(&k, &v, w - 1)?,
            (Some(c), None) => {
                let (k, v) = c.append(&k, &v)?;
                (k, v, 0)
            }
            (None, _) => (k, v, 0),
        };
        let n_keys = k.dim(2)?;
        // The decoder's causal mask is right unless the window hides some earlier keys.
        let hidden_by_window = self.window.is_some_and(|w| pos.start + t - first > w);
        let own_mask = if hidden_by_window || (first > 0 && pos.mask.is_some()) {
            Some(ops::window_mask(
                t,
                pos.start,
                first,
                n_keys,
                self.window,
                x.dtype(),
                x.device(),
            )?)
        } else {
            None
        };
        let mask = own_mask.as_ref().or(pos.mask);
        let y = ops::grouped_attention(&q, &k, &v, mask, self.scale)?;
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
        let gate = self.gate_proj.forward(x)?.gelu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Block {
    pub attn: Attention,
    pub mlp: Mlp,
    input_norm: Param,
    post_attn_norm: Param,
    pre_ffn_norm: Param,
    post_ffn_norm: Param,
    eps: f64,
}

// The one list of a block's weights: HF name (after `model.layers.N.`) ↔ field ↔ size.
// Norm weights start at zero: Gemma's norms scale by (1 + w).
weight_table!(Block, |s| {
    "self_attn.q_proj" => attn.q_proj: linear(s.hidden, s.q_dim(), false, true),
    "self_attn.k_proj" => attn.k_proj: linear(s.hidden, s.kv_dim(), false, true),
    "self_attn.v_proj" => attn.v_proj: linear(s.hidden, s.kv_dim(), false, true),
    "self_attn.o_proj" => attn.o_proj: linear(s.q_dim(), s.hidden, false, false),
    "self_attn.q_norm.weight" => attn.q_norm: vector(s.head_dim, Init::Zeros),
    "self_attn.k_norm.weight" => attn.k_norm: vector(s.head_dim, Init::Zeros),
    "mlp.gate_proj" => mlp.gate_proj: linear(s.hidden, s.intermediate, false, false),
    "mlp.up_proj" => mlp.up_proj: linear(s.hidden, s.intermediate, false, false),
    "mlp.down_proj" => mlp.down_proj: linear(s.intermediate, s.hidden, false, false),
    "input_layernorm.weight" => input_norm: vector(s.hidden, Init::Zeros),
    "post_attention_layernorm.weight" => post_attn_norm: vector(s.hidden, Init::Zeros),
    "pre_feedforward_layernorm.weight" => pre_ffn_norm: vector(s.hidden, Init::Zeros),
    "post_feedforward_layernorm.weight" => post_ffn_norm: vector(s.hidden, Init::Zeros),
});

impl DecoderBlock for Block {
    fn forward(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let h = norm(x, &self.input_norm, self.eps)?;
        let h = norm(
            &self.attn.forward(&h, pos, cache)?,
            &self.post_attn_norm,
            self.eps,
        )?;
        let x = (x + h)?;
        let h = norm(&x, &self.pre_ffn_norm, self.eps)?;
        let h = norm(&self.mlp.forward(&h)?, &self.post_ffn_norm, self.eps)?;
        x + h
    }
}

/// The weights around the blocks.
#[derive(Debug, Clone, Default)]
pub struct Ends {
    embed: Param,
    norm: Param,
    /// `None` when the LM head is tied to the input embeddings (always, for Gemma 3).
    lm_head: Option<Linear>,
    eps: f64,
    /// √hidden: Gemma scales the embedding rows, not the tied head.
    embed_scale: f64,
    /// The tied head in the file's quantisation, for decoding (inference only).
    head_q: QuantizedTiedHead,
}

weight_table!(Ends, |s| {
    "model.embed_tokens" => embed: WeightKind::Embedding { vocab: s.vocab, hidden: s.hidden },
    "model.norm.weight" => norm: vector(s.hidden, Init::Zeros),
    "lm_head" => lm_head: WeightKind::Head { vocab: s.vocab, hidden: s.hidden },
});

impl DecoderEnds for Ends {
    type Block = Block;

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        ops::embedding(&self.embed, ids)? * self.embed_scale
    }

    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = norm(x, &self.norm, self.eps)?;
        super::linear::lm_head(&x, self.lm_head.as_ref(), &self.embed, &self.head_q)
    }

    fn keep_quantized_head(&mut self, pb: &mut ParamBuilder) -> Result<()> {
        let tied = self.lm_head.is_none();
        self.head_q = pb.quantized_tied_head(tied, "model.embed_tokens.weight", &self.embed)?;
        Ok(())
    }

    /// Gemma 3 has no final-logit soft-capping: the head is the plain matmul the chunked
    /// loss (`model::head_loss`) fuses.
    fn head_split(&self, x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let Some(w) = super::linear::dense_lm_head(self.lm_head.as_ref(), &self.embed) else {
            return Ok(None);
        };
        Ok(Some((norm(x, &self.norm, self.eps)?, w)))
    }
}

/// A loaded Gemma 3 model.
pub type Gemma3 = Decoder<Ends>;

//! GPT-NeoX decoder (Pythia, OpenCALM, rinna's Japanese GPT-NeoX models).
//!
//! Differences from LLaMA: fused `query_key_value` projection laid out per head as
//! [q, k, v]; RoPE on only the first `rotary_pct` of each head; LayerNorm with bias;
//! GELU MLP; and usually a parallel residual: x + attn(ln1(x)) + mlp(ln2(x)).
use anyhow::Result;
use candle_core::{Tensor, D};
use serde::Deserialize;

use super::arch::{
    self, linear, vector, weight_table, ArchConfig, ArchSpec, Decoder, DecoderArch, DecoderBlock,
    DecoderConfig, DecoderEnds, MemoryProfile, Param, Positions, WeightKind,
};
use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::load::{Init, ParamBuilder};
use super::ops::{self, Rope};
use super::shape::{Arch, ModelShape, RowOps};

/// GPT-NeoX in the registry (`model::arch::REGISTRY`).
pub const ARCH: Arch = Arch::new(&SPEC);

pub const SPEC: ArchSpec = ArchSpec {
    name: "gpt_neox",
    hf_model_types: &["gpt_neox"],
    aliases: &["gpt-neox"],
    block_prefix: "gpt_neox.layers",
    from_hf: |v, _| Ok(GptNeoxConfig::from_hf(v)?.into()),
    gguf: None,
    tables: arch::tables::<Ends>(),
    memory: MemoryProfile {
        block_kept_per_token,
        final_norm_kept_per_token: |s, _| s.hidden as f64,
    },
};

/// Elements one block keeps per token for backward (see `plan::activations`): two
/// LayerNorms (their outputs, h each: `generic_rows::layer_norm`), the fused qkv and its
/// split (9h), partial RoPE on q and k,
/// attention (`ModelShape::attention_kept_per_token`), the dense projection, the GELU MLP
/// (3I + 2h) and the residuals.
fn block_kept_per_token(s: &ModelShape, ops: RowOps) -> f64 {
    let (h, i) = (s.hidden as f64, s.intermediate as f64);
    let norm = h;
    let qkv = 6.0 * h + 3.0 * h;
    let attn = s.attention_kept_per_token();
    let dense = 2.0 * h;
    let mlp = 3.0 * i + 2.0 * h;
    2.0 * norm + qkv + 2.0 * s.rope_kept_per_token(s.heads, ops) + attn + dense + mlp + 2.0 * h
}

#[derive(Debug, Clone, PartialEq)]
pub struct GptNeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub rotary_pct: f64,
    pub rotary_emb_base: f64,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub use_parallel_residual: bool,
    pub tie_word_embeddings: bool,
    /// "gelu" (erf) or the tanh approximation ("gelu_new", "gelu_fast", "gelu_pytorch_tanh").
    pub hidden_act: String,
}

#[derive(Debug, Deserialize)]
struct HfGptNeoxConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    rotary_pct: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rotary_emb_base: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    layer_norm_eps: f64,
    max_position_embeddings: usize,
    #[serde(default = "yes")]
    use_parallel_residual: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "gelu")]
    hidden_act: String,
}

fn yes() -> bool {
    true
}

fn gelu() -> String {
    "gelu".into()
}

impl GptNeoxConfig {
    pub fn from_hf(v: &serde_json::Value) -> Result<Self> {
        let c: HfGptNeoxConfig = serde_json::from_value(v.clone())?;
        let rp = |k: &str| {
            c.rope_parameters
                .as_ref()
                .and_then(|p| p.get(k))
                .and_then(|x| x.as_f64())
        };
        Ok(Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            rotary_pct: c
                .rotary_pct
                .or(c.partial_rotary_factor)
                .or_else(|| rp("partial_rotary_factor"))
                .unwrap_or(0.25),
            rotary_emb_base: c
                .rotary_emb_base
                .or(c.rope_theta)
                .or_else(|| rp("rope_theta"))
                .unwrap_or(10_000.0),
            layer_norm_eps: c.layer_norm_eps,
            max_position_embeddings: c.max_position_embeddings,
            use_parallel_residual: c.use_parallel_residual,
            tie_word_embeddings: c.tie_word_embeddings,
            hidden_act: c.hidden_act,
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn shape(&self) -> ModelShape {
        let head_dim = self.hidden_size / self.num_attention_heads.max(1);
        ModelShape {
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_attention_heads,
            head_dim,
            tied_embeddings: self.tie_word_embeddings,
            attention_bias: true,
            arch: ARCH,
            rotary_dim: ((head_dim as f64) * self.rotary_pct) as usize,
        }
    }
}

impl DecoderConfig for GptNeoxConfig {
    fn shape(&self) -> ModelShape {
        GptNeoxConfig::shape(self)
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn build(&self, cfg: &ArchConfig, pb: &mut ParamBuilder) -> Result<Box<dyn DecoderArch>> {
        let h = self.hidden_size;
        if self.num_attention_heads == 0 || !h.is_multiple_of(self.num_attention_heads) {
            anyhow::bail!(
                "hidden_size {h} is not divisible by num_attention_heads {}",
                self.num_attention_heads
            );
        }
        let erf_gelu = match self.hidden_act.as_str() {
            "gelu" => true,
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => false,
            other => anyhow::bail!("unsupported GPT-NeoX hidden_act `{other}`"),
        };
        let shape = self.shape();
        let rope = Rope::new(
            shape.rotary_dim,
            self.rotary_emb_base,
            self.max_position_embeddings,
            pb.dtype(),
            pb.device(),
        )?;
        let mut m = GptNeox::load(pb, cfg, shape, rope)?;
        m.ends.final_norm.eps = self.layer_norm_eps;
        for b in &mut m.blocks {
            b.ln1.eps = self.layer_norm_eps;
            b.ln2.eps = self.layer_norm_eps;
            b.n_head = self.num_attention_heads;
            b.head_dim = self.head_dim();
            b.parallel = self.use_parallel_residual;
            b.erf_gelu = erf_gelu;
        }
        Ok(Box::new(m))
    }

    fn hf_config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "rotary_pct": self.rotary_pct,
            "rotary_emb_base": self.rotary_emb_base,
            "layer_norm_eps": self.layer_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "use_parallel_residual": self.use_parallel_residual,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act,
        })
    }
}

#[derive(Debug, Clone, Default)]
struct Norm {
    weight: Param,
    bias: Param,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug, Clone, Default)]
pub struct NeoxBlock {
    pub query_key_value: Linear,
    pub dense: Linear,
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
    ln1: Norm,
    ln2: Norm,
    n_head: usize,
    head_dim: usize,
    parallel: bool,
    erf_gelu: bool,
}

// The one list of a block's weights: HF name (after `gpt_neox.layers.N.`) ↔ field ↔ size.
weight_table!(NeoxBlock, |s| {
    "attention.query_key_value" => query_key_value: linear(s.hidden, 3 * s.hidden, true, true),
    "attention.dense" => dense: linear(s.hidden, s.hidden, true, false),
    "mlp.dense_h_to_4h" => dense_h_to_4h: linear(s.hidden, s.intermediate, true, false),
    "mlp.dense_4h_to_h" => dense_4h_to_h: linear(s.intermediate, s.hidden, true, false),
    "input_layernorm.weight" => ln1.weight: vector(s.hidden, Init::Ones),
    "input_layernorm.bias" => ln1.bias: vector(s.hidden, Init::Zeros),
    "post_attention_layernorm.weight" => ln2.weight: vector(s.hidden, Init::Ones),
    "post_attention_layernorm.bias" => ln2.bias: vector(s.hidden, Init::Zeros),
});

impl NeoxBlock {
    fn attention(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let qkv = self
            .query_key_value
            .forward(x)?
            .reshape((b, t, self.n_head, 3 * self.head_dim))?
            .transpose(1, 2)?;
        let part = |i: usize| {
            qkv.narrow(D::Minus1, i * self.head_dim, self.head_dim)?
                .contiguous()
        };
        let q = pos.rope.apply(&part(0)?, pos.start)?;
        let k = pos.rope.apply(&part(1)?, pos.start)?;
        let v = part(2)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y = ops::grouped_attention(&q, &k, &v, pos.mask, scale)?;
        self.dense.forward(&y)
    }

    fn mlp(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.dense_h_to_4h.forward(x)?;
        let h = if self.erf_gelu {
            h.gelu_erf()?
        } else {
            h.gelu()?
        };
        self.dense_4h_to_h.forward(&h)
    }
}

impl DecoderBlock for NeoxBlock {
    fn forward(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let attn = self.attention(&self.ln1.forward(x)?, pos, cache)?;
        if self.parallel {
            let mlp = self.mlp(&self.ln2.forward(x)?)?;
            (x + attn)? + mlp
        } else {
            let x = (x + attn)?;
            let mlp = self.mlp(&self.ln2.forward(&x)?)?;
            x + mlp
        }
    }
}

/// The weights around the blocks.
#[derive(Debug, Clone, Default)]
pub struct Ends {
    embed: Param,
    final_norm: Norm,
    /// `None` when the output projection is tied to the input embeddings.
    embed_out: Option<Linear>,
}

weight_table!(Ends, |s| {
    "gpt_neox.embed_in" => embed: WeightKind::Embedding { vocab: s.vocab, hidden: s.hidden },
    "gpt_neox.final_layer_norm.weight" => final_norm.weight: vector(s.hidden, Init::Ones),
    "gpt_neox.final_layer_norm.bias" => final_norm.bias: vector(s.hidden, Init::Zeros),
    "embed_out" => embed_out: WeightKind::Head { vocab: s.vocab, hidden: s.hidden },
});

impl DecoderEnds for Ends {
    type Block = NeoxBlock;

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        ops::embedding(&self.embed, ids)
    }

    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.final_norm.forward(x)?;
        super::linear::lm_head(
            &x,
            self.embed_out.as_ref(),
            &self.embed,
            &Default::default(),
        )
    }

    fn head_split(&self, x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let Some(w) = super::linear::dense_lm_head(self.embed_out.as_ref(), &self.embed) else {
            return Ok(None);
        };
        Ok(Some((self.final_norm.forward(x)?, w)))
    }
}

/// A loaded GPT-NeoX model.
pub type GptNeox = Decoder<Ends>;

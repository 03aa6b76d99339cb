//! LLaMA-family decoder: SmolLM2, TinyLlama, llm-jp-3 and (with q/k/v biases) Qwen2.
//!
//! Pre-norm blocks: x + attn(rms_norm(x)), then x + mlp(rms_norm(x)); grouped-query
//! attention; half-split RoPE (GGUF Q/K rows are un-permuted at load); SwiGLU MLP.
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::load::gguf::GgufFile;
use super::load::{Init, ParamBuilder};
use super::ops::{self, Rope};

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
        let vocab_size = match f.metadata().get("tokenizer.ggml.tokens") {
            Some(v) => v.to_vec().map(|t| t.len()).unwrap_or(0),
            None => 0,
        };
        let vocab_size = if vocab_size > 0 {
            vocab_size
        } else {
            f.meta_usize(&k("vocab_size"))?
        };
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
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "invalid head counts: {} attention heads, {} key/value heads",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} must be even for RoPE", self.head_dim);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
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
        rope: &Rope,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize| {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x)?, self.n_head)?;
        let k = split(self.k_proj.forward(x)?, self.n_kv_head)?;
        let v = split(self.v_proj.forward(x)?, self.n_kv_head)?;
        let q = rope.apply(&q, start)?;
        let k = rope.apply(&k, start)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let n_rep = self.n_head / self.n_kv_head;
        let k = ops::repeat_kv(&k, n_rep)?;
        let v = ops::repeat_kv(&v, n_rep)?;
        let y = ops::attention(&q, &k, &v, mask)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.n_head * self.head_dim))?;
        self.o_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub attn: Attention,
    pub mlp: Mlp,
    input_norm: Tensor,
    post_attn_norm: Tensor,
    eps: f64,
}

impl Block {
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let h = ops::rms_norm(x, &self.input_norm, self.eps)?;
        let x = (x + self.attn.forward(&h, rope, start, mask, cache)?)?;
        let h = ops::rms_norm(&x, &self.post_attn_norm, self.eps)?;
        x + self.mlp.forward(&h)?
    }
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Tensor,
    pub blocks: Vec<Block>,
    norm: Tensor,
    /// `None` when the LM head is tied to the input embeddings.
    lm_head: Option<Linear>,
    rope: Rope,
}

impl Llama {
    pub fn load(pb: &mut ParamBuilder, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate()?;
        let (h, kvd) = (cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim);
        let qd = cfg.num_attention_heads * cfg.head_dim;
        let embed = pb.tensor(
            "model.embed_tokens.weight",
            (cfg.vocab_size, h),
            Init::Normal(0.5),
        )?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            let attn = Attention {
                q_proj: pb.linear(&format!("{p}.self_attn.q_proj"), h, qd, bias)?,
                k_proj: pb.linear(&format!("{p}.self_attn.k_proj"), h, kvd, bias)?,
                v_proj: pb.linear(&format!("{p}.self_attn.v_proj"), h, kvd, bias)?,
                o_proj: pb.linear(&format!("{p}.self_attn.o_proj"), qd, h, false)?,
                n_head: cfg.num_attention_heads,
                n_kv_head: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
            };
            let mlp = Mlp {
                gate_proj: pb.linear(
                    &format!("{p}.mlp.gate_proj"),
                    h,
                    cfg.intermediate_size,
                    false,
                )?,
                up_proj: pb.linear(&format!("{p}.mlp.up_proj"), h, cfg.intermediate_size, false)?,
                down_proj: pb.linear(
                    &format!("{p}.mlp.down_proj"),
                    cfg.intermediate_size,
                    h,
                    false,
                )?,
            };
            blocks.push(Block {
                attn,
                mlp,
                input_norm: pb.tensor(&format!("{p}.input_layernorm.weight"), h, Init::Ones)?,
                post_attn_norm: pb.tensor(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    Init::Ones,
                )?,
                eps: cfg.rms_norm_eps,
            });
        }
        let norm = pb.tensor("model.norm.weight", h, Init::Ones)?;
        let tied = cfg.tie_word_embeddings || !pb.contains("lm_head.weight");
        let lm_head = if tied {
            None
        } else {
            Some(pb.linear("lm_head", h, cfg.vocab_size, false)?)
        };
        let rope = Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.max_position_embeddings,
            pb.dtype(),
            pb.device(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rope,
        })
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        ops::embedding(&self.embed, ids)
    }

    pub fn block(
        &self,
        i: usize,
        x: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        self.blocks[i].forward(x, &self.rope, start, mask, cache)
    }

    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = ops::rms_norm(x, &self.norm, self.cfg.rms_norm_eps)?;
        super::linear::lm_head(&x, self.lm_head.as_ref(), &self.embed)
    }

    /// Replaces the input embedding table (made trainable by `modules_to_save`).
    pub fn set_embed(&mut self, t: Tensor) {
        self.embed = t;
    }

    pub fn embed_weight(&self) -> &Tensor {
        &self.embed
    }

    /// Every non-linear weight with its HF name (embeddings, norms), for export.
    pub fn other_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), b.input_norm.clone()));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.post_attn_norm.clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        out
    }

    /// The untied LM head, if any.
    pub fn lm_head_mut(&mut self) -> Option<&mut Linear> {
        self.lm_head.as_mut()
    }

    /// Every linear layer with its HF module name (for LoRA targeting).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut b.attn.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut b.attn.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut b.attn.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut b.attn.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut b.mlp.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut b.mlp.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut b.mlp.down_proj));
        }
        out
    }
}

pub(crate) fn model_type_of(v: &serde_json::Value) -> Result<String> {
    v.get("model_type")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("config.json has no `model_type` field"))
}

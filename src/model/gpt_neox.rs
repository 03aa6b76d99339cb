//! GPT-NeoX decoder (Pythia, OpenCALM, rinna's Japanese GPT-NeoX models).
//!
//! Differences from LLaMA: fused `query_key_value` projection laid out per head as
//! [q, k, v]; RoPE on only the first `rotary_pct` of each head; LayerNorm with bias;
//! GELU MLP; and usually a parallel residual: x + attn(ln1(x)) + mlp(ln2(x)).
use anyhow::Result;
use candle_core::{Tensor, D};
use serde::Deserialize;

use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::load::{Init, ParamBuilder};
use super::ops::{self, Rope};

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
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn load(pb: &mut ParamBuilder, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.tensor(&format!("{prefix}.weight"), dim, Init::Ones)?,
            bias: pb.tensor(&format!("{prefix}.bias"), dim, Init::Zeros)?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug, Clone)]
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

impl NeoxBlock {
    fn attention(
        &self,
        x: &Tensor,
        rope: &Rope,
        start: usize,
        mask: Option<&Tensor>,
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
        let q = rope.apply(&part(0)?, start)?;
        let k = rope.apply(&part(1)?, start)?;
        let v = part(2)?;
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let y = ops::attention(&q, &k, &v, mask)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.n_head * self.head_dim))?;
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

    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let attn = self.attention(&self.ln1.forward(x)?, rope, start, mask, cache)?;
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

#[derive(Debug, Clone)]
pub struct GptNeox {
    pub cfg: GptNeoxConfig,
    embed: Tensor,
    pub blocks: Vec<NeoxBlock>,
    final_norm: Norm,
    embed_out: Option<Linear>,
    rope: Rope,
}

impl GptNeox {
    pub fn load(pb: &mut ParamBuilder, cfg: &GptNeoxConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            anyhow::bail!(
                "hidden_size {h} is not divisible by num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        let head_dim = cfg.head_dim();
        let embed = pb.tensor(
            "gpt_neox.embed_in.weight",
            (cfg.vocab_size, h),
            Init::Normal(0.5),
        )?;
        let erf_gelu = match cfg.hidden_act.as_str() {
            "gelu" => true,
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => false,
            other => anyhow::bail!("unsupported GPT-NeoX hidden_act `{other}`"),
        };
        let mut blocks = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("gpt_neox.layers.{i}");
            blocks.push(NeoxBlock {
                query_key_value: pb.linear(
                    &format!("{p}.attention.query_key_value"),
                    h,
                    3 * h,
                    true,
                )?,
                dense: pb.linear(&format!("{p}.attention.dense"), h, h, true)?,
                dense_h_to_4h: pb.linear(
                    &format!("{p}.mlp.dense_h_to_4h"),
                    h,
                    cfg.intermediate_size,
                    true,
                )?,
                dense_4h_to_h: pb.linear(
                    &format!("{p}.mlp.dense_4h_to_h"),
                    cfg.intermediate_size,
                    h,
                    true,
                )?,
                ln1: Norm::load(pb, &format!("{p}.input_layernorm"), h, cfg.layer_norm_eps)?,
                ln2: Norm::load(
                    pb,
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    cfg.layer_norm_eps,
                )?,
                n_head: cfg.num_attention_heads,
                head_dim,
                parallel: cfg.use_parallel_residual,
                erf_gelu,
            });
        }
        let final_norm = Norm::load(pb, "gpt_neox.final_layer_norm", h, cfg.layer_norm_eps)?;
        let embed_out = if cfg.tie_word_embeddings {
            None
        } else {
            Some(pb.linear("embed_out", h, cfg.vocab_size, false)?)
        };
        let rot_dim = ((head_dim as f64) * cfg.rotary_pct) as usize;
        let rope = Rope::new(
            rot_dim,
            cfg.rotary_emb_base,
            cfg.max_position_embeddings,
            pb.dtype(),
            pb.device(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            final_norm,
            embed_out,
            rope,
        })
    }

    pub fn device(&self) -> &candle_core::Device {
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
        let x = self.final_norm.forward(x)?;
        super::linear::lm_head(&x, self.embed_out.as_ref(), &self.embed)
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
        let mut out = vec![("gpt_neox.embed_in.weight".to_string(), self.embed.clone())];
        let norm = |out: &mut Vec<(String, Tensor)>, p: String, n: &Norm| {
            out.push((format!("{p}.weight"), n.weight.clone()));
            out.push((format!("{p}.bias"), n.bias.clone()));
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("gpt_neox.layers.{i}");
            norm(&mut out, format!("{p}.input_layernorm"), &b.ln1);
            norm(&mut out, format!("{p}.post_attention_layernorm"), &b.ln2);
        }
        norm(
            &mut out,
            "gpt_neox.final_layer_norm".to_string(),
            &self.final_norm,
        );
        out
    }

    pub fn lm_head_mut(&mut self) -> Option<&mut Linear> {
        self.embed_out.as_mut()
    }

    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("gpt_neox.layers.{i}");
            out.push((
                format!("{p}.attention.query_key_value"),
                &mut b.query_key_value,
            ));
            out.push((format!("{p}.attention.dense"), &mut b.dense));
            out.push((format!("{p}.mlp.dense_h_to_4h"), &mut b.dense_h_to_4h));
            out.push((format!("{p}.mlp.dense_4h_to_h"), &mut b.dense_4h_to_h));
        }
        out
    }
}

//! The shape of a model as the memory model needs it: sizes, and the list of parameter
//! tensors with their HF names (for LoRA targeting and per-tensor optimiser rules).
use std::fmt;

use crate::model::gpt_neox::GptNeoxConfig;
use crate::model::llama::LlamaConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// LLaMA family (SmolLM2, TinyLlama, Qwen2 with q/k/v biases): RMSNorm, GQA, SwiGLU.
    Llama,
    /// GPT-NeoX (Pythia): LayerNorm with bias, fused qkv, GELU MLP, biases everywhere.
    GptNeox,
}

impl Arch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::GptNeox => "gpt_neox",
        }
    }

    /// "llama" (also "qwen2", "mistral") or "gpt_neox".
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "llama" | "qwen2" | "mistral" => Some(Arch::Llama),
            "gpt_neox" | "gpt-neox" => Some(Arch::GptNeox),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tied_embeddings: bool,
    /// q/k/v biases (Qwen2). GPT-NeoX always has biases; this flag is for LLaMA.
    pub attention_bias: bool,
    pub arch: Arch,
    /// Leading dims of each head that RoPE rotates (head_dim for LLaMA, a fraction for
    /// GPT-NeoX).
    pub rotary_dim: usize,
}

/// What a parameter tensor is, for the optimiser and quantisation rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Token embedding (or an untied LM head): stays dense under 4-bit quantisation.
    Embedding,
    /// The weight of a linear layer inside a block: quantised by QLoRA, targeted by LoRA.
    Linear,
    /// Norm weights and biases: dense, small.
    Small,
}

/// One parameter tensor of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTensor {
    pub name: String,
    pub numel: u64,
    pub kind: ParamKind,
}

/// One linear layer inside a block, named as `CausalLm::linears_mut` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSpec {
    pub layer: usize,
    /// Full HF module name, e.g. `model.layers.3.self_attn.q_proj`.
    pub name: String,
    pub in_f: usize,
    pub out_f: usize,
    pub bias: bool,
    /// Reads the block input (through the first norm): q/k/v or GPT-NeoX's qkv.
    pub reads_block_input: bool,
}

impl ModelShape {
    /// SmolLM2-135M (the default model): 30 layers, hidden 576, tied embeddings.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab: 49_152,
            hidden: 576,
            intermediate: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            tied_embeddings: true,
            attention_bias: false,
            arch: Arch::Llama,
            rotary_dim: 64,
        }
    }

    pub fn from_llama(c: &LlamaConfig) -> Self {
        Self {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            tied_embeddings: c.tie_word_embeddings,
            attention_bias: c.attention_bias,
            arch: Arch::Llama,
            rotary_dim: c.head_dim,
        }
    }

    pub fn from_gpt_neox(c: &GptNeoxConfig) -> Self {
        let head_dim = c.hidden_size / c.num_attention_heads.max(1);
        Self {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_attention_heads,
            head_dim,
            tied_embeddings: c.tie_word_embeddings,
            attention_bias: true,
            arch: Arch::GptNeox,
            rotary_dim: ((head_dim as f64) * c.rotary_pct) as usize,
        }
    }

    /// From either architecture config of `CausalLm`.
    pub fn from_arch(c: &crate::model::ArchConfig) -> Self {
        match c {
            crate::model::ArchConfig::Llama(c) => Self::from_llama(c),
            crate::model::ArchConfig::GptNeox(c) => Self::from_gpt_neox(c),
        }
    }

    /// Width of the query projection (heads × head_dim).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key and value projections (kv_heads × head_dim).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The linear layers of every block, in `CausalLm::linears_mut` order.
    pub fn linears(&self) -> Vec<LinearSpec> {
        let (h, i) = (self.hidden, self.intermediate);
        let mut out = Vec::new();
        for l in 0..self.layers {
            let mut push = |module: &str, in_f: usize, out_f: usize, bias: bool, first: bool| {
                let name = match self.arch {
                    Arch::Llama => format!("model.layers.{l}.{module}"),
                    Arch::GptNeox => format!("gpt_neox.layers.{l}.{module}"),
                };
                out.push(LinearSpec {
                    layer: l,
                    name,
                    in_f,
                    out_f,
                    bias,
                    reads_block_input: first,
                });
            };
            match self.arch {
                Arch::Llama => {
                    let (qd, kvd, b) = (self.q_dim(), self.kv_dim(), self.attention_bias);
                    push("self_attn.q_proj", h, qd, b, true);
                    push("self_attn.k_proj", h, kvd, b, true);
                    push("self_attn.v_proj", h, kvd, b, true);
                    push("self_attn.o_proj", qd, h, false, false);
                    push("mlp.gate_proj", h, i, false, false);
                    push("mlp.up_proj", h, i, false, false);
                    push("mlp.down_proj", i, h, false, false);
                }
                Arch::GptNeox => {
                    push("attention.query_key_value", h, 3 * h, true, true);
                    push("attention.dense", h, h, true, false);
                    push("mlp.dense_h_to_4h", h, i, true, false);
                    push("mlp.dense_4h_to_h", i, h, true, false);
                }
            }
        }
        out
    }

    /// Every parameter tensor, with HF names.
    pub fn params(&self) -> Vec<ParamTensor> {
        let h = self.hidden as u64;
        let embed = (self.vocab * self.hidden) as u64;
        let mut out = Vec::new();
        let mut push =
            |name: String, numel: u64, kind: ParamKind| out.push(ParamTensor { name, numel, kind });
        let (embed_name, final_norm, head_name, norm_tensors) = match self.arch {
            Arch::Llama => ("model.embed_tokens", "model.norm", "lm_head", 1),
            Arch::GptNeox => (
                "gpt_neox.embed_in",
                "gpt_neox.final_layer_norm",
                "embed_out",
                2,
            ),
        };
        push(format!("{embed_name}.weight"), embed, ParamKind::Embedding);
        for lin in self.linears() {
            push(
                format!("{}.weight", lin.name),
                (lin.in_f * lin.out_f) as u64,
                ParamKind::Linear,
            );
            if lin.bias {
                push(
                    format!("{}.bias", lin.name),
                    lin.out_f as u64,
                    ParamKind::Small,
                );
            }
        }
        for l in 0..self.layers {
            let prefix = match self.arch {
                Arch::Llama => format!("model.layers.{l}"),
                Arch::GptNeox => format!("gpt_neox.layers.{l}"),
            };
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                push(format!("{prefix}.{norm}.weight"), h, ParamKind::Small);
                if norm_tensors == 2 {
                    push(format!("{prefix}.{norm}.bias"), h, ParamKind::Small);
                }
            }
        }
        push(format!("{final_norm}.weight"), h, ParamKind::Small);
        if norm_tensors == 2 {
            push(format!("{final_norm}.bias"), h, ParamKind::Small);
        }
        if !self.tied_embeddings {
            push(format!("{head_name}.weight"), embed, ParamKind::Embedding);
        }
        out
    }

    /// Total parameters (a tied LM head counted once).
    pub fn param_count(&self) -> u64 {
        self.params().iter().map(|p| p.numel).sum()
    }

    /// Parameters in the linear layers of the blocks (what 4-bit quantisation stores).
    pub fn linear_param_count(&self) -> u64 {
        self.params()
            .iter()
            .filter(|p| p.kind == ParamKind::Linear)
            .map(|p| p.numel)
            .sum()
    }
}

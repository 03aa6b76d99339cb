//! The shape of a decoder as the memory model and LoRA targeting need it: sizes, and the
//! parameter tensors with their HF names — read from the architecture's own weight table
//! ([`super::arch`]), so the names here are the names the loader, merge and export use.
use std::fmt;

use super::arch::{ArchSpec, WeightDesc, WeightKind, REGISTRY};

/// A registered architecture (see [`super::arch::REGISTRY`]). Two handles are
/// equal when they name the same architecture.
#[derive(Clone, Copy)]
pub struct Arch(&'static ArchSpec);

impl Arch {
    pub const fn new(spec: &'static ArchSpec) -> Self {
        Self(spec)
    }

    pub fn spec(&self) -> &'static ArchSpec {
        self.0
    }

    pub fn as_str(&self) -> &'static str {
        self.0.name
    }

    /// An architecture by its name or one of its HF `model_type`s ("llama", "qwen2",
    /// "gpt_neox", …).
    pub fn parse(s: &str) -> Option<Self> {
        REGISTRY
            .iter()
            .copied()
            .find(|a| a.0.name == s || a.0.hf_model_types.contains(&s) || a.0.aliases.contains(&s))
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Arch {}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Arch({})", self.0.name)
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

/// One linear layer inside a block, named as the architecture's weight table names it.
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
            arch: super::llama::ARCH,
            rotary_dim: 64,
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

    /// The weights of one block, by name suffix (the architecture's table).
    pub fn block_weights(&self) -> Vec<WeightDesc> {
        (self.arch.spec().tables.block)(self)
    }

    /// The weights outside the blocks (embedding, final norm, untied head), by full name.
    pub fn top_weights(&self) -> Vec<WeightDesc> {
        (self.arch.spec().tables.top)(self)
    }

    /// HF module name prefix of block `layer`, e.g. `model.layers.3`.
    pub fn block_prefix(&self, layer: usize) -> String {
        format!("{}.{layer}", self.arch.spec().block_prefix)
    }

    /// The linear layers of every block, in the weight table's order.
    pub fn linears(&self) -> Vec<LinearSpec> {
        let table = self.block_weights();
        let mut out = Vec::new();
        for layer in 0..self.layers {
            let prefix = self.block_prefix(layer);
            for w in &table {
                if let WeightKind::Linear {
                    in_f,
                    out_f,
                    bias,
                    reads_block_input,
                } = w.kind
                {
                    out.push(LinearSpec {
                        layer,
                        name: format!("{prefix}.{}", w.name),
                        in_f,
                        out_f,
                        bias,
                        reads_block_input,
                    });
                }
            }
        }
        out
    }

    /// Elements of the small (norm) tensors of one block.
    pub fn block_small_params(&self) -> usize {
        self.block_weights().iter().map(vector_len).sum()
    }

    /// Every parameter tensor, with HF names: embedding, block linears, block norms,
    /// final norm, untied head.
    pub fn params(&self) -> Vec<ParamTensor> {
        let top = self.top_weights();
        let mut out = Vec::new();
        let mut push = |name: String, numel: usize, kind: ParamKind| {
            out.push(ParamTensor {
                name,
                numel: numel as u64,
                kind,
            })
        };
        for w in &top {
            if let WeightKind::Embedding { vocab, hidden } = w.kind {
                push(
                    format!("{}.weight", w.name),
                    vocab * hidden,
                    ParamKind::Embedding,
                );
            }
        }
        for lin in self.linears() {
            push(
                format!("{}.weight", lin.name),
                lin.in_f * lin.out_f,
                ParamKind::Linear,
            );
            if lin.bias {
                push(format!("{}.bias", lin.name), lin.out_f, ParamKind::Small);
            }
        }
        let table = self.block_weights();
        for layer in 0..self.layers {
            let prefix = self.block_prefix(layer);
            for w in &table {
                if let WeightKind::Vector { len, .. } = w.kind {
                    push(format!("{prefix}.{}", w.name), len, ParamKind::Small);
                }
            }
        }
        for w in &top {
            if let WeightKind::Vector { len, .. } = w.kind {
                push(w.name.clone(), len, ParamKind::Small);
            }
        }
        for w in &top {
            if let WeightKind::Head { vocab, hidden } = w.kind {
                push(
                    format!("{}.weight", w.name),
                    vocab * hidden,
                    ParamKind::Embedding,
                );
            }
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

    /// Elements one block keeps for its backward pass per token, before LoRA (the
    /// architecture's own count of what its forward code keeps).
    pub fn block_kept_per_token(&self, ops: RowOps) -> f64 {
        (self.arch.spec().memory.block_kept_per_token)(self, ops)
    }

    /// Elements the final norm keeps for its backward pass per token.
    pub fn final_norm_kept_per_token(&self, ops: RowOps) -> f64 {
        (self.arch.spec().memory.final_norm_kept_per_token)(self, ops)
    }

    /// Elements `ops::Rope::apply` keeps per token for `heads` heads of this shape: the
    /// rotation's output, whether the fused kernel or the generic definition made it. When
    /// only part of a head rotates (GPT-NeoX), also the `cat` with the pass-through dims,
    /// and on the CPU in f32, where that part goes through the composed ops, their rotated
    /// half, two broadcast products and sum (4.5 × the rotated width) in place of the output.
    pub fn rope_kept_per_token(&self, heads: usize, ops: RowOps) -> f64 {
        let full = (heads * self.head_dim) as f64;
        let rot = (heads * self.rotary_dim.min(self.head_dim)) as f64;
        if self.rotary_dim >= self.head_dim {
            full
        } else if self.rotary_dim == 0 {
            0.0
        } else {
            match ops {
                RowOps::Fused => 4.5 * rot + full,
                RowOps::Generic => rot + full,
            }
        }
    }

    /// Elements attention keeps per token besides q, k and v: its merged output and, per
    /// head, one log-sum-exp (the CPU kernel, `model::fused_attention`) or a maximum and a
    /// normaliser (its device-generic definition, `model::generic_attention`; the larger
    /// is counted). Neither keeps a score-sized tensor: their backward recomputes the
    /// probabilities. (The composed ops, which would keep two, run only untracked.)
    pub fn attention_kept_per_token(&self) -> f64 {
        (self.q_dim() + 2 * self.heads) as f64
    }

    /// Score-sized elements alive at once inside one block's attention backward: the
    /// CPU kernel's probabilities and their gradient for one key/value head's group of
    /// query heads of one sequence; the generic definition's recomputed probabilities, the
    /// gradient of the probabilities and two temporaries of the softmax's backward, (b,
    /// heads, t, t) each.
    pub fn attention_backward_scores(&self, ops: RowOps, b: usize, t: usize) -> f64 {
        match ops {
            RowOps::Fused => 2.0 * (self.heads / self.kv_heads.max(1) * t * t) as f64,
            RowOps::Generic => 4.0 * (b * self.heads * t * t) as f64,
        }
    }
}

/// Which kernels a run's training step uses, for the memory plan: the CPU's (f32 on the
/// CPU: `model::fused_rows`, `model::fused_attention`) or the device-generic definitions
/// (other devices and dtypes, or the generic path forced: `model::generic_rows`,
/// `model::generic_attention`). Both keep only the outputs of RMSNorm, the rotation and
/// SwiGLU (the composed ops, run only untracked, would keep every intermediate: an RMSNorm
/// its square, mean, +eps, sqrt, quotient and product, SwiGLU `silu(gate)`) and leave no
/// gradient for an untrained input; they differ in what attention's backward holds at
/// once, and in a partial rotation (composed on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOps {
    Fused,
    Generic,
}

fn vector_len(w: &WeightDesc) -> usize {
    match w.kind {
        WeightKind::Vector { len, .. } => len,
        _ => 0,
    }
}

//! The memory model of a training run: bytes of weights, gradients, optimiser state,
//! activations and process overhead, per technique — shown before launch, compared with
//! the measured peak after.
//!
//! It models *this* implementation (candle's CPU autograd in f32, `train::step`'s plain
//! and checkpointed passes, `train::optim`'s AdamW and 8-bit AdamW), not PyTorch: candle
//! keeps every intermediate of the forward pass and also gradients of frozen inputs (see
//! [`activations`] for the derivation). The peak is taken in the steady state (optimiser
//! state allocated, i.e. from the second optimiser step on) as the largest of the phases
//! of one micro-batch's backward pass.
//!
//! ```
//! use ftlab::plan::{plan, ModelShape, PlanInput, Technique};
//! let p = plan(&PlanInput::new(ModelShape::smollm2_135m(), 1, 256, Technique::qlora(16)));
//! println!("{p}");
//! assert!(p.total < plan(&PlanInput::new(ModelShape::smollm2_135m(), 1, 256, Technique::baseline())).total);
//! ```
pub mod activations;
pub mod fit;
mod render;
pub mod shape;

use std::fmt;

pub use render::Comparison;
pub use shape::{Arch, LinearSpec, ModelShape, ParamKind, ParamTensor};

use crate::model::RowOps;
use activations::LoraOverlay;

/// Bits per parameter of a 4-bit (NF4/FP4) linear weight with double quantisation:
/// 4 + 8/64 (8-bit absmax per block of 64) + 32/(64·256) (an f32 scale per 256 absmax).
pub const NF4_DQ_BITS: f64 = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0);
/// Without double quantisation: 4 + 32/64 (an f32 absmax per block of 64).
pub const NF4_BITS: f64 = 4.5;
/// 8-bit AdamW: elements per quantisation block (one f32 absmax per moment per block).
pub const ADAM8_BLOCK: u64 = 256;
/// 8-bit AdamW: tensors with fewer elements keep f32 moments (bitsandbytes' rule).
pub const ADAM8_MIN_SIZE: u64 = 4096;
/// Resident memory of an idle worker process before any model is loaded: code pages,
/// the tokenizer, rayon's thread stacks, allocator metadata. Measured
/// (`tests/plan.rs`, `measure_idle_baseline`): a test binary is 4 MiB, 21 MiB with the
/// SmolLM2 tokenizer loaded from the GGUF (29 MiB peak while parsing); rounded up for the
/// larger `ftlab` binary.
pub const PROCESS_BASELINE: u64 = 32 << 20;
/// Beyond the f32 weights while loading: reader buffers, the raw bytes of the tensor being
/// dequantised, the `Var` copy of the last tensor. Measured on the SmolLM2 GGUF
/// (`measure_gguf_load`): 549 MiB resident after loading 513 MiB of f32 weights.
pub const LOAD_SLACK: u64 = 32 << 20;
/// Fraction of the blocks' kept per-token activations that the allocator keeps resident
/// by the end of a plain (non-checkpointed) backward pass: freed intermediate gradients
/// that glibc can neither reuse nor return. Measured on SmolLM2 (`diagnose_plain_phases`),
/// with the composed RMSNorm and RoPE: 0.31 full FT 1×256, 0.33 full FT 1×512, 0.25 QLoRA
/// 1×256. With the fused kernels (`model::fused_rows`), whose backward makes no
/// intermediate gradients (`measure_*_backward`, 1×256): 0.17 full FT, 0.04 LoRA, ~0 QLoRA;
/// their generic definitions (`model::generic_rows`) behave alike (`FTLAB_KERNELS=generic
/// ftlab bench`: within 9 % of the plan at 1×128 and 1×512 with this fraction).
const HEAP_SLACK: f64 = 0.1;

/// Memory of a model's text side while its GGUF loads, per vocabulary entry: the metadata's
/// token, score and type arrays and the tokenizer built from them are alive together until
/// the file is closed. Measured with `/usr/bin/time -f %M ftlab plan PRESET` (which reads
/// only the text side): 33 MiB peak for SmolLM2 (49,152 tokens), 177 MiB for Gemma 3
/// (262,144 tokens), i.e. about 700 bytes per token above a 0 MiB intercept.
pub const TEXT_BYTES_PER_TOKEN: u64 = 700;

/// Bits per element of a GGUF's stored embedding table, as the load peak counts it: Q8_0's
/// 8.5 (SmolLM2's file; Gemma 3's Q4_K_M file stores it at Q6_K's 6.56).
pub const GGUF_TABLE_BITS: f64 = 8.5;

/// Fraction of the f32 weights that stays resident after a 4-bit base is quantised from
/// them (glibc could keep freed heap chunks). Measured on SmolLM2
/// (`measure_qlora_backward`): 190 MiB resident after quantising against 179 MiB planned
/// weights — the dense copy is returned to the system, so none.
pub const QUANT_LOAD_RESIDUE: f64 = 0.0;

/// Device memory a CUDA process holds before any tensor: the context, the loaded kernel
/// modules (candle's PTX, cuBLAS) and cuBLAS's workspace. Not measured by ftlab yet (no
/// GPU was at hand); PyTorch and candle processes commonly show 300–600 MiB in
/// `nvidia-smi` before their first tensor. `scripts/gpu-check.sh` prints the measured
/// figure beside this one.
pub const CUDA_CONTEXT: u64 = 512 << 20;

/// What the plan predicts: process RAM of a CPU run, or device memory of a CUDA run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanDevice {
    #[default]
    Cpu,
    /// Device memory as NVML reports it for the process: the CUDA context instead of the
    /// process baseline; candle's stream-ordered allocator reuses freed blocks, so none of
    /// glibc's freed-chunk slack; the generic (tensor-op) 4-bit dequantisation's
    /// transients; loading puts only the final weights on the device.
    Cuda,
}

/// Which parameters train and how the base is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Technique {
    /// Every base weight is trainable (full fine-tuning).
    pub full: bool,
    pub lora: Option<LoraPlan>,
    /// Frozen base linear weights stored in 4 bits (NF4/FP4 with double quantisation);
    /// embeddings and norms stay dense. Only meaningful with a frozen base.
    pub quant4: bool,
    /// Per-block recomputation in the backward pass (`train::step`, checkpointing).
    pub gradient_checkpointing: bool,
    /// With checkpointing, the frozen base's matmul outputs are kept and only the rest of
    /// each block is recomputed (`model.selective_checkpointing`).
    pub selective_checkpointing: bool,
    /// Blockwise 8-bit AdamW moments instead of f32.
    pub optimizer_8bit: bool,
}

/// LoRA adapters as the memory model needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPlan {
    pub r: usize,
    pub targets: LoraTargets,
    /// Parameters of `modules_to_save` (trained in full next to the adapters).
    pub modules_to_save_params: u64,
    /// LoRA dropout > 0 (its masks are kept for backward).
    pub dropout: bool,
}

/// Which block linears get an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraTargets {
    /// Every linear layer of the blocks (not the LM head), PEFT's "all-linear".
    AllLinear,
    /// Module names matched as PEFT does: the full name or a dotted suffix (`q_proj`).
    Names(Vec<String>),
}

impl LoraTargets {
    pub fn matches(&self, module: &str) -> bool {
        match self {
            LoraTargets::AllLinear => true,
            LoraTargets::Names(ns) => ns
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
        }
    }
}

impl LoraPlan {
    pub fn all_linear(r: usize) -> Self {
        Self {
            r,
            targets: LoraTargets::AllLinear,
            modules_to_save_params: 0,
            dropout: false,
        }
    }
}

impl Technique {
    /// Full fine-tuning, AdamW, no checkpointing.
    pub fn baseline() -> Self {
        Self {
            full: true,
            lora: None,
            quant4: false,
            gradient_checkpointing: false,
            selective_checkpointing: false,
            optimizer_8bit: false,
        }
    }

    /// Full fine-tuning with per-block gradient checkpointing.
    pub fn grad_ckpt() -> Self {
        Self {
            gradient_checkpointing: true,
            ..Self::baseline()
        }
    }

    /// LoRA (rank r, all linears) on a frozen f32 base, no checkpointing.
    pub fn lora(r: usize) -> Self {
        Self {
            full: false,
            lora: Some(LoraPlan::all_linear(r)),
            quant4: false,
            gradient_checkpointing: false,
            selective_checkpointing: false,
            optimizer_8bit: false,
        }
    }

    /// QLoRA: LoRA on a frozen 4-bit base.
    pub fn qlora(r: usize) -> Self {
        Self {
            quant4: true,
            ..Self::lora(r)
        }
    }

    pub fn with_checkpointing(mut self, on: bool) -> Self {
        self.gradient_checkpointing = on;
        self
    }

    /// Checkpointing that keeps the frozen base's matmul outputs.
    pub fn with_selective_checkpointing(mut self) -> Self {
        self.gradient_checkpointing = true;
        self.selective_checkpointing = true;
        self
    }

    pub fn with_8bit_optimizer(mut self, on: bool) -> Self {
        self.optimizer_8bit = on;
        self
    }

    /// A short name: "full FT", "LoRA r16 + ckpt", "QLoRA r16 + 8-bit AdamW"...
    pub fn describe(&self) -> String {
        let mut s = match (&self.lora, self.full, self.quant4) {
            (Some(l), false, true) => format!("QLoRA r{}", l.r),
            (Some(l), false, false) => format!("LoRA r{}", l.r),
            (Some(l), true, _) => format!("full FT + LoRA r{}", l.r),
            (None, true, _) => "full FT".to_string(),
            (None, false, _) => "frozen".to_string(),
        };
        if self.gradient_checkpointing {
            s.push_str(if self.selective_checkpointing {
                " + selective ckpt"
            } else {
                " + grad ckpt"
            });
        }
        if self.optimizer_8bit {
            s.push_str(" + 8-bit AdamW");
        }
        s
    }

    fn quantized_base(&self) -> bool {
        self.quant4 && !self.full
    }
}

/// Everything the plan depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub shape: ModelShape,
    pub batch_size: usize,
    /// Tokens of the longest training row: the step's peak is at the batch holding it,
    /// every row of a batch being padded to the batch's longest.
    pub seq_len: usize,
    /// With gradient accumulation, tokens of the longest row of a micro-batch that is not
    /// the first of its optimiser step (the earlier micro-batches' gradients are alive
    /// during its backward); 0 when there is none.
    pub accum_seq_len: usize,
    /// The steps after the first, when the run's rows are known: tokens of the longest
    /// row of a micro-batch that starts such a step and of one that accumulates into it
    /// (0 and 0: the run has one step). The optimiser's state is created by the first
    /// step, so the first step's micro-batches (`seq_len`, `accum_seq_len`) run without
    /// it; `None` plans every step with it.
    pub steady: Option<SteadyRows>,
    /// Tokens of the longest evaluation row (evaluation runs forward-only batches of the
    /// micro-batch size); 0 when the run has no evaluation set.
    pub eval_seq_len: usize,
    /// Bytes per element of weights and activations: 4 on the CPU (f32). The model is
    /// exact for f32; for 16-bit it scales the dense parts (norm, softmax and loss
    /// internals that run in f32 are not modelled separately).
    pub compute_dtype_bytes: usize,
    /// Micro-batches per optimiser step. With more than one, the accumulated gradients of
    /// earlier micro-batches are alive during each later backward pass.
    pub grad_accum_steps: usize,
    pub technique: Technique,
    /// RAM of a CPU run or VRAM of a CUDA run.
    pub device: PlanDevice,
}

/// The padded row lengths a run meets, read from its tokenised data: the longest row of a
/// micro-batch that starts an optimiser step, of one that does not (0 without gradient
/// accumulation), and of evaluation (0 without an evaluation set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowLengths {
    pub first: usize,
    pub later: usize,
    pub eval: usize,
    /// The steps after the first (0 and 0: one step).
    pub steady: SteadyRows,
}

/// The longest rows of the optimiser steps after the first: of the micro-batch that
/// starts a step, and of the ones that accumulate into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteadyRows {
    pub first: usize,
    pub later: usize,
}

impl PlanInput {
    /// The row-wise ops the run's forward uses: `model::fused_rows`' kernels for f32 on
    /// the CPU (unless the generic path is forced), the composed ops otherwise.
    pub fn row_ops(&self) -> RowOps {
        let fused = self.device == PlanDevice::Cpu
            && self.compute_dtype_bytes == 4
            && !crate::model::generic::generic_forced();
        if fused {
            RowOps::Fused
        } else {
            RowOps::Generic
        }
    }

    /// f32, no gradient accumulation.
    pub fn new(shape: ModelShape, batch_size: usize, seq_len: usize, technique: Technique) -> Self {
        Self {
            shape,
            batch_size,
            seq_len,
            accum_seq_len: seq_len,
            steady: None,
            eval_seq_len: seq_len,
            compute_dtype_bytes: 4,
            grad_accum_steps: 1,
            technique,
            device: PlanDevice::Cpu,
        }
    }
}

/// Predicted memory of a run, in bytes. `total` is the predicted steady-state peak of a
/// training step; `load_peak` the peak while loading (reached before training starts, and
/// part of a process's VmHWM unless it is reset after loading).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub weights: u64,
    /// Trainable-parameter gradients plus the stray gradients candle keeps for frozen
    /// inputs until the step's `GradStore` is dropped.
    pub gradients: u64,
    pub optimizer: u64,
    /// The largest live set of the backward pass beyond weights, gradients and optimiser
    /// state: kept forward intermediates plus backward transients.
    pub activations: u64,
    pub overhead: u64,
    pub total: u64,
    pub load_peak: u64,
    pub params: u64,
    pub trainable_params: u64,
    /// "frozen forward", "full FT + grad ckpt", ...
    pub label: String,
    /// Sub-items behind the components (name, bytes), for a detail view.
    pub details: Vec<(String, u64)>,
    /// What is predicted: process RAM (CPU) or device memory (CUDA).
    pub device: PlanDevice,
}

impl MemoryPlan {
    /// The peak a process should reach over its life: training peak or loading peak.
    pub fn expected_peak(&self, include_load: bool) -> u64 {
        if include_load {
            self.total.max(self.load_peak)
        } else {
            self.total
        }
    }

    /// The same plan without optimiser state (a forward + backward with no step yet).
    pub fn without_optimizer(&self) -> MemoryPlan {
        let mut p = self.clone();
        p.total -= p.optimizer;
        p.optimizer = 0;
        p.label = format!("{} (no optimiser state)", p.label);
        p
    }

    /// The moment of the optimiser's step after micro-batches whose gradients were added
    /// up in f32: the weights, the optimiser's state and 4 bytes of gradient per trainable
    /// parameter, nothing else (the plan of any micro-batch of the run's model and
    /// technique gives the first two).
    pub fn at_the_step_with_accumulated_gradients(&self) -> MemoryPlan {
        let mut p = self.clone();
        p.gradients = 4 * p.trainable_params;
        p.activations = 0;
        p.total = p.weights + p.gradients + p.optimizer + p.overhead;
        p.label = format!(
            "{} (the optimiser's step, gradients added up in f32)",
            p.label
        );
        p
    }

    pub fn compare(&self, measured_peak: u64) -> Comparison {
        Comparison::new(self.total, measured_peak)
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render::table(self, f)
    }
}

/// Optimiser state bytes for one trainable tensor.
fn optimizer_bytes(numel: u64, eight_bit: bool) -> u64 {
    if eight_bit && numel >= ADAM8_MIN_SIZE {
        2 * numel + 8 * numel.div_ceil(ADAM8_BLOCK)
    } else {
        8 * numel
    }
}

/// The memory plan of a training step (steady state) for `input`.
pub fn plan(input: &PlanInput) -> MemoryPlan {
    let s = &input.shape;
    let tech = &input.technique;
    let (b, t) = (input.batch_size.max(1), input.seq_len.max(1));
    let n = (b * t) as f64;
    let db = input.compute_dtype_bytes.max(1) as f64;
    let bytes = |elems: f64| (elems * db).round() as u64;
    let f32b = |elems: f64| (elems * 4.0).round() as u64;

    let params = s.params();
    let linears = s.linears();
    let total_params: u64 = params.iter().map(|p| p.numel).sum();
    let linear_params: u64 = params
        .iter()
        .filter(|p| p.kind == ParamKind::Linear)
        .map(|p| p.numel)
        .sum();
    let vh = (s.vocab * s.hidden) as f64;

    let lora = tech.lora.as_ref();
    let overlay = lora.map(|l| LoraOverlay {
        r: l.r,
        dropout: l.dropout,
    });
    let targets = |lin: &LinearSpec| lora.is_some_and(|l| l.targets.matches(&lin.name));
    let targeted: Vec<&LinearSpec> = linears.iter().filter(|l| targets(l)).collect();
    let lora_params: u64 = targeted
        .iter()
        .map(|l| (lora.map_or(0, |p| p.r) * (l.in_f + l.out_f)) as u64)
        .sum();
    let save_params = lora.map_or(0, |l| l.modules_to_save_params);
    let frozen_base = !tech.full;
    let quant = tech.quantized_base();
    // `modules_to_save` on a decoder trains a vocabulary table (the embedding, or an untied
    // head): its gradients cost what full fine-tuning's do.
    let embeddings_trainable = tech.full || save_params > 0;
    let trainable = if tech.full { total_params } else { 0 } + lora_params + save_params;
    let mut details = Vec::new();

    // ---- weights: dense params in the compute dtype; a 4-bit base stores its linear
    // weights at NF4_DQ_BITS; LoRA factors are f32 `Var`s.
    let base_weights = if quant {
        let q = (linear_params as f64 * NF4_DQ_BITS / 8.0).round() as u64;
        let dense = bytes((total_params - linear_params) as f64);
        details.push(("4-bit linear weights".into(), q));
        details.push(("dense embeddings and norms".into(), dense));
        q + dense
    } else {
        bytes(total_params as f64)
    };
    let lora_weights = f32b(lora_params as f64);
    if lora_params > 0 {
        details.push(("LoRA factors".into(), lora_weights));
    }
    // The model's own trained tensors (full fine-tuning, `modules_to_save`): in a model
    // narrower than f32 the optimiser updates f32 masters of them, made when it is built
    // (`train::optim::MasterWeights`).
    let model_trained = if tech.full { total_params } else { 0 } + save_params;
    let masters = if db < 4.0 {
        f32b(model_trained as f64)
    } else {
        0
    };
    if masters > 0 {
        details.push(("f32 master weights".into(), masters));
    }
    let loaded_weights = base_weights + lora_weights;
    let weights = loaded_weights + masters;

    // ---- optimiser: AdamW m and v per trainable tensor (8 bytes/param), or 8-bit.
    let eight = tech.optimizer_8bit;
    let mut optimizer = 0u64;
    if tech.full {
        optimizer += params
            .iter()
            .map(|p| optimizer_bytes(p.numel, eight))
            .sum::<u64>();
    }
    let r = lora.map_or(0, |l| l.r) as u64;
    for l in &targeted {
        optimizer += optimizer_bytes(r * l.in_f as u64, eight);
        optimizer += optimizer_bytes(r * l.out_f as u64, eight);
    }
    optimizer += optimizer_bytes(save_params, eight);

    // ---- gradients of trainable params: the model's tensors' in the compute dtype, the
    // LoRA factors' in f32.
    let grads = bytes(model_trained as f64) + f32b(lora_params as f64);
    let layer_grads = |layer: usize| -> f64 {
        let (mut model, mut lora) = (0.0, 0.0);
        for lin in linears.iter().filter(|l| l.layer == layer) {
            if tech.full {
                model +=
                    (lin.in_f * lin.out_f) as f64 + if lin.bias { lin.out_f as f64 } else { 0.0 };
            }
            if targets(lin) {
                lora += (r as usize * (lin.in_f + lin.out_f)) as f64;
            }
        }
        if tech.full {
            model += s.block_small_params() as f64;
        }
        model * db + lora * 4.0
    };

    // ---- per-layer activations and stray gradients.
    let ops = input.row_ops();
    let blocks_tracked = tech.full || !targeted.is_empty();
    let mut block_acts = Vec::with_capacity(s.layers);
    let mut per_token_sum = 0.0;
    let mut block_stray = Vec::with_capacity(s.layers);
    for layer in 0..s.layers {
        let lins: Vec<&LinearSpec> = linears.iter().filter(|l| l.layer == layer).collect();
        let per_token =
            activations::block_retained_per_token(s, &lins, overlay.as_ref(), &targets, ops);
        let acts = bytes(per_token * n);
        let stray = activations::block_stray(
            s,
            &lins,
            b * t,
            frozen_base,
            overlay.as_ref(),
            &targets,
            ops,
        );
        if blocks_tracked {
            per_token_sum += per_token;
        }
        block_acts.push(if blocks_tracked { acts } else { 0 });
        block_stray.push(if blocks_tracked { bytes(stray) } else { 0 });
    }
    let acts_blocks: u64 = block_acts.iter().sum();
    let stray_blocks: u64 = block_stray.iter().sum();
    let head_acts = bytes(activations::head_retained(s, b, t, ops));
    let cuda = input.device == PlanDevice::Cuda;
    let head_transient = activations::head_backward_transient(
        s,
        b,
        t,
        embeddings_trainable,
        (ops, db, cuda),
    )
    .round() as u64;
    let block_transient = bytes(activations::block_backward_transient(s, b, t, ops));
    let hidden_state = bytes(n * s.hidden as f64);
    // The embedding's backward: on the CPU its rows go into the step's gradient sink
    // (`model::grad_sink`, in place into a tied head's gradient, else into the table's
    // gradient, counted with the gradients); elsewhere `index_add` makes a new V×h table
    // while the old one is alive.
    let embed_grad_transient = if embeddings_trainable && cuda {
        bytes(vh)
    } else {
        0
    };
    // The earlier micro-batches' gradients, added up in f32 (`train::step::accumulate`).
    let accum_prev = if input.grad_accum_steps > 1 {
        f32b(trainable as f64)
    } else {
        0
    };

    // Activation-shaped transients of the 4-bit custom op: one dequantised weight at a time
    // (on a GPU, the generic dequantisation's tensors: the codes as f32, the two nibbles,
    // the indices and the values, about four weight-sized f32 tensors at once).
    let dequant_scratch = if quant {
        linears
            .iter()
            .map(|l| f32b((l.in_f * l.out_f) as f64) * if cuda { 4 } else { 1 })
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    // Freed chunks glibc keeps resident; a CUDA stream-ordered pool reuses them.
    let malloc_slack = if cuda { 0.0 } else { 1.0 };

    let (gradients, dynamic) = if !tech.gradient_checkpointing {
        // `train::step::forward_backward`, plain: the loss owns every block's
        // intermediates until the end of backward.
        let kept = hidden_state + acts_blocks + head_acts;
        details.push(("kept forward intermediates".into(), kept));
        // Phase 1: crossing the head (few param gradients yet; one chunk of logits).
        let head_phase = kept + head_transient + accum_prev;
        // Phase 2: end of backward: every gradient, every stray gradient, the embedding's
        // `index_add` making a new V×h table while the old one is alive.
        let stray = stray_blocks;
        // Gradients of intermediates are made and freed block after block while the kept
        // activations and new stray gradients stay allocated around them, so glibc cannot
        // reuse or return all of the freed chunks: measured (`diagnose_plain_phases`) 0.25-
        // 0.33 × each block's kept (non-score) activations stay resident by the end.
        let heap_slack = bytes(malloc_slack * HEAP_SLACK * n * per_token_sum);
        details.push(("freed gradients kept by malloc".into(), heap_slack));
        let end_phase = kept
            + grads
            + stray
            + heap_slack
            + embed_grad_transient
            + block_transient
            + dequant_scratch
            + accum_prev;
        let gradients = grads + stray;
        details.push(("stray gradients (frozen inputs)".into(), stray));
        (
            gradients,
            head_phase.max(end_phase).saturating_sub(gradients),
        )
    } else {
        // `train::step::forward_backward`, checkpointed: every block input (detached; the
        // first shares the embedding output) + the `Var` copy of the last hidden state;
        // the head graph (normed states; the fused loss keeps no logits) stays alive to the end because `loss` is
        // read after the block loop.
        let checkpoints = hidden_state * (s.layers as u64 + 1);
        details.push(("block inputs (checkpoints)".into(), checkpoints));
        // Selective checkpointing: every frozen matmul's output of every block, kept from
        // the forward pass until its block is recomputed (`model::linear::recompute`).
        let kept_matmuls = if tech.selective_checkpointing && frozen_base {
            bytes(n * linears.iter().map(|l| l.out_f as f64).sum::<f64>())
        } else {
            0
        };
        if kept_matmuls > 0 {
            details.push((
                "kept frozen-matmul outputs (selective)".into(),
                kept_matmuls,
            ));
        }
        let inputs = checkpoints + kept_matmuls;
        details.push(("head graph (final norm)".into(), head_acts));
        // Each block's intermediates are built (tracked) and freed once per forward and
        // once per recompute; glibc keeps those freed heap chunks resident (tensors under
        // its 32 MiB mmap threshold), interleaved with the live checkpoints. Measured
        // (`diagnose_ckpt_phases`): about one block's intermediates after the forward,
        // two during the backward over the blocks.
        // With a 4-bit base about one block's worth stays (its intermediates are smaller
        // and interleave with the dequantised weights, which are freed at once): measured
        // on SmolLM2 QLoRA, 258 / 313 / 413 MiB at 1×128 / 1×256 / 2×256 against 283 /
        // 356 / 493 predicted with two blocks (`ftlab bench qlora`).
        // With the fused row kernels (`RowOps::Fused`) a block makes fewer, larger
        // intermediates and about half as much stays: the shipped 4-bit preset at 2×256
        // measured 346 MiB against 391 predicted with one block (`tests/process_peak.rs`).
        let one_block = block_acts.iter().copied().max().unwrap_or(0);
        let blocks_kept = match (quant, ops) {
            (true, RowOps::Fused) => 0.2,
            (true, RowOps::Generic) => 1.0,
            (false, _) => 2.0,
        };
        let kept_free = (malloc_slack * blocks_kept * one_block as f64) as u64;
        if kept_free > 0 {
            details.push(("freed block intermediates kept by malloc".into(), kept_free));
        }
        let head_phase = inputs + head_acts + head_transient + accum_prev + kept_free / 2;
        // Recomputing block i: its intermediates, its stray gradients, the upstream
        // gradient and `out · upstream` (+ its stray gradient), with every gradient of
        // the blocks above (worst at block 0: all of them).
        let worst_block = (0..s.layers)
            .map(|i| block_acts[i] + block_stray[i])
            .max()
            .unwrap_or(0);
        let max_stray = block_stray.iter().copied().max().unwrap_or(0);
        let layer_grad_max = (0..s.layers)
            .map(|l| (layer_grads(l)).round() as u64)
            .max()
            .unwrap_or(0);
        let accum_block = if input.grad_accum_steps > 1 {
            layer_grad_max
        } else {
            0
        };
        let block_phase = inputs
            + kept_free
            + head_acts
            + grads
            + worst_block
            + block_transient
            + 3 * hidden_state
            + dequant_scratch
            + accum_block;
        // The embedding table's backward (full FT), while every other gradient is alive:
        // on the CPU its rows go into a new V×h gradient in the step's sink, which for a
        // tied table is then added to the head's (`a + g`, one more); elsewhere
        // `index_add` into a new V×h table and the accumulation.
        let embed_tables = if cuda || s.tied_embeddings { 2 } else { 0 };
        let embed_phase = if embeddings_trainable {
            inputs + kept_free + head_acts + grads + embed_tables * bytes(vh) + 2 * hidden_state
        } else {
            0
        };
        let gradients = grads + max_stray;
        details.push(("stray gradients (one block)".into(), max_stray));
        let dynamic = head_phase.max(block_phase).max(embed_phase);
        (gradients, dynamic.saturating_sub(gradients))
    };

    let baseline = if cuda { CUDA_CONTEXT } else { PROCESS_BASELINE };
    let overhead = baseline
        + if quant && !cuda {
            (total_params as f64 * 4.0 * QUANT_LOAD_RESIDUE) as u64
        } else {
            0
        };
    let total = weights + gradients + optimizer + dynamic + overhead;
    // Loading: every tensor is dequantised to f32 (GGUF) and becomes a `Var` or a frozen
    // tensor one at a time, so the peak is the whole f32 model at the end of loading plus
    // reader slack; an untied LM head is loaded last and its f32 tensor and `Var` copy
    // briefly coexist. A 4-bit base is quantised linear by linear as it loads (the dense
    // model is never held): the peak is then the 4-bit linears, the dense rest, one linear
    // in f32 and the text side (the GGUF's vocabulary metadata and the tokenizer).
    let last_copy = if s.tied_embeddings { 0 } else { 2 * f32b(vh) };
    let text_side = TEXT_BYTES_PER_TOKEN * s.vocab as u64;
    let load_peak = if cuda {
        // Tensors reach the device one at a time from host memory; a 4-bit base is
        // quantised from its dense copy, one linear at a time.
        let largest_linear = linears
            .iter()
            .map(|l| bytes((l.in_f * l.out_f) as f64))
            .max()
            .unwrap_or(0);
        baseline + loaded_weights + if quant { largest_linear } else { last_copy }
    } else if quant {
        let largest_linear = linears
            .iter()
            .map(|l| f32b((l.in_f * l.out_f) as f64))
            .max()
            .unwrap_or(0);
        // The embedding table loads first: its stored bytes (taken at Q8_0's 8.5 bits; a
        // Q6_K table is smaller) and its f32 copy are alive together for a moment.
        let table_load = (vh * GGUF_TABLE_BITS / 8.0) as u64 + f32b(vh);
        PROCESS_BASELINE + text_side + (loaded_weights + largest_linear).max(table_load)
    } else {
        PROCESS_BASELINE
            + LOAD_SLACK.max(text_side)
            + f32b(total_params as f64)
            + last_copy
            + lora_weights
    };
    MemoryPlan {
        weights,
        gradients,
        optimizer,
        activations: dynamic,
        overhead,
        total,
        load_peak,
        params: total_params,
        trainable_params: trainable,
        label: tech.describe(),
        details,
        device: input.device,
    }
}

/// The plan of the training step's worst micro-batch: the first of a step (no accumulated
/// gradients alive yet) at `seq_len`, or a later one at `accum_seq_len` with the earlier
/// micro-batches' gradients alive, whichever needs more. With the run's rows known
/// (`steady`), the first step (the longest rows come first with `group_by_length`) is
/// planned without the optimiser's state, which it creates at its end (every gradient
/// alive: the steady step at its shortest covers that moment), and the later steps with
/// it at their own rows.
pub fn step_plan(input: &PlanInput) -> MemoryPlan {
    let micro = |seq_len: usize, grad_accum_steps: usize| {
        plan(&PlanInput {
            seq_len: seq_len.max(1),
            grad_accum_steps,
            ..input.clone()
        })
    };
    let step = |first_len: usize, later_len: usize| {
        let first = micro(first_len, 1);
        if input.grad_accum_steps <= 1 || later_len == 0 {
            return first;
        }
        let later = micro(later_len, input.grad_accum_steps);
        if later.total > first.total {
            later
        } else {
            first
        }
    };
    let opening = step(input.seq_len, input.accum_seq_len);
    match input.steady {
        None => opening,
        Some(rows) => {
            let label = opening.label.clone();
            let mut opening = opening.without_optimizer();
            opening.label = format!("{label} (the first step, before the optimiser's state)");
            let mut steady = step(rows.first, rows.later);
            steady.label = match rows.first.max(rows.later) {
                // No later step: this plan is the first step's end, the state made.
                0 => format!("{} (the optimiser's step)", steady.label),
                n => format!("{} (a later step, rows up to {n} tokens)", steady.label),
            };
            // The optimiser's state is made at the end of the first step, while the
            // gradients its micro-batches added up (in f32: `train::step::accumulate`) are
            // alive. A later step's plan covers that moment only if it has micro-batches
            // to add up too.
            if input.grad_accum_steps > 1 && input.accum_seq_len > 0 {
                let end = micro(1, 1).at_the_step_with_accumulated_gradients();
                if end.total > steady.total {
                    steady = end;
                }
            }
            if steady.total >= opening.total {
                steady
            } else {
                opening
            }
        }
    }
}

/// The predicted peak of a whole training process: loading, the training step at the
/// longest training row, and evaluation (forward-only, at the longest evaluation row),
/// whichever is highest.
pub fn process_peak(input: &PlanInput) -> u64 {
    let train = step_plan(input).expected_peak(true);
    if input.eval_seq_len == 0 {
        return train;
    }
    let eval = PlanInput {
        seq_len: input.eval_seq_len,
        ..input.clone()
    };
    train.max(plan_forward(&eval).total)
}

/// Memory of a forward pass with the loss and no gradients (evaluation, perplexity): the
/// weights of `input`'s technique and the largest transient live set. Without a `Var`
/// nothing is tracked, so each intermediate is freed as soon as the next op has read it;
/// the peak is at the loss (one chunk of the fused LM-head loss, see
/// [`activations::head_forward_transient`]) or inside a block (two score tensors, a few
/// (t, I)).
pub fn plan_forward(input: &PlanInput) -> MemoryPlan {
    let mut p = plan(input);
    let s = &input.shape;
    let (b, t) = (input.batch_size.max(1), input.seq_len.max(1));
    let db = input.compute_dtype_bytes.max(1) as f64;
    let cuda = input.device == PlanDevice::Cuda;
    let head = activations::head_forward_transient(s, b, t, (input.row_ops(), db, cuda));
    let scores = (b * s.heads * t * t) as f64;
    let block =
        2.0 * scores + (b * t) as f64 * (3.0 * s.intermediate as f64 + 5.0 * s.hidden as f64);
    let acts = head.max(block * db).round() as u64;
    p.gradients = 0;
    p.optimizer = 0;
    p.activations = acts;
    p.total = p.weights + acts + p.overhead;
    p.trainable_params = 0;
    p.label = format!("forward only, {}", input.technique.describe());
    p.details = vec![("largest transient (loss chunk or block)".into(), acts)];
    p
}

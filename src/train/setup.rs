//! Turning a run config into a trainable model: load, quantise the frozen base (QLoRA),
//! attach adapters (LoRA) or make everything trainable (full fine-tuning).
use anyhow::Result;
use candle_core::{DType, Device};

use super::sft_task::SftData;
use super::trainer::TrainModel;
use crate::adapt::peft::apply_lora;
use crate::adapt::peft::TargetModules;
use crate::config::{OptimizerKind, QuantKind, RunConfig};
use crate::infer::LanguageModel;
use crate::model::linear::Quant4Kind;
use crate::model::{ArchConfig, CausalLm, LoadOptions};
use crate::plan::{
    process_peak, LoraPlan, LoraTargets, PlanDevice, PlanInput, RowLengths, SteadyRows, Technique,
};

/// Parameters of the whole model (4-bit weights counted by their logical size).
pub fn count_params(model: &CausalLm) -> usize {
    use crate::model::arch::Weight;
    model
        .weights()
        .iter()
        .map(|w| match w.weight {
            Weight::Linear(l) | Weight::OptLinear(Some(l)) => {
                l.in_features() * l.out_features() + l.bias().map_or(0, |b| b.elem_count())
            }
            Weight::OptLinear(None) => 0,
            Weight::Tensor(t) => t.elem_count(),
        })
        .sum()
}

/// Replaces every transformer linear weight by a frozen 4-bit copy.
pub fn quantize_base(model: &mut CausalLm, kind: Quant4Kind, double_quant: bool) -> Result<()> {
    for (_, l) in model.linears_mut() {
        crate::adapt::quantize::quantize_base(l, kind, double_quant)?;
    }
    Ok(())
}

/// Loads the model of `cfg` onto `device` ready to train, with the language side
/// (tokenizer, template).
pub fn prepare(cfg: &RunConfig, device: &Device) -> Result<(LanguageModel, TrainModel)> {
    // A 4-bit base is quantised tensor by tensor while loading: the dense model is never
    // held in memory.
    let quant4 = match cfg.model.quant {
        QuantKind::None => None,
        QuantKind::Nf4 => Some((Quant4Kind::Nf4, cfg.model.double_quant)),
        QuantKind::Fp4 => Some((Quant4Kind::Fp4, cfg.model.double_quant)),
    };
    let opts = LoadOptions {
        device: device.clone(),
        dtype: cfg.compute_dtype(device),
        trainable: cfg.lora.is_none(),
        quant4,
        keep_quantized: false, // training reads dense weights
    };
    let mut lm = LanguageModel::load_spec(&cfg.model.spec, &opts)?;
    let params = match &cfg.lora {
        // Adapters are f32 master weights whatever the compute dtype (cast where used).
        Some(l) => apply_lora(&mut lm.model, l, DType::F32, &opts.device, cfg.train.seed)?,
        None => std::mem::take(&mut lm.params),
    };
    let total_params = count_params(&lm.model);
    // The f32 buffers of loading (and of the dense weights quantisation replaced) are free
    // now; hand them back so they do not count against the run's memory.
    crate::telemetry::memory::release_free_heap();
    // What the steps free is reused by the next step rather than faulted in again.
    crate::telemetry::memory::keep_freed_heap();
    let tm = TrainModel {
        model: lm.model.clone(),
        params,
        total_params,
        base_name: cfg.model.spec.clone(),
        neftune_alpha: cfg.data.neftune_alpha,
    };
    Ok((lm, tm))
}

/// The memory-plan input of a run config for a model of architecture `arch`. `rows` are the
/// row lengths of the run's tokenised data; without them every row is planned at
/// `data.max_seq_len` (an upper bound).
pub fn plan_input(cfg: &RunConfig, arch: &ArchConfig, rows: Option<RowLengths>) -> PlanInput {
    let shape = arch.shape();
    // A `modules_to_save` entry names a module (`embed_tokens`, `lm_head`): its weight is
    // trained in full.
    let saved_params = |modules: &[String]| -> u64 {
        shape
            .params()
            .iter()
            .filter(|p| {
                let module = p.name.strip_suffix(".weight").unwrap_or(&p.name);
                modules
                    .iter()
                    .any(|m| module == m || module.ends_with(&format!(".{m}")))
            })
            .map(|p| p.numel)
            .sum()
    };
    let lora = cfg.lora.as_ref().map(|l| LoraPlan {
        r: l.r,
        targets: match &l.target_modules {
            TargetModules::Preset(_) => LoraTargets::AllLinear,
            TargetModules::Names(n) => LoraTargets::Names(n.clone()),
        },
        modules_to_save_params: saved_params(&l.modules_to_save),
        dropout: l.dropout > 0.0,
    });
    let technique = Technique {
        full: cfg.lora.is_none(),
        lora,
        quant4: cfg.model.quant != QuantKind::None,
        gradient_checkpointing: cfg.model.gradient_checkpointing,
        selective_checkpointing: cfg.model.selective_checkpointing,
        optimizer_8bit: cfg.train.optimizer == OptimizerKind::Adamw8bit,
    };
    // Memory follows the micro-batch actually run, not the batch it is a part of.
    let max = cfg.data.max_seq_len;
    let mut input = PlanInput::new(
        shape,
        cfg.train.micro_batch(),
        rows.map_or(max, |r| r.first.min(max)),
        technique,
    );
    (input.accum_seq_len, input.eval_seq_len) = match rows {
        Some(r) => (r.later.min(max), r.eval.min(max)),
        None => (max, if cfg.data.eval.is_some() { max } else { 0 }),
    };
    input.steady = rows.map(|r| SteadyRows {
        first: r.steady.first.min(max),
        later: r.steady.later.min(max),
    });
    input.grad_accum_steps = cfg.train.micro_batches_per_step();
    input.compute_dtype_bytes = cfg
        .compute_dtype_on_gpu(cfg.model.device.may_be_gpu())
        .size_in_bytes();
    // A run that computes on a GPU is planned in device memory (`auto` means the GPU in a
    // CUDA build).
    input.device = if cfg.model.device.may_be_gpu() {
        PlanDevice::Cuda
    } else {
        PlanDevice::Cpu
    };
    input
}

/// The memory-plan input of a run config, from the model's metadata (no weights are
/// loaded) and, when given, its tokenised data; STS runs have no plan.
pub fn plan_input_for(cfg: &RunConfig, data: Option<&SftData>) -> Result<PlanInput> {
    if cfg.task == crate::config::TaskKind::Sts {
        anyhow::bail!(
            "`{}`: the memory plan models causal-LM training only; STS runs (task = \"sts\") are measured (ftlab train prints RSS), not predicted",
            cfg.name
        );
    }
    let rows = data.map(|d| row_lengths(cfg, d)).transpose()?;
    Ok(plan_input(cfg, &arch_of(cfg)?, rows))
}

/// The architecture of `cfg`'s model, from its metadata (no weights are loaded).
pub fn arch_of(cfg: &RunConfig) -> Result<ArchConfig> {
    let resolved = crate::hub::resolve(&cfg.model.spec)?;
    crate::model::causal::arch_config_of(&resolved.source)
}

/// The predicted peak of the whole process training `cfg` on a model of architecture
/// `arch` at `cfg`'s micro-batch: loading, the training step and evaluation, with the row
/// lengths of `data` (every row at `data.max_seq_len` without it).
pub fn predicted_process_peak(
    cfg: &RunConfig,
    arch: &ArchConfig,
    data: Option<&SftData>,
) -> Result<u64> {
    let rows = data.map(|d| row_lengths(cfg, d)).transpose()?;
    Ok(process_peak(&plan_input(cfg, arch, rows)))
}

/// The row lengths `cfg`'s run meets in `data` at its micro-batch: every micro-batch of
/// every optimiser step the run takes, walked as the trainer takes them (`grad_accum`
/// batches per step, an epoch's end closing a step; `Trainer::run`), without making a
/// tensor.
pub fn row_lengths(cfg: &RunConfig, data: &SftData) -> Result<RowLengths> {
    let t = &cfg.train;
    let grad_accum = t.grad_accum.max(1);
    let mut rows = RowLengths {
        eval: match &data.eval {
            Some(e) => e
                .micro_batch_lengths(0, t.micro_batch(), t.micro_batch(), t.seed)?
                .iter()
                .flatten()
                .copied()
                .max()
                .unwrap_or(0),
            None => 0,
        },
        ..RowLengths::default()
    };
    let (mut steps, mut epoch) = (0usize, 0usize);
    // Until `max_steps` (returned from inside), or through the epochs.
    while t.max_steps > 0 || epoch < t.epochs.max(1) {
        let batches =
            data.train
                .micro_batch_lengths(epoch, t.batch_size, t.micro_batch(), t.seed)?;
        if batches.is_empty() {
            break;
        }
        for (b, micros) in batches.iter().enumerate() {
            for (k, &len) in micros.iter().enumerate() {
                let starts_step = b % grad_accum == 0 && k == 0;
                let (slot, steady) = if starts_step {
                    (&mut rows.first, &mut rows.steady.first)
                } else {
                    (&mut rows.later, &mut rows.steady.later)
                };
                *slot = (*slot).max(len);
                if steps > 0 {
                    *steady = (*steady).max(len);
                }
            }
            if (b + 1) % grad_accum == 0 || b + 1 == batches.len() {
                steps += 1;
                if t.max_steps > 0 && steps >= t.max_steps {
                    return Ok(rows);
                }
            }
        }
        epoch += 1;
    }
    Ok(rows)
}

/// The tokenised data of `cfg` (no weights load); relative template paths resolve against
/// `base`.
pub fn plan_data(cfg: &RunConfig, base: &std::path::Path) -> Result<SftData> {
    super::sft_task::load_data(cfg, base, &Device::Cpu)
}

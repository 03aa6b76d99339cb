//! Turning a run config into a trainable model: load, quantise the frozen base (QLoRA),
//! attach adapters (LoRA) or make everything trainable (full fine-tuning).
use anyhow::Result;
use candle_core::{DType, Device};

use super::trainer::TrainModel;
use crate::adapt::peft::apply_lora;
use crate::adapt::peft::TargetModules;
use crate::config::{OptimizerKind, QuantKind, RunConfig};
use crate::infer::LanguageModel;
use crate::model::linear::Quant4Kind;
use crate::model::{ArchConfig, CausalLm, LoadOptions};
use crate::plan::{plan, LoraPlan, LoraTargets, MemoryPlan, PlanDevice, PlanInput, Technique};

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
    let tm = TrainModel {
        model: lm.model.clone(),
        params,
        total_params,
        base_name: cfg.model.spec.clone(),
        neftune_alpha: cfg.data.neftune_alpha,
    };
    Ok((lm, tm))
}

/// The memory-plan input of a run config for a model of architecture `arch`.
pub fn plan_input(cfg: &RunConfig, arch: &ArchConfig) -> PlanInput {
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
        optimizer_8bit: cfg.train.optimizer == OptimizerKind::Adamw8bit,
    };
    // Memory follows the micro-batch actually run, not the batch it is a part of.
    let mut input = PlanInput::new(
        shape,
        cfg.train.micro_batch(),
        cfg.data.max_seq_len,
        technique,
    );
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

/// The memory plan of a run config, from the model's metadata (no weights are loaded).
pub fn plan_for(cfg: &RunConfig) -> Result<MemoryPlan> {
    if cfg.task == crate::config::TaskKind::Sts {
        anyhow::bail!(
            "`{}`: the memory plan models causal-LM training only; STS runs (task = \"sts\") are measured (ftlab train prints RSS), not predicted",
            cfg.name
        );
    }
    Ok(plan(&plan_input(cfg, &arch_of(cfg)?)))
}

/// The architecture of `cfg`'s model, from its metadata (no weights are loaded).
pub fn arch_of(cfg: &RunConfig) -> Result<ArchConfig> {
    let resolved = crate::hub::resolve(&cfg.model.spec)?;
    crate::model::causal::arch_config_of(&resolved.source)
}

/// The predicted peak memory (bytes) of training `cfg` on `model`.
pub fn predict_peak(cfg: &RunConfig, model: &CausalLm) -> Result<u64> {
    Ok(plan(&plan_input(cfg, model.config())).expected_peak(false))
}

//! Run configuration: a preset TOML file, plus `--set key=value` overrides, resolved into
//! one `RunConfig` that is written next to the run's results.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::adapt::peft::LoraConfig;

/// Serde through `Display` / `FromStr`, for a typed value that stays a plain string in
/// TOML and JSON (a `FromStr` error becomes the deserialisation error, which toml locates).
macro_rules! serde_as_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_string;

mod batch;
mod device;
mod dtype;
mod format;
mod sts;
mod template;
mod toml_error;
pub use device::{cuda_built, device_name, DeviceChoice, CUDA_BUILD_HINT};
pub use dtype::ComputeDtype;
pub use format::FormatChoice;
pub use sts::LabelScale;
pub use template::{BuiltinTemplate, TemplateChoice};
use toml_error::{describe_toml_error, describe_toml_error_key};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Short name shown in the dashboard.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// What is trained: instruction SFT of a causal LM (default) or sentence similarity
    /// (STS) of an encoder.
    #[serde(default)]
    pub task: TaskKind,
    pub model: ModelConfig,
    /// Present = LoRA (or QLoRA with `model.quant`); absent = full fine-tuning.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    pub data: DataConfig,
    pub train: TrainConfig,
}

/// The kind of training a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Instruction SFT of a causal LM (`data.format` dolly / alpaca / chat).
    #[default]
    Sft,
    /// Sentence-pair similarity of a BERT encoder (`data.format` auto / jsonl / csv / tsv;
    /// `sentence1`, `sentence2`, `label` 0–5).
    Sts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QuantKind {
    #[default]
    None,
    Nf4,
    Fp4,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A default model name (smollm2), a .gguf file, an HF directory or hf:org/name.
    pub spec: String,
    /// Frozen base weights stored in 4 bits (QLoRA); needs `[lora]`.
    #[serde(default)]
    pub quant: QuantKind,
    /// Quantise the 4-bit block scales again (QLoRA's double quantisation).
    #[serde(default = "yes")]
    pub double_quant: bool,
    /// Recompute each transformer block in the backward pass instead of keeping its
    /// activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With `gradient_checkpointing`: keep the output of every matmul with a frozen base
    /// weight (LoRA's, QLoRA's 4-bit one) and recompute only the rest of each block —
    /// norms, RoPE, attention, activations, the adapters (PyTorch's "selective activation
    /// checkpointing" saving the matmuls). Faster; costs one output per frozen linear per
    /// block and token (SmolLM2: 0.6 MiB per token in f32). Needs `[lora]`.
    #[serde(default)]
    pub selective_checkpointing: bool,
    /// Compute dtype: auto (bf16 on a GPU, f32 on the CPU; what is trained stays f32),
    /// f32, bf16 or f16.
    #[serde(default)]
    pub dtype: ComputeDtype,
    /// `auto` (the default: CUDA when built in and present, else the CPU), `cpu`, `cuda`
    /// or `cuda:N`.
    #[serde(default)]
    pub device: DeviceChoice,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// File shape: SFT reads auto, dolly, alpaca or chat (`messages`) JSONL; STS reads
    /// auto, jsonl, csv or tsv pair files.
    #[serde(default)]
    pub format: FormatChoice,
    /// "chat" (the model's own template), "plain-ja", "plain-en", inline Jinja, or a Jinja
    /// template file (relative to the preset).
    #[serde(default)]
    pub template: TemplateChoice,
    #[serde(default = "seq_default")]
    pub max_seq_len: usize,
    /// Loss on response tokens only (prompt tokens masked).
    #[serde(default = "yes")]
    pub response_only: bool,
    #[serde(default)]
    pub group_by_length: bool,
    #[serde(default)]
    pub packing: bool,
    /// NEFTune noise scale on the embeddings during training (0 = off; 5 is typical).
    #[serde(default)]
    pub neftune_alpha: f64,
    /// Use only the first N training examples (0 = all).
    #[serde(default)]
    pub limit: usize,
    /// Use only the first N eval examples (0 = all).
    #[serde(default)]
    pub eval_limit: usize,
    /// Keep only examples whose `lang` field is one of these (e.g. `["ja"]`); empty = all.
    /// Applied before `limit`/`eval_limit`.
    #[serde(default)]
    pub languages: Vec<String>,
    /// STS: the cosine a 0–5 label is trained towards: `signed` → [−1, 1], `unit` → [0, 1].
    #[serde(default)]
    pub label_scale: LabelScale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    /// Blockwise 8-bit AdamW (bitsandbytes-style moments).
    Adamw8bit,
}

/// `train.schedule`: the learning-rate curve after warmup (computed by
/// `train::schedule::LrSchedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "seed_default")]
    pub seed: u64,
    /// Examples per batch; an optimiser step takes `grad_accum` batches, so the effective
    /// batch is `batch_size × grad_accum`.
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Choose the micro-batch from the memory plan and the memory available before
    /// launch, and halve it after an out-of-memory death (`train::auto_batch`): each batch
    /// is then run as `batch_size / micro_batch_size` micro-batches, keeping the effective
    /// batch. `false` runs whole batches, as planned, whatever the memory.
    #[serde(default = "yes")]
    pub auto_batch: bool,
    /// The micro-batch actually run: a divisor of `batch_size` (unset = `batch_size`).
    /// With `auto_batch` it is an upper bound and the run records its choice here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<usize>,
    /// Optimiser steps; 0 = run `epochs` epochs.
    #[serde(default)]
    pub max_steps: usize,
    #[serde(default = "one")]
    pub epochs: usize,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "cosine")]
    pub schedule: ScheduleKind,
    /// Clip the global gradient norm (0 = off).
    #[serde(default = "one_f")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Evaluate every N optimiser steps (0 = only at the end of each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Evaluate the untrained model before the first step (the eval curve's start).
    #[serde(default = "yes")]
    pub eval_on_start: bool,
    /// Stop after this many evaluations without improvement (0 = never).
    #[serde(default)]
    pub early_stopping_patience: usize,
    /// Checkpoint every N steps (0 = only at the end).
    #[serde(default)]
    pub save_every: usize,
    /// Keep at most this many step checkpoints (the best is kept too).
    #[serde(default = "two")]
    pub save_total_limit: usize,
    /// Keep the checkpoint with the lowest eval loss as `best/`.
    #[serde(default = "yes")]
    pub keep_best: bool,
    /// Emit a step event every N steps.
    #[serde(default = "one")]
    pub log_every: usize,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn one_f() -> f64 {
    1.0
}
fn seed_default() -> u64 {
    42
}
fn seq_default() -> usize {
    256
}
fn cosine() -> ScheduleKind {
    ScheduleKind::Cosine
}

/// The technique a config amounts to, as the dashboard and `ftlab bench` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Technique {
    Baseline,
    GradCkpt,
    Lora,
    Qlora,
}

impl std::fmt::Display for Technique {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Technique::Baseline => "full fine-tuning",
            Technique::GradCkpt => "full FT + gradient checkpointing",
            Technique::Lora => "LoRA",
            Technique::Qlora => "QLoRA",
        })
    }
}

impl RunConfig {
    /// Loads a preset and applies `key=value` overrides (TOML values; bare words are
    /// strings). Errors name the file, the line and what was expected.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        // `builtin:presets/NAME.toml` is read from the binary (see `crate::builtin`).
        let text = crate::builtin::read_to_string(path)
            .with_context(|| format!("{}: cannot read preset", path.display()))?;
        let mut value: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow!("{}: {}", path.display(), describe_toml_error(&text, &e)))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let cfg: RunConfig = if overrides.is_empty() {
            toml::from_str(&text)
                .map_err(|e| anyhow!("{}: {}", path.display(), describe_toml_error(&text, &e)))?
        } else {
            // The merged table has no lines of the file; it is written out as TOML only so
            // that an error still names its key.
            let merged = toml::to_string(&value)?;
            toml::from_str(&merged).map_err(|e| {
                anyhow!(
                    "{} (after --set overrides): {}",
                    path.display(),
                    describe_toml_error_key(&merged, &e)
                )
            })?
        };
        cfg.validate().with_context(|| path.display().to_string())?;
        Ok(cfg)
    }

    pub fn from_toml_str(text: &str) -> Result<Self> {
        let cfg: RunConfig =
            toml::from_str(text).map_err(|e| anyhow!(describe_toml_error(text, &e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The dtype this run computes in on `device` (`model.dtype`, `auto` resolved).
    pub fn compute_dtype(&self, device: &candle_core::Device) -> candle_core::DType {
        self.compute_dtype_on_gpu(!device.is_cpu())
    }

    /// [`Self::compute_dtype`] on a GPU (`gpu`) or not.
    pub fn compute_dtype_on_gpu(&self, gpu: bool) -> candle_core::DType {
        self.model.dtype.resolve(gpu)
    }

    pub fn technique(&self) -> Technique {
        match (&self.lora, self.model.quant) {
            (Some(_), QuantKind::Nf4 | QuantKind::Fp4) => Technique::Qlora,
            (Some(_), QuantKind::None) => Technique::Lora,
            (None, _) if self.model.gradient_checkpointing => Technique::GradCkpt,
            (None, _) => Technique::Baseline,
        }
    }

    /// The technique, with "sentence similarity" in front for STS runs (for lists that mix
    /// both tracks).
    pub fn technique_label(&self) -> String {
        match self.task {
            TaskKind::Sft => self.technique().to_string(),
            TaskKind::Sts => format!("sentence similarity · {}", self.technique()),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.model.quant != QuantKind::None && self.lora.is_none() {
            bail!(
                "model.quant = 4-bit needs a [lora] section: 4-bit base weights are frozen (QLoRA)"
            );
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if self.model.selective_checkpointing {
            if !self.model.gradient_checkpointing {
                bail!(
                    "model.selective_checkpointing = true chooses what gradient checkpointing keeps: set model.gradient_checkpointing = true too"
                );
            }
            if self.lora.is_none() {
                bail!(
                    "model.selective_checkpointing = true keeps the outputs of frozen base weights, and full fine-tuning has none: it needs a [lora] section"
                );
            }
        }
        let t = &self.train;
        if t.batch_size == 0 || t.grad_accum == 0 {
            bail!("train.batch_size and train.grad_accum must be at least 1");
        }
        if let Some(m) = t.micro_batch_size {
            if m == 0 || !t.batch_size.is_multiple_of(m) {
                bail!(
                    "train.micro_batch_size must divide train.batch_size ({}) so that every optimiser step sees the same examples, got {m}",
                    t.batch_size
                );
            }
        }
        if t.max_steps == 0 && t.epochs == 0 {
            bail!("set train.max_steps or train.epochs");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            bail!(
                "train.max_grad_norm must be a number ≥ 0 (0 turns clipping off), got {}",
                t.max_grad_norm
            );
        }
        if self.data.max_seq_len < 8 {
            bail!("data.max_seq_len must be at least 8");
        }
        if self.data.neftune_alpha < 0.0 {
            bail!("data.neftune_alpha must be ≥ 0");
        }
        match self.task {
            TaskKind::Sft => self.data.format.check(TaskKind::Sft)?,
            TaskKind::Sts => self.validate_sts()?,
        }
        Ok(())
    }
}

/// Applies one `a.b.c=value` override to a TOML table.
pub fn apply_override(table: &mut toml::Table, kv: &str) -> Result<()> {
    let (key, raw) = kv
        .split_once('=')
        .ok_or_else(|| anyhow!("--set `{kv}`: expected key=value, e.g. train.max_steps=20"))?;
    let key = key.trim();
    let raw = raw.trim();
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts
        .split_last()
        .ok_or_else(|| anyhow!("--set: empty key"))?;
    let mut cur = table;
    for p in path {
        cur = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set `{key}`: `{p}` is not a section"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESET: &str = r#"
name = "t"
[model]
spec = "smollm2"
[data]
train = "data/sft/train.jsonl"
[train]
lr = 1e-4
"#;

    #[test]
    fn overrides_apply_typed_values_and_create_sections() {
        let mut t: toml::Table = toml::from_str(PRESET).unwrap();
        apply_override(&mut t, "train.batch_size=8").unwrap();
        apply_override(&mut t, "lora.r=16").unwrap();
        apply_override(&mut t, "lora.alpha=32").unwrap();
        apply_override(&mut t, "model.spec=/tmp/x.gguf").unwrap();
        let cfg = RunConfig::deserialize(toml::Value::Table(t)).unwrap();
        assert_eq!(cfg.train.batch_size, 8);
        assert_eq!(cfg.lora.as_ref().unwrap().r, 16);
        assert_eq!(cfg.model.spec, "/tmp/x.gguf");
        assert_eq!(cfg.technique(), Technique::Lora);
    }

    /// `auto` gives bf16 on a GPU to every technique, f32 on the CPU.
    #[test]
    fn auto_dtype_is_bf16_on_a_gpu_for_every_technique() {
        use candle_core::DType;
        let with = |extra: &str| RunConfig::from_toml_str(&format!("{PRESET}{extra}")).unwrap();
        let lora = with("[lora]\nr = 8\nalpha = 16\n");
        let saved = with("[lora]\nr = 8\nalpha = 16\nmodules_to_save = [\"embed_tokens\"]\n");
        let full = with("");
        // What these train in the model's own tensors gets f32 masters (MasterWeights).
        for cfg in [&lora, &saved, &full] {
            assert_eq!(cfg.compute_dtype_on_gpu(true), DType::BF16);
            assert_eq!(cfg.compute_dtype_on_gpu(false), DType::F32);
        }
        let mut forced = saved;
        forced.model.dtype = ComputeDtype::Bf16;
        assert_eq!(forced.compute_dtype_on_gpu(false), DType::BF16);
    }

    #[test]
    fn selective_checkpointing_needs_checkpointing_and_a_frozen_base() {
        let with = |model: &str, extra: &str| {
            RunConfig::from_toml_str(&format!(
                "{}{extra}",
                PRESET.replace(
                    "spec = \"smollm2\"",
                    &format!("spec = \"smollm2\"\n{model}")
                )
            ))
        };
        let lora = "[lora]\nr = 8\nalpha = 16\n";
        let err = with("selective_checkpointing = true", lora).unwrap_err();
        assert!(
            format!("{err:#}").contains("model.gradient_checkpointing = true"),
            "{err:#}"
        );
        let both = "gradient_checkpointing = true\nselective_checkpointing = true";
        let err = with(both, "").unwrap_err();
        assert!(format!("{err:#}").contains("[lora]"), "{err:#}");
        let cfg = with(both, lora).unwrap();
        assert!(cfg.model.selective_checkpointing);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_with_a_line() {
        let bad = PRESET.replace("lr = 1e-4", "lr = 1e-4\nbatchsize = 3");
        let err = RunConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("line 9") && err.contains("batchsize"), "{err}");
        let bad = PRESET.replace("lr = 1e-4", "lr = \"fast\"");
        let err = RunConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("line 8"), "{err}");
    }

    /// Each typed value, misspelt: the error names the line, the key and what is allowed.
    #[test]
    fn unknown_enum_values_name_line_key_and_allowed_values() {
        let cases = [
            (
                "spec = \"smollm2\"",
                "dtype = \"f64\"",
                "line 5",
                "model.dtype",
                "`f32`, `bf16`, `f16`",
            ),
            (
                "spec = \"smollm2\"",
                "device = \"tpu\"",
                "line 5",
                "model.device",
                DeviceChoice::ALLOWED,
            ),
            (
                "spec = \"smollm2\"",
                "quant = \"nf8\"",
                "line 5",
                "model.quant",
                "`none`, `nf4`, `fp4`",
            ),
            (
                "train = \"data/sft/train.jsonl\"",
                "template = \"chta\"",
                "line 7",
                "data.template",
                TemplateChoice::ALLOWED,
            ),
            (
                "train = \"data/sft/train.jsonl\"",
                "format = \"xml\"",
                "line 7",
                "data.format",
                FormatChoice::ALLOWED,
            ),
            (
                "lr = 1e-4",
                "optimizer = \"sgd\"",
                "line 9",
                "train.optimizer",
                "`adamw` or `adamw8bit`",
            ),
            (
                "lr = 1e-4",
                "schedule = \"step\"",
                "line 9",
                "train.schedule",
                "`constant`, `linear`, `cosine`",
            ),
        ];
        for (after, bad, line, key, allowed) in cases {
            let text = PRESET.replace(after, &format!("{after}\n{bad}"));
            let err = RunConfig::from_toml_str(&text).unwrap_err().to_string();
            assert!(
                err.contains(line) && err.contains(key) && err.contains(allowed),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_bad_override_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, PRESET).unwrap();
        let err = RunConfig::load(&path, &["model.dtype=f64".into()]).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("after --set") && err.contains("model.dtype") && err.contains("`bf16`"),
            "{err}"
        );
    }

    #[test]
    fn typed_values_round_trip_through_to_toml() {
        let text = PRESET
            .replace(
                "spec = \"smollm2\"",
                "spec = \"smollm2\"\ndtype = \"bf16\"\ndevice = \"cuda\"",
            )
            .replace(
                "lr = 1e-4",
                "lr = 1e-4\nschedule = \"linear\"\noptimizer = \"adamw8bit\"",
            )
            .replace("[data]", "[data]\ntemplate = \"layouts/ja.jinja\"");
        let cfg = RunConfig::from_toml_str(&text).unwrap();
        assert_eq!(cfg.model.dtype.resolve(false), candle_core::DType::BF16);
        assert_eq!(cfg.model.device, DeviceChoice::Cuda(None));
        assert_eq!(
            cfg.data.template,
            TemplateChoice::File("layouts/ja.jinja".into())
        );
        let written = cfg.to_toml().unwrap();
        assert!(written.contains("device = \"cuda\""), "{written}");
        assert_eq!(RunConfig::from_toml_str(&written).unwrap(), cfg);
        let defaults = RunConfig::from_toml_str(PRESET).unwrap();
        assert_eq!(defaults.model.dtype, ComputeDtype::Auto);
        // auto: bf16 on a GPU, f32 on the CPU.
        assert_eq!(ComputeDtype::Auto.resolve(true), candle_core::DType::BF16);
        assert_eq!(ComputeDtype::Auto.resolve(false), candle_core::DType::F32);
        assert_eq!(defaults.model.device, DeviceChoice::Auto);
        assert_eq!(defaults.data.template, TemplateChoice::default());
    }

    /// `data.format` takes the union of both tasks' formats; each task reads only its own.
    #[test]
    fn data_format_is_checked_against_the_task() {
        let with = |format: &str, task: &str| {
            let text = PRESET
                .replace("[data]", &format!("[data]\nformat = \"{format}\""))
                .replace("name = \"t\"", &format!("name = \"t\"\ntask = \"{task}\""));
            RunConfig::from_toml_str(&text)
        };
        assert_eq!(
            with("messages", "sft").unwrap().data.format,
            FormatChoice::Chat
        );
        assert_eq!(with("CSV", "sts").unwrap().data.format, FormatChoice::Csv);
        let err = with("csv", "sft").unwrap_err().to_string();
        assert!(
            err.contains("data.format") && err.contains("auto, dolly, alpaca or chat"),
            "{err}"
        );
        let err = with("dolly", "sts").unwrap_err().to_string();
        assert!(
            err.contains("task = \"sts\"")
                && err.contains("data.format")
                && err.contains("auto, jsonl, csv or tsv"),
            "{err}"
        );
        let defaults = RunConfig::from_toml_str(PRESET).unwrap();
        assert_eq!(defaults.data.format, FormatChoice::Auto);
        assert!(defaults.to_toml().unwrap().contains("format = \"auto\""));
    }

    #[test]
    fn quantisation_without_lora_is_rejected() {
        let bad = PRESET.replace("spec = \"smollm2\"", "spec = \"smollm2\"\nquant = \"nf4\"");
        let err = RunConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("[lora]"), "{err}");
    }
}

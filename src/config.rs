//! Run configuration: a preset TOML file, plus `--set key=value` overrides, resolved into
//! one `RunConfig` that is written next to the run's results.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::adapt::peft::LoraConfig;
use crate::train::schedule::ScheduleKind;

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
    /// Compute dtype: f32 (CPU), bf16 or f16 (CUDA).
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// "cpu" or "cuda[:N]".
    #[serde(default = "cpu_name")]
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// JSONL shape: auto, dolly, alpaca or chat (`messages`).
    #[serde(default = "auto_name")]
    pub format: String,
    /// "chat" (the model's own template), "plain-ja", "plain-en", or a Jinja template file.
    #[serde(default = "chat_name")]
    pub template: String,
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
    /// STS: the cosine a 0–5 label is trained towards: `signed` → [−1, 1], `unit` → [0, 1].
    #[serde(default)]
    pub label_scale: crate::train::data::sts::LabelScale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    /// Blockwise 8-bit AdamW (bitsandbytes-style moments).
    Adamw8bit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "seed_default")]
    pub seed: u64,
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
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
fn f32_name() -> String {
    "f32".into()
}
fn cpu_name() -> String {
    "cpu".into()
}
fn auto_name() -> String {
    "auto".into()
}
fn chat_name() -> String {
    "chat".into()
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
        let text = std::fs::read_to_string(path)
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
            RunConfig::deserialize(toml::Value::Table(value)).map_err(|e| {
                anyhow!(
                    "{} (after --set overrides): {}",
                    path.display(),
                    e.message()
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
        let t = &self.train;
        if t.batch_size == 0 || t.grad_accum == 0 {
            bail!("train.batch_size and train.grad_accum must be at least 1");
        }
        if t.max_steps == 0 && t.epochs == 0 {
            bail!("set train.max_steps or train.epochs");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if self.data.max_seq_len < 8 {
            bail!("data.max_seq_len must be at least 8");
        }
        if self.data.neftune_alpha < 0.0 {
            bail!("data.neftune_alpha must be ≥ 0");
        }
        match self.model.dtype.as_str() {
            "f32" | "bf16" | "f16" => {}
            other => bail!("model.dtype `{other}`: expected f32, bf16 or f16"),
        }
        match self.task {
            TaskKind::Sft => {}
            TaskKind::Sts => crate::train::sts_task::validate_config(self)?,
        }
        Ok(())
    }
}

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_string(),
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

    #[test]
    fn unknown_keys_and_bad_values_are_reported_with_a_line() {
        let bad = PRESET.replace("lr = 1e-4", "lr = 1e-4\nbatchsize = 3");
        let err = RunConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("line 9") && err.contains("batchsize"), "{err}");
        let bad = PRESET.replace("lr = 1e-4", "lr = \"fast\"");
        let err = RunConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("line 8"), "{err}");
    }

    #[test]
    fn quantisation_without_lora_is_rejected() {
        let bad = PRESET.replace("spec = \"smollm2\"", "spec = \"smollm2\"\nquant = \"nf4\"");
        let err = RunConfig::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("[lora]"), "{err}");
    }
}

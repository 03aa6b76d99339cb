//! Instruction SFT of a causal LM: the run's data (files, template, batching) and the
//! `TrainTask` the training loop drives.
use std::path::Path;

use anyhow::{Context, Result};

use super::data::{
    keep_languages, load_jsonl, Batch, Batching, DataFormat, PromptTemplate, SftConfig, SftDataset,
    SftTokenizer, TemplateChoice,
};
use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use super::checkpoint::{save_vars, FULL_WEIGHTS};
use super::data::neftune_noise;
use super::setup;
use super::step::{eval_loss, forward_backward, Checkpointing, EmbedNoise};
use super::trainer::{Evaluation, TrainModel, TrainTask};
use crate::adapt::peft::{save_adapter, LoraConfig};
use crate::config::DataConfig;
use crate::config::RunConfig;
use crate::infer::lm::TextParts;
use crate::infer::LanguageModel;
use crate::model::export::TextSide;

/// `chat`, `plain-ja`, `plain-en`, inline Jinja, or the path of a Jinja template file
/// (relative paths resolve against `base`, the preset's directory); see [`TemplateChoice`].
pub fn prompt_template(name: &str, base: &Path) -> Result<PromptTemplate> {
    PromptTemplate::from_choice(&name.parse::<TemplateChoice>()?, base)
}

/// Loads and tokenises the train (and eval) files. Malformed lines are all reported, with
/// file and line, before any training starts.
pub fn build(
    data: &DataConfig,
    lm: &LanguageModel,
    base: &Path,
) -> Result<(SftDataset, Option<SftDataset>)> {
    build_from(data, lm.text_side(), lm.model.device(), base)
}

/// [`build`] from a model's text side, the batches made on `device`.
pub fn build_from(
    data: &DataConfig,
    text: TextSide<'_>,
    device: &Device,
    base: &Path,
) -> Result<(SftDataset, Option<SftDataset>)> {
    let format = DataFormat::try_from(data.format)?;
    let template = PromptTemplate::from_choice(&data.template, base)?;
    let tok = SftTokenizer::from_side(text, template)?;
    let batching = if data.packing {
        Batching::Packed
    } else if data.group_by_length {
        Batching::GroupByLength
    } else {
        Batching::Shuffled
    };
    let cfg = SftConfig {
        max_seq_len: data.max_seq_len,
        response_only: data.response_only,
        batching,
        device: device.clone(),
    };
    let load = |path: &Path, limit: usize| -> Result<Vec<_>> {
        let mut records = keep_languages(load_jsonl(path, format)?, &data.languages, path)?;
        if limit > 0 {
            records.truncate(limit);
        }
        Ok(records)
    };
    let train = SftDataset::build(&load(&data.train, data.limit)?, &tok, &cfg)
        .with_context(|| format!("{}: building the training set", data.train.display()))?;
    let eval = match &data.eval {
        Some(p) => {
            // Evaluation always sees whole samples in a fixed order.
            let eval_cfg = SftConfig {
                batching: Batching::Shuffled,
                ..cfg.clone()
            };
            Some(
                SftDataset::build(&load(p, data.eval_limit)?, &tok, &eval_cfg)
                    .with_context(|| format!("{}: building the eval set", p.display()))?,
            )
        }
        None => None,
    };
    Ok((train, eval))
}

/// Instruction SFT of a causal LM as a `TrainTask`.
pub struct SftTask {
    pub tm: TrainModel,
    pub train: SftDataset,
    pub eval: Option<SftDataset>,
    pub lora: Option<LoraConfig>,
    pub checkpointing: Checkpointing,
}

/// The train (and eval) sets of a run config, tokenised with its model's tokenizer before
/// any weight loads (data errors come first; the memory plan reads their row lengths), the
/// batches made on `device`.
pub fn load_data(cfg: &RunConfig, base: &Path, device: &Device) -> Result<SftData> {
    let text = TextParts::load(&crate::hub::resolve(&cfg.model.spec)?)?;
    let (train, eval) = build_from(&cfg.data, text.side(), device, base)?;
    // The text side (for Gemma 3 a 262k-token vocabulary, ~180 MiB while parsed) is
    // loaded again with the weights: hand its memory back first.
    drop(text);
    crate::telemetry::memory::release_free_heap();
    Ok(SftData { train, eval })
}

/// A run's tokenised training set and evaluation set.
pub struct SftData {
    pub train: SftDataset,
    pub eval: Option<SftDataset>,
}

impl SftTask {
    /// Loads the model (onto `device`) and the data of a run config.
    pub fn from_config(cfg: &RunConfig, base: &Path, device: &Device) -> Result<Self> {
        let data = load_data(cfg, base, device)?;
        Self::with_data(cfg, device, data)
    }

    /// Loads the model of a run config (onto `device`) to train on `data` (as
    /// [`load_data`] makes it).
    pub fn with_data(cfg: &RunConfig, device: &Device, data: SftData) -> Result<Self> {
        let SftData { train, eval } = data;
        let (_, tm) = setup::prepare(cfg, device)?;
        Ok(Self {
            tm,
            train,
            eval,
            lora: cfg.lora.clone(),
            checkpointing: Checkpointing::of(&cfg.model),
        })
    }
}

impl TrainTask for SftTask {
    type Batch = Batch;

    fn params(&self) -> &[(String, Var)] {
        &self.tm.params
    }
    fn total_params(&self) -> usize {
        self.tm.total_params
    }
    fn train_len(&self) -> usize {
        self.train.len()
    }
    fn eval_len(&self) -> usize {
        self.eval.as_ref().map_or(0, |e| e.len())
    }
    fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<Batch>> {
        self.train.batches(epoch, batch_size, seed)
    }
    fn split_batches(
        &self,
        epoch: usize,
        batch_size: usize,
        micro: usize,
        seed: u64,
    ) -> Result<Vec<Vec<Batch>>> {
        self.train.split_batches(epoch, batch_size, micro, seed)
    }

    fn forward_backward(
        &self,
        batch: &Batch,
        noise_seed: u64,
        accum: &mut [Option<Tensor>],
    ) -> Result<(f64, usize)> {
        let alpha = self.tm.neftune_alpha;
        let noise = move |x: &Tensor| neftune_noise(x, alpha, noise_seed);
        let noise_ref: EmbedNoise = if alpha > 0.0 { Some(&noise) } else { None };
        let (loss, _) = forward_backward(
            &self.tm.model,
            &self.tm.params,
            batch,
            self.checkpointing,
            noise_ref,
            accum,
        )?;
        // Throughput counts every processed token (prompt, response and padding).
        Ok((loss, batch.input_ids.elem_count()))
    }

    fn evaluate(&self, batch_size: usize, seed: u64) -> Result<Option<Evaluation>> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let (mut sum, mut n) = (0.0, 0usize);
        for b in eval.batches(0, batch_size, seed)? {
            let (loss, count) = eval_loss(&self.tm.model, &b)?;
            sum += loss * count as f64;
            n += count;
        }
        if n == 0 {
            return Ok(None);
        }
        let loss = sum / n as f64;
        let mut metrics = BTreeMap::new();
        metrics.insert("perplexity".to_string(), loss.exp());
        Ok(Some(Evaluation {
            loss,
            tokens: n,
            metrics,
            score: loss,
        }))
    }

    fn set_training(&mut self, training: bool) {
        self.tm.model.set_training(training);
    }

    fn save_weights(&mut self, dir: &Path, trained: &[(String, Var)]) -> Result<()> {
        match &self.lora {
            Some(cfg) => save_adapter(dir, &mut self.tm.model, cfg, &self.tm.base_name, trained),
            None => save_vars(&dir.join(FULL_WEIGHTS), trained),
        }
    }
}

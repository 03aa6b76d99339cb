//! The instruction-SFT data of a run: the config's files, template and batching turned
//! into datasets the trainer draws batches from.
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::data::{
    load_jsonl, Batch, Batching, DataFormat, PromptTemplate, SftConfig, SftDataset, SftTokenizer,
};
use super::trainer::BatchSource;
use crate::config::DataConfig;
use crate::infer::LanguageModel;

impl BatchSource for SftDataset {
    fn len(&self) -> usize {
        SftDataset::len(self)
    }
    fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<Batch>> {
        SftDataset::batches(self, epoch, batch_size, seed)
    }
}

pub fn data_format(name: &str) -> Result<DataFormat> {
    Ok(match name {
        "auto" => DataFormat::Auto,
        "dolly" => DataFormat::Dolly,
        "alpaca" => DataFormat::Alpaca,
        "chat" | "messages" => DataFormat::Chat,
        other => bail!("data.format `{other}`: expected auto, dolly, alpaca or chat"),
    })
}

/// `chat`, `plain-ja`, `plain-en`, or the path of a Jinja template file (relative paths
/// resolve against `base`, the preset's directory).
pub fn prompt_template(name: &str, base: &Path) -> Result<PromptTemplate> {
    match name.parse::<PromptTemplate>() {
        Ok(t) => Ok(t),
        Err(e) => {
            let path = base.join(name);
            if path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read template", path.display()))?;
                Ok(PromptTemplate::Custom(text))
            } else {
                Err(e)
            }
        }
    }
}

/// Loads and tokenises the train (and eval) files. Malformed lines are all reported, with
/// file and line, before any training starts.
pub fn build(
    data: &DataConfig,
    lm: &LanguageModel,
    base: &Path,
) -> Result<(SftDataset, Option<SftDataset>)> {
    let format = data_format(&data.format)?;
    let template = prompt_template(&data.template, base)?;
    let tok = SftTokenizer::new(lm, template)?;
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
        device: lm.model.device().clone(),
    };
    let load = |path: &Path, limit: usize| -> Result<Vec<_>> {
        let mut records = load_jsonl(path, format)?;
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

//! Supervised fine-tuning samples: tokenisation with response-only loss masks, truncation,
//! statistics and batching (shuffled, grouped by length, or packed).
//!
//! Tokenisation follows trl's `SFTTrainer` for prompt-completion data: the whole text
//! (prompt + response + end-of-turn) is tokenised at once, and the tokens of the prompt are
//! those the prompt alone tokenises to. When the tokens at a prompt/response boundary merge
//! (the prompt's tokens are not a prefix of the whole text's), the merged token is counted as
//! response and the sample is counted in [`SftStats::boundary_merges`].
//!
//! A [`Batch`] holds next-token targets: `targets[i] = input_ids[i + 1]` for every row,
//! flattened, with `loss_mask` 1 where the target token is counted. Rows are padded on the
//! right; with causal attention, padding after the real tokens cannot affect them, so no
//! attention mask is needed.
//!
//! `tokenize.rs` turns examples into ids and response masks; `batch.rs` orders samples and
//! pads them into [`Batch`]es; this file builds the dataset (truncation, statistics).

use std::fmt;

use anyhow::{bail, Result};
use candle_core::Device;

use super::example::{DataError, Problem, Record};

mod batch;
mod tokenize;
pub use batch::{Batch, Batching};
pub use tokenize::{SftTokenizer, Tokenized};

/// How many dropped samples [`SftStats::warnings`] names one by one.
const MAX_WARNINGS: usize = 20;

/// One tokenised training sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftSample {
    pub input_ids: Vec<u32>,
    /// Per token: 1 = counted in the loss as a prediction target (predicted from the tokens
    /// before it). The response tokens with `response_only`, every token without. The first
    /// token of a row is never a target.
    pub labels_mask: Vec<u8>,
    /// Index of the example in the records the dataset was built from.
    pub example_index: usize,
    /// Token count before truncation.
    pub full_len: usize,
    /// Cut to `max_seq_len`.
    pub truncated: bool,
}

impl SftSample {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Targets counted in the loss (positions 1.. with a set mask).
    pub fn counted_targets(&self) -> usize {
        self.labels_mask.iter().skip(1).filter(|&&m| m != 0).count()
    }
}

/// How samples are built and batched.
#[derive(Debug, Clone)]
pub struct SftConfig {
    /// Longest sample (and packed row) in tokens; longer ones are cut from the right.
    pub max_seq_len: usize,
    /// Loss on response tokens only (trl's `completion_only_loss`); `false` counts every token.
    pub response_only: bool,
    pub batching: Batching,
    /// Where batches are put.
    pub device: Device,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            max_seq_len: 512,
            response_only: true,
            batching: Batching::Shuffled,
            device: Device::Cpu,
        }
    }
}

/// What tokenisation did to the examples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SftStats {
    pub examples: usize,
    /// Samples kept (possibly truncated).
    pub kept: usize,
    /// Kept samples cut to `max_seq_len`.
    pub truncated: usize,
    /// Examples dropped because truncation left no response token.
    pub dropped: usize,
    pub max_seq_len: usize,
    /// Token length before truncation, over all examples.
    pub mean_len: f64,
    pub max_len: usize,
    pub min_len: usize,
    /// 95th percentile of the length before truncation.
    pub p95_len: usize,
    /// Mean length of the kept samples after truncation.
    pub mean_kept_len: f64,
    /// Response tokens counted in the loss over the kept samples.
    pub response_tokens: usize,
    /// All tokens of the kept samples.
    pub total_tokens: usize,
    /// Samples whose prompt/response boundary fell inside a token.
    pub boundary_merges: usize,
    /// One line per dropped example (`file:line: ...`), the first 20.
    pub warnings: Vec<String>,
}

impl fmt::Display for SftStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} examples: {} kept, {} truncated to {} tokens, {} dropped (response truncated away); \
             length mean {:.1}, p95 {}, max {} (min {}); {} tokens, {} in responses",
            self.examples,
            self.kept,
            self.truncated,
            self.max_seq_len,
            self.dropped,
            self.mean_len,
            self.p95_len,
            self.max_len,
            self.min_len,
            self.total_tokens,
            self.response_tokens
        )?;
        if self.boundary_merges > 0 {
            write!(
                f,
                "; {} samples with a token spanning the prompt/response boundary",
                self.boundary_merges
            )?;
        }
        Ok(())
    }
}

/// Tokenised SFT samples that make batches.
#[derive(Debug, Clone)]
pub struct SftDataset {
    samples: Vec<SftSample>,
    pad_id: u32,
    max_seq_len: usize,
    batching: Batching,
    device: Device,
    stats: SftStats,
}

impl SftDataset {
    /// Tokenises every record. Examples that cannot be formatted (a chat template that fails,
    /// a conversation a plain template cannot take) are all reported together as a
    /// [`DataError`] naming file and line. Samples longer than `max_seq_len` are cut from the
    /// right; one whose response is cut away entirely is dropped and counted (with a warning
    /// line in the statistics).
    pub fn build(records: &[Record], tok: &SftTokenizer, cfg: &SftConfig) -> Result<Self> {
        if cfg.max_seq_len < 2 {
            bail!("max_seq_len must be at least 2 (got {})", cfg.max_seq_len);
        }
        if records.is_empty() {
            bail!("no training examples");
        }
        let mut problems = Vec::new();
        let mut samples = Vec::with_capacity(records.len());
        let mut stats = SftStats {
            examples: records.len(),
            max_seq_len: cfg.max_seq_len,
            ..Default::default()
        };
        let mut full_lens = Vec::with_capacity(records.len());
        for (index, rec) in records.iter().enumerate() {
            let t = match tok.tokenize(&rec.example) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem {
                        file: rec.file.clone(),
                        line: Some(rec.line),
                        message: format!("{e:#}"),
                    });
                    continue;
                }
            };
            full_lens.push(t.input_ids.len());
            stats.boundary_merges += usize::from(t.boundary_merge);
            match make_sample(t, index, cfg) {
                Some(s) => samples.push(s),
                None => {
                    stats.dropped += 1;
                    if stats.warnings.len() < MAX_WARNINGS {
                        stats.warnings.push(format!(
                            "{}: dropped: the response starts after token {} (the prompt alone \
                             fills max_seq_len)",
                            rec.origin(),
                            cfg.max_seq_len
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(DataError {
                stage: "formatting training examples".to_string(),
                problems,
            }
            .into());
        }
        if stats.dropped > MAX_WARNINGS {
            stats.warnings.push(format!(
                "... and {} more dropped",
                stats.dropped - MAX_WARNINGS
            ));
        }
        let mut ds = Self::from_samples(samples, tok.pad_id(), cfg)?;
        stats.kept = ds.samples.len();
        stats.truncated = ds.samples.iter().filter(|s| s.truncated).count();
        stats.total_tokens = ds.samples.iter().map(|s| s.len()).sum();
        stats.response_tokens = ds.samples.iter().map(|s| s.counted_targets()).sum();
        stats.mean_kept_len = if ds.samples.is_empty() {
            0.0
        } else {
            stats.total_tokens as f64 / ds.samples.len() as f64
        };
        full_lens.sort_unstable();
        if let (Some(&min), Some(&max)) = (full_lens.first(), full_lens.last()) {
            stats.min_len = min;
            stats.max_len = max;
            stats.mean_len = full_lens.iter().sum::<usize>() as f64 / full_lens.len() as f64;
            let rank = ((full_lens.len() as f64) * 0.95).ceil() as usize;
            stats.p95_len = full_lens[rank.clamp(1, full_lens.len()) - 1];
        }
        ds.stats = stats;
        Ok(ds)
    }

    /// A dataset of ready samples (tests, custom pipelines). Samples are used as they are
    /// (not truncated); empty ones are an error.
    pub fn from_samples(samples: Vec<SftSample>, pad_id: u32, cfg: &SftConfig) -> Result<Self> {
        if samples.is_empty() {
            bail!(
                "no training samples are left (every example's response was cut away by \
                 max_seq_len = {}?)",
                cfg.max_seq_len
            );
        }
        if let Some(s) = samples
            .iter()
            .find(|s| s.input_ids.len() != s.labels_mask.len())
        {
            bail!(
                "sample {} has {} ids but {} mask entries",
                s.example_index,
                s.input_ids.len(),
                s.labels_mask.len()
            );
        }
        if cfg.batching == Batching::Packed && cfg.max_seq_len < 2 {
            bail!("packing needs max_seq_len of at least 2");
        }
        let stats = SftStats {
            examples: samples.len(),
            kept: samples.len(),
            max_seq_len: cfg.max_seq_len,
            ..Default::default()
        };
        Ok(Self {
            samples,
            pad_id,
            max_seq_len: cfg.max_seq_len,
            batching: cfg.batching,
            device: cfg.device.clone(),
            stats,
        })
    }

    pub fn samples(&self) -> &[SftSample] {
        &self.samples
    }

    /// Tokens of the longest row any batch holds: packed rows are `max_seq_len` long (or
    /// the whole stream, when shorter); otherwise each batch is padded to its longest
    /// sample, so the longest sample's batch is the longest.
    pub fn longest_row(&self) -> usize {
        let longest_sample = self.samples.iter().map(SftSample::len).max().unwrap_or(0);
        match self.batching {
            Batching::Packed => {
                let total: usize = self.samples.iter().map(SftSample::len).sum();
                total.min(self.max_seq_len)
            }
            _ => longest_sample,
        }
    }
    pub fn stats(&self) -> &SftStats {
        &self.stats
    }
    pub fn batching(&self) -> Batching {
        self.batching
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Truncates a tokenised example into a sample, or `None` when no response token is left
/// among the targets.
fn make_sample(t: Tokenized, example_index: usize, cfg: &SftConfig) -> Option<SftSample> {
    let full_len = t.input_ids.len();
    let keep = full_len.min(cfg.max_seq_len);
    let mut input_ids = t.input_ids;
    let mut response = t.response_mask;
    input_ids.truncate(keep);
    response.truncate(keep);
    if keep < 2 || response.iter().skip(1).all(|&m| m == 0) {
        return None;
    }
    let labels_mask = if cfg.response_only {
        response
    } else {
        vec![1u8; keep]
    };
    Some(SftSample {
        input_ids,
        labels_mask,
        example_index,
        full_len,
        truncated: keep < full_len,
    })
}

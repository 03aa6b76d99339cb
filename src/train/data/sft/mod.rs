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

use std::fmt;

use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

use super::example::{DataError, Example, Problem, Record};
use super::template::{Formatted, Formatter, PromptTemplate};
use crate::infer::LanguageModel;
use crate::model::load::tokenizer::{encode_plain, SpecialTokens};

/// How many dropped samples [`SftStats::warnings`] names one by one.
const MAX_WARNINGS: usize = 20;

/// A tokenizer with a prompt template: turns examples into token ids and loss masks.
pub struct SftTokenizer {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    formatter: Formatter,
    eos_id: u32,
    pad_id: u32,
    /// Ids the tokenizer's post-processor puts before a single sequence (BOS), if any.
    bos_prefix: Vec<u32>,
}

impl fmt::Debug for SftTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftTokenizer")
            .field("formatter", &self.formatter)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("bos_prefix", &self.bos_prefix)
            .finish_non_exhaustive()
    }
}

impl SftTokenizer {
    /// The model's tokenizer, special tokens and chat template with `template`.
    pub fn new(lm: &LanguageModel, template: PromptTemplate) -> Result<Self> {
        Self::from_parts(
            lm.tokenizer.clone(),
            lm.special.clone(),
            lm.chat_template.as_deref(),
            template,
        )
    }

    /// From a tokenizer, its special tokens and (for [`PromptTemplate::Chat`]) the chat
    /// template source. The tokenizer must have an EOS token; padding uses its pad token, or
    /// EOS when it has none.
    pub fn from_parts(
        tokenizer: Tokenizer,
        special: SpecialTokens,
        chat_template: Option<&str>,
        template: PromptTemplate,
    ) -> Result<Self> {
        let text_of = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let eos_id = special
            .eos
            .or_else(|| special.eos_tokens.first().copied())
            .ok_or_else(|| {
                anyhow!(
                    "the tokenizer has no end-of-sequence token; SFT needs one to end responses"
                )
            })?;
        let pad_id = special.pad.unwrap_or(eos_id);
        let bos_text = text_of(special.bos);
        let eos_text = text_of(Some(eos_id));
        let end_texts: Vec<String> = special
            .eos_tokens
            .iter()
            .map(|&i| text_of(Some(i)))
            .collect();
        let formatter = Formatter::new(template, chat_template, &bos_text, &eos_text, end_texts)?;
        // What the post-processor adds in front of a single sequence.
        let probe = "a";
        let with = tokenizer
            .encode(probe, true)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let without = tokenizer
            .encode(probe, false)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let (with, without) = (with.get_ids(), without.get_ids());
        let bos_prefix = match with
            .windows(without.len().max(1))
            .position(|w| w == without)
        {
            Some(at) if !without.is_empty() => with[..at].to_vec(),
            _ => Vec::new(),
        };
        Ok(Self {
            tokenizer,
            special,
            formatter,
            eos_id,
            pad_id,
            bos_prefix,
        })
    }

    /// A system message put before instruction examples under a chat template.
    pub fn with_system_prompt(mut self, system: Option<String>) -> Self {
        self.formatter.set_system_prompt(system);
        self
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }
    pub fn template(&self) -> &PromptTemplate {
        self.formatter.template()
    }
    /// The id appended after responses that do not end with an end-of-turn token.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    /// The id rows are padded with: the tokenizer's pad token, or EOS.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The example's text split into prompt and response segments.
    pub fn format(&self, example: &Example) -> Result<Formatted> {
        self.formatter.format(example)
    }

    /// The prompt text to generate the example's (last) response from, exactly as training
    /// puts it before the response.
    pub fn prompt_text(&self, example: &Example) -> Result<String> {
        self.formatter.prompt(example)
    }

    /// The prompt's token ids (with the BOS the tokenizer adds for plain templates), for
    /// generation.
    pub fn prompt_ids(&self, example: &Example) -> Result<Vec<u32>> {
        let text = self.prompt_text(example)?;
        let mut ids = if matches!(self.template(), PromptTemplate::Chat) {
            Vec::new()
        } else {
            self.bos_prefix.clone()
        };
        ids.extend(self.encode(&text)?);
        Ok(ids)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_plain(&self.tokenizer, text)
    }

    /// Tokenises an example, untruncated: ids and the response mask (1 = a response token,
    /// including the end-of-turn / EOS token).
    pub fn tokenize(&self, example: &Example) -> Result<Tokenized> {
        let formatted = self.format(example)?;
        let full: String = formatted.segments.iter().map(|s| s.text.as_str()).collect();
        let ids = self.encode(&full)?;
        // Token index where each segment starts: the length of the tokenised text before it,
        // where that is a prefix of the whole text's tokens.
        let mut starts = Vec::with_capacity(formatted.segments.len());
        let mut offset = 0;
        let mut merged = false;
        let mut prev = 0;
        for seg in &formatted.segments {
            let start = if offset == 0 {
                0
            } else {
                let prefix = self.encode(&full[..offset])?;
                let common = prefix.iter().zip(&ids).take_while(|(a, b)| a == b).count();
                if common != prefix.len() {
                    merged = true;
                }
                common
            };
            let start = start.max(prev);
            starts.push(start);
            prev = start;
            offset += seg.text.len();
        }
        let mut response_mask = vec![0u8; ids.len()];
        for (k, seg) in formatted.segments.iter().enumerate() {
            if !seg.train {
                continue;
            }
            let end = starts.get(k + 1).copied().unwrap_or(ids.len());
            for m in &mut response_mask[starts[k]..end] {
                *m = 1;
            }
        }
        let mut input_ids = Vec::with_capacity(ids.len() + 2);
        let mut mask = Vec::with_capacity(ids.len() + 2);
        if formatted.prepend_bos && !ids.starts_with(&self.bos_prefix) {
            input_ids.extend_from_slice(&self.bos_prefix);
            mask.extend(std::iter::repeat_n(0u8, self.bos_prefix.len()));
        }
        input_ids.extend_from_slice(&ids);
        mask.extend_from_slice(&response_mask);
        if formatted.append_eos {
            input_ids.push(self.eos_id);
            mask.push(1);
        }
        Ok(Tokenized {
            input_ids,
            response_mask: mask,
            boundary_merge: merged,
        })
    }
}

/// An example's tokens before truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub input_ids: Vec<u32>,
    /// 1 for response tokens (and the end-of-turn / EOS token closing them).
    pub response_mask: Vec<u8>,
    /// A prompt/response boundary fell inside a token (see the module documentation).
    pub boundary_merge: bool,
}

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

/// The order samples are batched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batching {
    /// A seeded shuffle each epoch; each batch is padded to its longest sample.
    #[default]
    Shuffled,
    /// Like Hugging Face's `LengthGroupedSampler`: a seeded shuffle, then mega-batches of
    /// `min(n / (4·batch_size), 50)·batch_size` samples are each sorted by length and cut into
    /// batches, so that a batch holds samples of similar length (little padding); the batches
    /// are shuffled, and the one holding the longest sample comes first (an out-of-memory shows
    /// at the first step).
    GroupByLength,
    /// Samples (shuffled each epoch) are concatenated into one stream and cut into rows of
    /// exactly `max_seq_len` tokens (the last row padded). As in trl's default ("wrapped")
    /// packing, attention crosses sample boundaries within a row, and a sample may be split
    /// across two rows. The dataset's length is then the number of rows.
    Packed,
}

impl std::str::FromStr for Batching {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "shuffled" | "shuffle" | "random" => Ok(Self::Shuffled),
            "group-by-length" | "grouped" | "length" => Ok(Self::GroupByLength),
            "packed" | "packing" | "pack" => Ok(Self::Packed),
            other => {
                bail!("unknown batching `{other}`; expected shuffled, group-by-length or packed")
            }
        }
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

/// A training batch of next-token targets.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(b, t)` u32, padded on the right.
    pub input_ids: Tensor,
    /// `(b·(t-1),)` u32: row by row, `input_ids[r][i + 1]` for `i` in `0..t-1`.
    pub targets: Tensor,
    /// `(b·(t-1),)` f32: 1 where the target is counted, 0 for prompt and padding.
    pub loss_mask: Tensor,
    /// Targets counted (the sum of `loss_mask`).
    pub tokens: usize,
}

impl Batch {
    /// Builds a batch from rows of (ids, labels mask), padding with `pad_id` to the longest.
    pub fn from_rows(rows: &[(&[u32], &[u8])], pad_id: u32, device: &Device) -> Result<Self> {
        if rows.is_empty() {
            bail!("a batch needs at least one row");
        }
        let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        if t < 2 {
            bail!("a batch needs rows of at least 2 tokens (one input, one target)");
        }
        let b = rows.len();
        let mut input = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * (t - 1));
        let mut mask = Vec::with_capacity(b * (t - 1));
        let mut tokens = 0;
        for (ids, labels) in rows {
            if ids.len() != labels.len() {
                bail!(
                    "a row has {} ids but {} mask entries",
                    ids.len(),
                    labels.len()
                );
            }
            input.extend_from_slice(ids);
            input.extend(std::iter::repeat_n(pad_id, t - ids.len()));
            for i in 0..t - 1 {
                let j = i + 1;
                if j < ids.len() {
                    targets.push(ids[j]);
                    let counted = labels[j] != 0;
                    mask.push(if counted { 1f32 } else { 0f32 });
                    tokens += usize::from(counted);
                } else {
                    targets.push(pad_id);
                    mask.push(0f32);
                }
            }
        }
        Ok(Self {
            input_ids: Tensor::from_vec(input, (b, t), device)?,
            targets: Tensor::from_vec(targets, b * (t - 1), device)?,
            loss_mask: Tensor::from_vec(mask, b * (t - 1), device)?,
            tokens,
        })
    }

    /// `(b, t)`.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.input_ids.dims();
        (d[0], d[1])
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

/// A seed for one epoch.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(seed ^ splitmix(epoch as u64))
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

    /// Samples per epoch; with [`Batching::Packed`], packed rows.
    pub fn len(&self) -> usize {
        match self.batching {
            Batching::Packed => {
                // A last row of a single token has no target and is left out.
                let total: usize = self.samples.iter().map(|s| s.len()).sum();
                total / self.max_seq_len + usize::from(total % self.max_seq_len >= 2)
            }
            _ => self.samples.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.len().div_ceil(batch_size.max(1))
    }

    /// What each batch of an epoch is made of: sample indices, or with [`Batching::Packed`]
    /// indices into [`SftDataset::packed_rows`]. Deterministic in `(epoch, seed)`.
    pub fn batch_plan(&self, epoch: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        if self.batching == Batching::Packed {
            let rows: Vec<usize> = (0..self.len()).collect();
            return rows.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect();
        }
        let batch_size = batch_size.max(1);
        let mut rng = StdRng::seed_from_u64(epoch_seed(seed, epoch));
        let n = self.samples.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        match self.batching {
            Batching::Shuffled | Batching::Packed => {
                order.chunks(batch_size).map(|c| c.to_vec()).collect()
            }
            Batching::GroupByLength => {
                let mult = (n / (batch_size * 4)).clamp(1, 50);
                let mega = mult * batch_size;
                let mut batches: Vec<Vec<usize>> = Vec::with_capacity(n.div_ceil(batch_size));
                for chunk in order.chunks(mega) {
                    let mut chunk = chunk.to_vec();
                    chunk.sort_by_key(|&i| std::cmp::Reverse(self.samples[i].len()));
                    batches.extend(chunk.chunks(batch_size).map(|c| c.to_vec()));
                }
                batches.shuffle(&mut rng);
                let longest = batches
                    .iter()
                    .enumerate()
                    .max_by_key(|(k, b)| {
                        (
                            b.iter().map(|&i| self.samples[i].len()).max().unwrap_or(0),
                            std::cmp::Reverse(*k),
                        )
                    })
                    .map(|(k, _)| k)
                    .unwrap_or(0);
                batches.swap(0, longest);
                batches
            }
        }
    }

    /// The batch of the given samples.
    pub fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let rows: Vec<(&[u32], &[u8])> = indices
            .iter()
            .map(|&i| {
                self.samples
                    .get(i)
                    .map(|s| (s.input_ids.as_slice(), s.labels_mask.as_slice()))
                    .ok_or_else(|| anyhow!("sample index {i} out of range"))
            })
            .collect::<Result<_>>()?;
        Batch::from_rows(&rows, self.pad_id, &self.device)
    }

    /// Packed rows of an epoch: (ids, labels mask), each `max_seq_len` long but the last (a
    /// last row of a single token, which has no target, is left out).
    pub fn packed_rows(&self, epoch: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u8>)> {
        let mut rng = StdRng::seed_from_u64(epoch_seed(seed, epoch));
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        order.shuffle(&mut rng);
        let total: usize = self.samples.iter().map(|s| s.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut labels = Vec::with_capacity(total);
        for &i in &order {
            ids.extend_from_slice(&self.samples[i].input_ids);
            labels.extend_from_slice(&self.samples[i].labels_mask);
        }
        ids.chunks(self.max_seq_len)
            .zip(labels.chunks(self.max_seq_len))
            .filter(|(a, _)| a.len() >= 2)
            .map(|(a, b)| (a.to_vec(), b.to_vec()))
            .collect()
    }

    /// Every batch of an epoch, on the dataset's device. Deterministic in `(epoch, seed)`.
    pub fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<Batch>> {
        if batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        match self.batching {
            Batching::Packed => {
                let rows = self.packed_rows(epoch, seed);
                let rows: Vec<(&[u32], &[u8])> = rows
                    .iter()
                    .map(|(a, b)| (a.as_slice(), b.as_slice()))
                    .collect();
                rows.chunks(batch_size)
                    .map(|chunk| Batch::from_rows(chunk, self.pad_id, &self.device))
                    .collect()
            }
            _ => self
                .batch_plan(epoch, batch_size, seed)
                .iter()
                .map(|idx| self.make_batch(idx))
                .collect(),
        }
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

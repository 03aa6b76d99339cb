//! Sentence-similarity (STS) fine-tuning of a BERT sentence encoder as a `TrainTask`:
//! the sentence-transformers recipe of `CosineSimilarityLoss`.
//!
//! Both sentences of a pair go through the encoder (as rows of one batch), are mean-pooled
//! over their real tokens and L2-normalised; the loss is the mean squared error between
//! their cosine similarity and the gold label rescaled from [0, 5] to [−1, 1] (or to [0, 1]
//! with `data.label_scale = "unit"`, as sentence-transformers' STS-B example). Evaluation
//! reports Pearson and Spearman correlations between cosine and label on the held-out
//! pairs (per language too, when the data says), and early stopping minimises −Spearman.
//!
//! Full fine-tuning writes complete HF sentence-encoder directories (the base's config and
//! tokenizer files are copied next to the weights), so `best/`, `model/` and every
//! checkpoint load with `Embedder::from_dir` (and sentence-transformers). LoRA writes a
//! PEFT adapter (`task_type` FEATURE_EXTRACTION).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

use super::checkpoint::save_vars;
use super::data::sts::{load_pairs, LabelScale, LabelTarget, StsFormat, StsPair};
use super::step::{accumulate, backward, checkpointed_backward, Checkpointing};
use super::trainer::{Evaluation, TrainTask};
use crate::adapt::peft::{apply_lora_to_linears, save_adapter_linears, AdapterKind, LoraConfig};
use crate::config::RunConfig;
use crate::infer::embed::{encoder_dir, l2_normalize, mean_pool, Embedder};
use crate::model::bert::Bert;
use crate::model::LoadOptions;
use crate::runs::layout::FULL_WEIGHTS;

/// Files of a sentence-encoder directory copied next to fully fine-tuned weights.
const MODEL_FILES: [&str; 9] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Sentence pairs with their token ids ([CLS] … [SEP], truncated, unpadded).
pub struct StsData {
    pub pairs: Vec<StsPair>,
    /// How labels become cosine targets (`LabelScale::Signed` unless set).
    pub scale: LabelScale,
    ids1: Vec<Vec<u32>>,
    ids2: Vec<Vec<u32>>,
    pad_id: u32,
    device: Device,
}

/// A micro-batch of `b` pairs: rows `0..b` are the first sentences, rows `b..2b` the
/// second ones, right-padded to the longest.
pub struct StsBatch {
    /// (2b, t) u32.
    pub input_ids: Tensor,
    /// (2b, t) u32, 1 on real tokens.
    pub attention_mask: Tensor,
    /// (b,) f32: the labels' cosine targets.
    pub targets: Tensor,
    /// Indices of the pairs in their `StsData`.
    pub indices: Vec<usize>,
}

impl StsData {
    /// Tokenises every sentence once with `tokenizer` (truncated to `max_len` tokens).
    pub fn new(
        pairs: Vec<StsPair>,
        tokenizer: &Tokenizer,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut tok = tokenizer.clone();
        let pad_id = tok.get_padding().map(|p| p.pad_id).unwrap_or(0);
        tok.with_padding(None);
        tok.with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("cannot set tokenizer truncation: {e}"))?;
        let encode = |texts: Vec<&str>| -> Result<Vec<Vec<u32>>> {
            Ok(tok
                .encode_batch(texts, true)
                .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?
                .into_iter()
                .map(|e| e.get_ids().to_vec())
                .collect())
        };
        let ids1 = encode(pairs.iter().map(|p| p.sentence1.as_str()).collect())?;
        let ids2 = encode(pairs.iter().map(|p| p.sentence2.as_str()).collect())?;
        Ok(Self {
            pairs,
            scale: LabelScale::default(),
            ids1,
            ids2,
            pad_id,
            device: device.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Tokens of both sentences of every pair (no padding).
    pub fn token_count(&self) -> usize {
        self.ids1.iter().chain(&self.ids2).map(Vec::len).sum()
    }

    /// The batch of the pairs at `indices`.
    pub fn batch(&self, indices: &[usize]) -> Result<StsBatch> {
        let b = indices.len();
        if b == 0 {
            bail!("an empty batch of sentence pairs");
        }
        let rows: Vec<&Vec<u32>> = indices
            .iter()
            .map(|&i| &self.ids1[i])
            .chain(indices.iter().map(|&i| &self.ids2[i]))
            .collect();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(2 * b * t);
        let mut mask = Vec::with_capacity(2 * b * t);
        for r in &rows {
            ids.extend_from_slice(r);
            mask.extend(std::iter::repeat_n(1u32, r.len()));
            ids.extend(std::iter::repeat_n(self.pad_id, t - r.len()));
            mask.extend(std::iter::repeat_n(0u32, t - r.len()));
        }
        let targets: Vec<f32> = indices
            .iter()
            .map(|&i| self.scale.target(self.pairs[i].label))
            .collect();
        Ok(StsBatch {
            input_ids: Tensor::from_vec(ids, (2 * b, t), &self.device)?,
            attention_mask: Tensor::from_vec(mask, (2 * b, t), &self.device)?,
            targets: Tensor::from_vec(targets, b, &self.device)?,
            indices: indices.to_vec(),
        })
    }

    /// Micro-batches of one epoch: shuffled deterministically in (epoch, seed), or in file
    /// order when `shuffle` is false.
    pub fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Vec<StsBatch>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if shuffle {
            let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9));
            order.shuffle(&mut rng);
        }
        order
            .chunks(batch_size.max(1))
            .map(|c| self.batch(c))
            .collect()
    }
}

/// MSE between the cosine similarity of the two halves of `emb` (2b, h; rows
/// L2-normalised) and `targets` (b,).
pub fn cosine_mse_loss(emb: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let b = targets.dim(0)?;
    let u = emb.narrow(0, 0, b)?;
    let v = emb.narrow(0, b, b)?;
    let cos = (u * v)?.sum(1)?;
    (cos - targets)?.sqr()?.mean_all()
}

/// Forward and backward of one STS micro-batch on `model`, adding the gradients of `params`
/// into `accum`; with `checkpointing`, each encoder layer is recomputed in the backward pass
/// instead of keeping its activations (all of it, or all but its frozen matmuls). Returns
/// the loss.
pub fn forward_backward(
    model: &Bert,
    params: &[(String, Var)],
    batch: &StsBatch,
    checkpointing: impl Into<Checkpointing>,
    accum: &mut [Option<Tensor>],
) -> Result<f64> {
    let checkpointing = checkpointing.into();
    let mask = model.additive_mask(&batch.attention_mask)?;
    let embeds = model.embed(&batch.input_ids, None)?;
    let head = |h: &Tensor| -> Result<(Tensor, ())> {
        let e = l2_normalize(&mean_pool(h, &batch.attention_mask)?)?;
        Ok((cosine_mse_loss(&e, &batch.targets)?, ()))
    };
    let loss = if checkpointing != Checkpointing::Off {
        checkpointed_backward(
            &embeds,
            checkpointing == Checkpointing::Selective,
            model.num_layers(),
            |i, x| model.layer(i, x, Some(&mask)),
            head,
            params,
            accum,
        )?
        .0
    } else {
        let mut x = embeds;
        for i in 0..model.num_layers() {
            x = model.layer(i, &x, Some(&mask))?;
        }
        let (loss, ()) = head(&x)?;
        let mut grads = backward(&loss)?;
        accumulate(&mut grads, params, accum)?;
        loss
    };
    Ok(loss.to_scalar::<f32>()? as f64)
}

/// Cosine similarity of the two sentences of every pair of `data`, without gradients.
pub fn predict_cosines(model: &Bert, data: &StsData, batch_size: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(data.len());
    for batch in data.batches(0, batch_size, 0, false)? {
        let hidden = model
            .forward(&batch.input_ids.detach(), Some(&batch.attention_mask))?
            .detach();
        let e = l2_normalize(&mean_pool(&hidden, &batch.attention_mask)?)?;
        let b = batch.indices.len();
        let cos = (e.narrow(0, 0, b)? * e.narrow(0, b, b)?)?.sum(1)?;
        out.extend(cos.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Ranks 1..n of `x`, tied values sharing the average of their ranks (as
/// `scipy.stats.rankdata`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold equal values: ranks i+1..=j, averaged.
        let avg = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = avg;
        }
        i = j;
    }
    ranks
}

/// Pearson's correlation coefficient; 0 when it is undefined (fewer than two points or a
/// constant series).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return 0.0;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x[..n].iter().zip(&y[..n]) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rank correlation: Pearson's on average ranks (ties handled as scipy does).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// MSE loss (against the labels' targets under `scale`) and correlation metrics of
/// predicted cosines against the pairs' labels: `pearson`, `spearman`, and
/// `spearman_<lang>` for every language with ≥ 2 pairs when there are several.
pub fn sts_metrics(
    cosines: &[f32],
    pairs: &[StsPair],
    scale: LabelScale,
) -> (f64, BTreeMap<String, f64>) {
    let pred: Vec<f64> = cosines.iter().map(|&c| c as f64).collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.label as f64).collect();
    let mse = if pred.is_empty() {
        0.0
    } else {
        pairs
            .iter()
            .zip(&pred)
            .map(|(p, c)| (c - scale.target(p.label) as f64).powi(2))
            .sum::<f64>()
            / pred.len() as f64
    };
    let mut metrics = BTreeMap::new();
    metrics.insert("pearson".to_string(), pearson(&pred, &gold));
    metrics.insert("spearman".to_string(), spearman(&pred, &gold));
    let mut langs: Vec<&str> = pairs.iter().filter_map(|p| p.lang.as_deref()).collect();
    langs.sort();
    langs.dedup();
    if langs.len() > 1 {
        for lang in langs {
            let (p, g): (Vec<f64>, Vec<f64>) = pairs
                .iter()
                .zip(&pred)
                .filter(|(pair, _)| pair.lang.as_deref() == Some(lang))
                .map(|(pair, c)| (*c, pair.label as f64))
                .unzip();
            if p.len() >= 2 {
                metrics.insert(format!("spearman_{lang}"), spearman(&p, &g));
            }
        }
    }
    (mse, metrics)
}

/// Evaluation of an encoder on pairs: loss, correlations, and −Spearman as the score.
pub fn evaluate_model(model: &Bert, data: &StsData, batch_size: usize) -> Result<Evaluation> {
    let cos = predict_cosines(model, data, batch_size)?;
    let (loss, metrics) = sts_metrics(&cos, &data.pairs, data.scale);
    let score = -metrics.get("spearman").copied().unwrap_or(0.0);
    Ok(Evaluation {
        loss,
        tokens: data.token_count(),
        metrics,
        score,
    })
}

/// Parameters of a BERT encoder (embeddings, layer norms, linear weights and biases).
pub fn count_params(model: &mut Bert) -> usize {
    let e = &model.embeddings;
    let mut n = e.word.elem_count()
        + e.position.elem_count()
        + e.token_type.elem_count()
        + e.norm.weight.elem_count()
        + e.norm.bias.elem_count();
    for l in &model.layers {
        n += l.attention.norm.weight.elem_count() + l.attention.norm.bias.elem_count();
        n += l.output_norm.weight.elem_count() + l.output_norm.bias.elem_count();
    }
    for (_, l) in model.linears_mut() {
        n += l.in_features() * l.out_features() + l.bias().map_or(0, |b| b.elem_count());
    }
    n
}

/// Sentence-similarity fine-tuning of a BERT encoder as a `TrainTask`.
pub struct StsTask {
    pub embedder: Embedder,
    pub params: Vec<(String, Var)>,
    pub total_params: usize,
    pub train: StsData,
    pub eval: Option<StsData>,
    pub lora: Option<LoraConfig>,
    pub checkpointing: Checkpointing,
    /// Name of the base model, for adapter configs.
    pub base_name: String,
    /// The base model's directory: its config and tokenizer files are copied next to fully
    /// fine-tuned weights.
    pub base_dir: Option<PathBuf>,
}

impl StsTask {
    /// Loads the encoder of `cfg` (with LoRA adapters or fully trainable) and its pairs.
    pub fn from_config(cfg: &RunConfig, _base: &Path, device: &Device) -> Result<Self> {
        cfg.validate_sts()?;
        let dir = encoder_dir(&cfg.model.spec)?;
        let opts = LoadOptions {
            device: device.clone(),
            dtype: cfg.compute_dtype(device),
            trainable: cfg.lora.is_none(),
            quant4: None,
            keep_quantized: false, // training reads dense weights
        };
        let (mut embedder, mut params) = Embedder::from_dir_with_params(&dir, &opts)
            .with_context(|| format!("loading the encoder `{}`", cfg.model.spec))?;
        if let Some(l) = &cfg.lora {
            params = apply_lora_to_linears(
                embedder.model_mut().linears_mut(),
                l,
                candle_core::DType::F32, // f32 master weights, cast where used
                &opts.device,
                cfg.train.seed,
            )?;
        }
        let format = StsFormat::try_from(cfg.data.format)?;
        let max_len = cfg.data.max_seq_len.min(embedder.max_len());
        let load = |path: &Path, limit: usize| -> Result<StsData> {
            let mut pairs = load_pairs(path, format)?;
            if limit > 0 {
                pairs.truncate(limit);
            }
            let mut data = StsData::new(pairs, embedder.tokenizer(), max_len, &opts.device)?;
            data.scale = cfg.data.label_scale;
            Ok(data)
        };
        let train = load(&cfg.data.train, cfg.data.limit)?;
        let eval = cfg
            .data
            .eval
            .as_ref()
            .map(|p| load(p, cfg.data.eval_limit))
            .transpose()?;
        let total_params = count_params(embedder.model_mut());
        // Loading's buffers go back; what the steps free is reused by the next step.
        crate::telemetry::memory::release_free_heap();
        crate::telemetry::memory::keep_freed_heap();
        Ok(Self {
            embedder,
            params,
            total_params,
            train,
            eval,
            lora: cfg.lora.clone(),
            checkpointing: Checkpointing::of(&cfg.model),
            base_name: cfg.model.spec.clone(),
            base_dir: Some(dir),
        })
    }

    /// One line about the data, for people.
    pub fn stats(&self) -> String {
        let n = self.train.len();
        let tokens = self.train.token_count();
        format!(
            "{n} pairs, {:.1} tokens per sentence on average{}",
            tokens as f64 / (2 * n).max(1) as f64,
            match &self.eval {
                Some(e) => format!("; {} held-out pairs", e.len()),
                None => String::new(),
            }
        )
    }
}

/// Copies the config and tokenizer files of `from` (a sentence-encoder directory) to `to`.
pub fn copy_model_files(from: &Path, to: &Path) -> Result<()> {
    for name in MODEL_FILES {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            if let Some(parent) = dst.parent() {
                crate::files::create_dir_all(parent)?;
            }
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

impl TrainTask for StsTask {
    type Batch = StsBatch;

    fn params(&self) -> &[(String, Var)] {
        &self.params
    }
    fn total_params(&self) -> usize {
        self.total_params
    }
    fn train_len(&self) -> usize {
        self.train.len()
    }
    fn eval_len(&self) -> usize {
        self.eval.as_ref().map_or(0, |e| e.len())
    }
    fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<StsBatch>> {
        self.train.batches(epoch, batch_size, seed, true)
    }

    fn forward_backward(
        &self,
        batch: &StsBatch,
        _noise_seed: u64,
        accum: &mut [Option<Tensor>],
    ) -> Result<(f64, usize)> {
        let loss = forward_backward(
            self.embedder.model(),
            &self.params,
            batch,
            self.checkpointing,
            accum,
        )?;
        // Throughput counts every processed token (padding included), as for SFT.
        Ok((loss, batch.input_ids.elem_count()))
    }

    fn evaluate(&self, batch_size: usize, _seed: u64) -> Result<Option<Evaluation>> {
        match &self.eval {
            Some(e) if !e.is_empty() => Ok(Some(evaluate_model(
                self.embedder.model(),
                e,
                batch_size.max(32),
            )?)),
            _ => Ok(None),
        }
    }

    fn set_training(&mut self, training: bool) {
        for (_, l) in self.embedder.model_mut().linears_mut() {
            if let Some(a) = l.lora_mut() {
                a.training = training;
            }
        }
    }

    fn save_weights(&mut self, dir: &Path, trained: &[(String, Var)]) -> Result<()> {
        match &self.lora {
            Some(cfg) => save_adapter_linears(
                dir,
                self.embedder.model_mut().linears_mut(),
                cfg,
                &self.base_name,
                trained,
                AdapterKind {
                    task_type: "FEATURE_EXTRACTION",
                    ensure_weight_tying: false,
                },
            ),
            None => {
                crate::files::create_dir_all(dir)?;
                save_vars(&dir.join(FULL_WEIGHTS), trained)?;
                if let Some(base) = &self.base_dir {
                    copy_model_files(base, dir)?;
                }
                Ok(())
            }
        }
    }
}

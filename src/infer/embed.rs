//! Sentence embeddings with a BERT encoder: mean pooling over real tokens, then L2
//! normalisation (the sentence-transformers recipe of all-MiniLM-L6-v2).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::hub::{self, ModelSource};
use crate::model::bert::{Bert, BertConfig};
use crate::model::load::safetensors::SafetensorsSource;
use crate::model::LoadOptions;

/// Sequence length used when the directory has no `sentence_bert_config.json`.
pub const DEFAULT_MAX_LEN: usize = 256;

pub struct Embedder {
    model: Bert,
    tokenizer: Tokenizer,
    max_len: usize,
    device: Device,
}

/// Token ids and attention mask of a tokenized batch, both (b, t) u32.
pub struct EncodedBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{}: not an embedding model directory: {name} is missing",
            dir.display()
        );
    }
    Ok(path)
}

/// `max_seq_length` from `DIR/sentence_bert_config.json`, if present.
fn sentence_bert_max_len(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    Ok(v.get("max_seq_length")
        .and_then(|m| m.as_u64())
        .map(|m| m as usize))
}

/// Loads `DIR/tokenizer.json` and replaces its pinned truncation/padding with truncation
/// to `max_len` and padding to the longest sequence of each batch.
pub fn load_tokenizer(dir: &Path, max_len: usize) -> Result<Tokenizer> {
    let path = require_file(dir, "tokenizer.json")?;
    let mut tok = Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
    configure_tokenizer(&mut tok, max_len)?;
    Ok(tok)
}

/// Truncation to `max_len` tokens (special tokens included) and batch-longest padding
/// with the tokenizer's own pad token (`[PAD]`, else id 0).
pub fn configure_tokenizer(tok: &mut Tokenizer, max_len: usize) -> Result<()> {
    let (pad_id, pad_token, pad_type_id) = match tok.get_padding() {
        Some(p) => (p.pad_id, p.pad_token.clone(), p.pad_type_id),
        None => match tok.token_to_id("[PAD]") {
            Some(id) => (id, "[PAD]".to_string(), 0),
            None => (0, tok.id_to_token(0).unwrap_or_default(), 0),
        },
    };
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| anyhow!("cannot set tokenizer truncation: {e}"))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        pad_type_id,
        ..Default::default()
    }));
    Ok(())
}

/// The HF directory of an encoder model spec (GGUF files are rejected).
pub fn encoder_dir(spec: &str) -> Result<PathBuf> {
    let resolved = hub::resolve(spec)?;
    match resolved.source {
        ModelSource::HfDir { dir } => Ok(dir),
        ModelSource::Gguf { path } => bail!(
            "{}: sentence encoders must be HF directories (config.json, model.safetensors, tokenizer.json), not GGUF files",
            path.display()
        ),
    }
}

impl Embedder {
    /// Loads an HF sentence-encoder directory (config.json, model.safetensors,
    /// tokenizer.json, optional sentence_bert_config.json).
    pub fn from_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Ok(Self::from_dir_with_params(dir, opts)?.0)
    }

    /// As `from_dir`, also returning the trainable parameters (`opts.trainable`; empty
    /// when frozen) so that training can reuse the loader.
    pub fn from_dir_with_params(
        dir: &Path,
        opts: &LoadOptions,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        if !dir.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        require_file(dir, "config.json")?;
        require_file(dir, "model.safetensors")?;
        require_file(dir, "tokenizer.json")?;
        let cfg = BertConfig::from_dir(dir)?;
        let max_len = sentence_bert_max_len(dir)?
            .unwrap_or(DEFAULT_MAX_LEN)
            .min(cfg.max_position_embeddings);
        let tokenizer = load_tokenizer(dir, max_len)?;
        let src = SafetensorsSource::open_dir(dir)?;
        let loaded = Bert::build(&src, &cfg, opts)?;
        Ok((Self::new(loaded.model, tokenizer, max_len), loaded.params))
    }

    /// Wraps an already built model; the tokenizer is used as configured (see
    /// `configure_tokenizer`).
    pub fn new(model: Bert, tokenizer: Tokenizer, max_len: usize) -> Self {
        let device = model.device().clone();
        Self {
            model,
            tokenizer,
            max_len,
            device,
        }
    }

    pub fn model(&self) -> &Bert {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut Bert {
        &mut self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn hidden_size(&self) -> usize {
        self.model.hidden_size()
    }

    /// Tokenizes a batch: [CLS] … [SEP], truncated to `max_len`, padded to the longest.
    pub fn encode(&self, sentences: &[&str]) -> Result<EncodedBatch> {
        if sentences.is_empty() {
            bail!("no sentences to embed");
        }
        let encs = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let b = encs.len();
        let t = encs.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for e in &encs {
            if e.get_ids().len() != t {
                bail!("tokenizer did not pad the batch to one length");
            }
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        Ok(EncodedBatch {
            input_ids: Tensor::from_vec(ids, (b, t), &self.device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), &self.device)?,
        })
    }

    /// Normalised sentence embeddings (b, h) in f32, for inference.
    pub fn embed(&self, sentences: &[&str]) -> Result<Tensor> {
        let batch = self.encode(sentences)?;
        Ok(self.pooled(&batch.input_ids, &batch.attention_mask)?)
    }

    /// Embeddings of `texts` (normalised, one f32 row each), in batches of `batch` texts
    /// of similar length (longest first, so that little padding is computed).
    pub fn embed_texts(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch.max(1)) {
            let batch_texts: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let emb = self.embed(&batch_texts)?.to_dtype(DType::F32)?;
            for (row, &i) in emb.to_vec2::<f32>()?.into_iter().zip(chunk) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    /// The embedding of one query text (an empty query is an error).
    pub fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        if text.trim().is_empty() {
            bail!("the query is empty");
        }
        let emb = self.embed(&[text])?;
        Ok(emb.to_dtype(DType::F32)?.get(0)?.to_vec1::<f32>()?)
    }

    /// Encoder + mean pooling + L2 normalisation on token ids (b, t) and a 0/1 mask
    /// (b, t); differentiable, for training.
    pub fn pooled(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        sentence_embeddings(&self.model, input_ids, attention_mask)
    }
}

/// `model` forward, then mean pooling over real tokens and L2 normalisation: (b, h) f32.
pub fn sentence_embeddings(
    model: &Bert,
    input_ids: &Tensor,
    attention_mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let hidden = model.forward(input_ids, Some(attention_mask))?;
    l2_normalize(&mean_pool(&hidden, attention_mask)?)
}

/// Mean of `hidden` (b, t, h) over the positions where `attention_mask` (b, t) is 1,
/// in f32: (b, h).
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let hidden = hidden.to_dtype(DType::F32)?;
    let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    summed.broadcast_div(&counts)
}

/// Rows divided by their L2 norm (at least 1e-12), like `torch.nn.functional.normalize`.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}

/// Pairwise cosine similarities of the rows of `emb` (n, h) (normalised or not).
pub fn cosine_matrix(emb: &Tensor) -> Result<Vec<Vec<f32>>> {
    let e = l2_normalize(&emb.to_dtype(DType::F32)?)?;
    Ok(e.matmul(&e.t()?)?.to_vec2::<f32>()?)
}

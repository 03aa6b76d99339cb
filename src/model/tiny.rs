//! Tiny random models written as real HF directories (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json), for tests, demos and quick dashboard runs.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::Tensor;

use super::llama::LlamaConfig;
use super::load::RandomSource;
use super::{ArchConfig, CausalLm, LoadOptions};
use crate::infer::LanguageModel;

/// A LLaMA-shaped config with the given vocabulary, small enough to train in seconds.
pub fn tiny_llama_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        attention_bias: false,
    }
}

/// Writes a random LLaMA with `cfg` and the tokenizer, special tokens and chat template of
/// `text_from` (e.g. SmolLM2) to `dir`.
pub fn write_tiny_llama(dir: &Path, cfg: &LlamaConfig, text_from: &LanguageModel) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let opts = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let loaded = CausalLm::build(
        &RandomSource::new(1.0),
        &ArchConfig::Llama(cfg.clone()),
        &opts,
    )?;
    let tensors: HashMap<String, Tensor> = loaded
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": text_from.special.bos,
        "eos_token_id": text_from.special.eos,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    text_from
        .tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow!("{}: cannot write tokenizer.json: {e}", dir.display()))?;
    let tok_text = |id: Option<u32>| id.and_then(|i| text_from.tokenizer.id_to_token(i));
    let tcfg = serde_json::json!({
        "chat_template": text_from.chat_template,
        "bos_token": tok_text(text_from.special.bos),
        "eos_token": tok_text(text_from.special.eos),
        "pad_token": tok_text(text_from.special.pad),
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tcfg)?,
    )?;
    Ok(())
}

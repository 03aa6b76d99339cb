//! Tiny random models written as real HF directories (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json), for tests, demos and quick dashboard runs.
use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

use super::export::{write_hf_dir, TextSide};
use super::llama::LlamaConfig;
use super::load::RandomSource;
use super::{ArchConfig, CausalLm, LoadOptions};

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
/// `text` (e.g. SmolLM2's) to `dir`.
pub fn write_tiny_llama(dir: &Path, cfg: &LlamaConfig, text: TextSide<'_>) -> Result<()> {
    let arch = ArchConfig::from(cfg.clone());
    write_hf_dir(dir, &arch, &random_weights(&arch, 1.0)?, text)
}

/// Every weight of a model of architecture `arch`, random (the architecture's own
/// initialisation, its standard deviations times `std_scale`), by HF tensor name.
pub fn random_weights(arch: &ArchConfig, std_scale: f64) -> Result<HashMap<String, Tensor>> {
    let opts = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let loaded = CausalLm::build(&RandomSource::new(std_scale), arch, &opts)?;
    Ok(loaded
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect())
}

//! Writing a LLaMA-family model as a Hugging Face directory: config.json,
//! model.safetensors, tokenizer.json and tokenizer_config.json (with the chat template).
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};

use super::llama::LlamaConfig;
use super::CausalLm;
use crate::infer::LanguageModel;

/// Writes `tensors` (HF names) with `cfg`, plus the tokenizer side of `text_from`.
pub fn write_llama_dir(
    dir: &Path,
    cfg: &LlamaConfig,
    tensors: &HashMap<String, Tensor>,
    text_from: &LanguageModel,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    candle_core::safetensors::save(tensors, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": [if cfg.attention_bias { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if cfg.attention_bias { "qwen2" } else { "llama" },
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
        "attention_bias": cfg.attention_bias,
        "bos_token_id": text_from.special.bos,
        "eos_token_id": text_from.special.eos,
        "torch_dtype": "float32",
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

/// Every weight of a (merged, adapter-free) model by HF name, as dense f32.
pub fn model_tensors(model: &mut CausalLm) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in model.other_tensors() {
        out.insert(name, t.detach().to_dtype(DType::F32)?);
    }
    let head = model.head_module_name();
    let mut linears: Vec<(String, Tensor, Option<Tensor>)> = Vec::new();
    for (name, l) in model.linears_mut() {
        if l.lora().is_some() {
            bail!("layer `{name}` still has a LoRA adapter: merge it first");
        }
        linears.push((name, l.base().dense()?, l.bias().cloned()));
    }
    if let Some(h) = model.lm_head_mut() {
        linears.push((head.to_string(), h.base().dense()?, None));
    }
    for (name, w, b) in linears {
        out.insert(format!("{name}.weight"), w.detach().to_dtype(DType::F32)?);
        if let Some(b) = b {
            out.insert(format!("{name}.bias"), b.detach().to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

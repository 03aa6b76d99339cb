//! Writing a decoder as a Hugging Face directory: config.json (from the architecture's
//! config), model.safetensors (every weight of its table), tokenizer.json and
//! tokenizer_config.json (with the chat template).
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;

use super::arch::{ArchConfig, Weight};
use super::load::tokenizer::SpecialTokens;
use super::CausalLm;

/// The text side of a language model, as an HF directory stores it.
#[derive(Clone, Copy)]
pub struct TextSide<'a> {
    pub tokenizer: &'a Tokenizer,
    pub special: &'a SpecialTokens,
    pub chat_template: Option<&'a str>,
}

/// Writes `tensors` (HF names) with the config of `cfg`, plus the tokenizer side `text`.
pub fn write_hf_dir(
    dir: &Path,
    cfg: &ArchConfig,
    tensors: &HashMap<String, Tensor>,
    text: TextSide<'_>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    crate::weights_file::save(tensors, &dir.join("model.safetensors"))?;
    write_config_and_tokenizer(dir, cfg, text)
}

/// The files of an HF model directory but its weights: config.json, tokenizer.json,
/// tokenizer_config.json.
pub fn write_config_and_tokenizer(dir: &Path, cfg: &ArchConfig, text: TextSide<'_>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut config = cfg.hf_config();
    let fields = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("the architecture's HF config is not a JSON object"))?;
    fields.insert("bos_token_id".into(), serde_json::json!(text.special.bos));
    fields.insert("eos_token_id".into(), serde_json::json!(text.special.eos));
    fields.insert("torch_dtype".into(), serde_json::json!("float32"));
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    text.tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow!("{}: cannot write tokenizer.json: {e}", dir.display()))?;
    let tok_text = |id: Option<u32>| id.and_then(|i| text.tokenizer.id_to_token(i));
    let tcfg = serde_json::json!({
        "chat_template": text.chat_template,
        "bos_token": tok_text(text.special.bos),
        "eos_token": tok_text(text.special.eos),
        "pad_token": tok_text(text.special.pad),
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tcfg)?,
    )?;
    Ok(())
}

/// Every weight of a (merged, adapter-free) model by HF tensor name, as dense f32: the
/// whole weight table, so nothing the model loaded is left out.
pub fn model_tensors(model: &CausalLm) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let f32 = |t: &Tensor| t.detach().to_dtype(DType::F32);
    for (name, t) in model.other_tensors() {
        out.insert(name, f32(&t)?);
    }
    for w in model.weights() {
        let l = match w.weight {
            Weight::Linear(l) | Weight::OptLinear(Some(l)) => l,
            _ => continue,
        };
        if l.lora().is_some() {
            bail!(
                "layer `{}` still has a LoRA adapter: merge it first",
                w.name
            );
        }
        out.insert(format!("{}.weight", w.name), f32(&l.base().dense()?)?);
        if let Some(b) = l.bias() {
            out.insert(format!("{}.bias", w.name), f32(b)?);
        }
    }
    Ok(out)
}

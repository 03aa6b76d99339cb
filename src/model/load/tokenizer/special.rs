//! The special ids generation and training need (BOS, EOS, end-of-turn, padding), from GGUF
//! metadata or from a Hugging Face folder's JSON files.
use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::quantized::gguf_file::{self, Value};

use super::gguf_meta::{gguf_opt_id, gguf_opt_int_array, TOKEN_TYPE_CONTROL};
use super::read_json;

/// Tokens that end a turn in the chat formats ftlab knows; they join
/// [`SpecialTokens::eos_tokens`] when the vocabulary has them as special tokens.
pub const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// The ids generation and training need to know about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// The tokenizer's end of sequence.
    pub eos: Option<u32>,
    /// Every id that ends generation: `eos`, plus end-of-turn tokens the vocabulary has as
    /// special tokens (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...; see
    /// [`END_OF_TURN_TOKENS`]) and the ids `generation_config.json` lists. Sorted, no repeats.
    pub eos_tokens: Vec<u32>,
    /// Padding.
    pub pad: Option<u32>,
}

impl SpecialTokens {
    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_tokens.contains(&id)
    }

    fn finish(mut self) -> Self {
        if let Some(e) = self.eos {
            self.eos_tokens.push(e);
        }
        self.eos_tokens.sort_unstable();
        self.eos_tokens.dedup();
        self
    }
}

/// Special ids from GGUF metadata: `tokenizer.ggml.{bos,eos,padding}_token_id`, plus
/// `tokenizer.ggml.{eot,eom}_token_id` and control tokens named in [`END_OF_TURN_TOKENS`] as
/// extra end-of-generation ids. A key with the wrong type is an error naming `path`.
pub fn special_tokens_from_gguf(
    content: &gguf_file::Content,
    path: &Path,
) -> Result<SpecialTokens> {
    let mut st = SpecialTokens {
        bos: gguf_opt_id(content, path, "tokenizer.ggml.bos_token_id")?,
        eos: gguf_opt_id(content, path, "tokenizer.ggml.eos_token_id")?,
        pad: gguf_opt_id(content, path, "tokenizer.ggml.padding_token_id")?,
        eos_tokens: Vec::new(),
    };
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = gguf_opt_id(content, path, key)? {
            st.eos_tokens.push(id);
        }
    }
    if let Some(Value::Array(items)) = content.metadata.get("tokenizer.ggml.tokens") {
        let types = gguf_opt_int_array(content, path, "tokenizer.ggml.token_type")?;
        for (i, item) in items.iter().enumerate() {
            let Value::String(tok) = item else { continue };
            if !END_OF_TURN_TOKENS.contains(&tok.as_str()) {
                continue;
            }
            // Without token types every listed name counts; with them, only control tokens.
            let control = types
                .as_ref()
                .is_none_or(|t| t.get(i) == Some(&TOKEN_TYPE_CONTROL));
            if control {
                st.eos_tokens.push(i as u32);
            }
        }
    }
    Ok(st.finish())
}

/// A token written as `"<s>"` or as `{"content": "<s>", ...}` (tokenizer_config.json's two forms).
fn token_text(v: &serde_json::Value) -> Option<&str> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(m) => m.get("content").and_then(|c| c.as_str()),
        _ => None,
    }
}

/// One id or a list of ids (config.json's and generation_config.json's two forms).
fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Special ids from a Hugging Face model folder. Token strings in `tokenizer_config.json` are
/// looked up in `tokenizer.json`; ids come from `config.json` and `generation_config.json` where
/// those give them. Files that are absent are skipped; a file that is there but is not valid JSON
/// is an error naming it.
pub fn special_tokens_from_hf_dir(dir: &Path) -> Result<SpecialTokens> {
    let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
    let cfg = read_json(&dir.join("config.json"))?;
    let gen_cfg = read_json(&dir.join("generation_config.json"))?;
    let tok_json = read_json(&dir.join("tokenizer.json"))?;

    // token string -> id, from tokenizer.json's added tokens, then its model vocabulary.
    let mut added: HashMap<String, (u32, bool)> = HashMap::new();
    let mut vocab: Option<&serde_json::Map<String, serde_json::Value>> = None;
    if let Some(tj) = &tok_json {
        if let Some(items) = tj.get("added_tokens").and_then(|a| a.as_array()) {
            for item in items {
                let (Some(content), Some(id)) = (
                    item.get("content").and_then(|c| c.as_str()),
                    item.get("id").and_then(|i| i.as_u64()),
                ) else {
                    continue;
                };
                let special = item
                    .get("special")
                    .and_then(|s| s.as_bool())
                    .unwrap_or(false);
                added.insert(content.to_string(), (id as u32, special));
            }
        }
        vocab = tj
            .get("model")
            .and_then(|m| m.get("vocab"))
            .and_then(|v| v.as_object());
    }
    let id_of = |tok: &str| -> Option<u32> {
        added.get(tok).map(|(id, _)| *id).or_else(|| {
            vocab
                .and_then(|v| v.get(tok))
                .and_then(|x| x.as_u64())
                .map(|x| x as u32)
        })
    };
    let from_tok_cfg = |key: &str| -> Option<u32> {
        tok_cfg
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(token_text)
            .and_then(id_of)
    };
    let first_id = |cfg: &Option<serde_json::Value>, key: &str| -> Option<u32> {
        cfg.as_ref()
            .and_then(|c| ids_of(c.get(key)).first().copied())
    };

    let mut st = SpecialTokens {
        bos: from_tok_cfg("bos_token")
            .or_else(|| first_id(&cfg, "bos_token_id"))
            .or_else(|| first_id(&gen_cfg, "bos_token_id")),
        eos: from_tok_cfg("eos_token")
            .or_else(|| first_id(&cfg, "eos_token_id"))
            .or_else(|| first_id(&gen_cfg, "eos_token_id")),
        pad: from_tok_cfg("pad_token")
            .or_else(|| first_id(&cfg, "pad_token_id"))
            .or_else(|| first_id(&gen_cfg, "pad_token_id")),
        eos_tokens: Vec::new(),
    };
    for c in [&cfg, &gen_cfg].into_iter().flatten() {
        st.eos_tokens.extend(ids_of(c.get("eos_token_id")));
    }
    for name in END_OF_TURN_TOKENS {
        if let Some((id, true)) = added.get(*name) {
            st.eos_tokens.push(*id);
        }
    }
    Ok(st.finish())
}

//! Tokenizers, special token ids and chat templates, from a GGUF file's metadata or from a
//! Hugging Face model folder (`tokenizer.json`, `tokenizer_config.json`, `config.json`,
//! `generation_config.json`).
//!
//! A GGUF file carries no `tokenizer.json`: llama.cpp stores the vocabulary, the merges, the token
//! types and the special ids as metadata (`tokenizer.ggml.*`). [`tokenizer_from_gguf`] rebuilds
//! the byte-level BPE tokenizer those describe, with the pre-tokenizer named by
//! `tokenizer.ggml.pre`, so that it gives the ids the original `tokenizer.json` gives.
//!
//! The parts: `bpe_gguf.rs` rebuilds the BPE model, `pre_tokenizer.rs` holds the
//! pre-tokenizers `tokenizer.ggml.pre` names, `gguf_meta.rs` reads typed metadata keys,
//! `special.rs` finds the special ids (GGUF or HF folder) and `chat_template.rs` the chat
//! template.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tokenizers::Tokenizer;

mod bpe_gguf;
mod chat_template;
mod gguf_meta;
mod pre_tokenizer;
mod special;

pub use bpe_gguf::{tokenizer_from_gguf, SUPPORTED_GGUF_TOKENIZER_MODELS};
pub use chat_template::{chat_template_from_gguf, chat_template_from_hf_dir};
pub use pre_tokenizer::supported_gguf_pre_tokenizers;
pub use special::{
    special_tokens_from_gguf, special_tokens_from_hf_dir, SpecialTokens, END_OF_TURN_TOKENS,
};

/// Token ids of `text` without the special tokens a post-processor would add (BOS, …).
pub fn encode_plain(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing failed: {e}"))?
        .get_ids()
        .to_vec())
}

/// Loads a Hugging Face `tokenizer.json`.
pub fn tokenizer_from_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", display(path)))
}

pub(super) fn display(path: &Path) -> String {
    path.display().to_string()
}

pub(super) fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .with_context(|| format!("{}: not valid JSON", display(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", display(path))),
    }
}

//! Tokenizers, special token ids and chat templates, from a GGUF file's metadata or from a
//! Hugging Face model folder (`tokenizer.json`, `tokenizer_config.json`, `config.json`,
//! `generation_config.json`).
//!
//! A GGUF file carries no `tokenizer.json`: llama.cpp stores the vocabulary, the merges (or the
//! scores), the token types and the special ids as metadata (`tokenizer.ggml.*`).
//! [`tokenizer_from_gguf`] rebuilds the tokenizer those describe, so that it gives the ids the
//! original tokenizer gives: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the
//! pre-tokenizer named by `tokenizer.ggml.pre`, or SentencePiece (`"llama"`).
//!
//! The parts: `bpe_gguf.rs` rebuilds byte-level BPE, `spm_gguf.rs` SentencePiece,
//! `gguf_vocab.rs` holds what both share (tokens and their types, added tokens, BOS/EOS),
//! `pre_tokenizer.rs` the pre-tokenizers `tokenizer.ggml.pre` names, `gguf_meta.rs` reads typed
//! metadata keys, `special.rs` finds the special ids (GGUF or HF folder) and `chat_template.rs`
//! the chat template.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

mod bpe_gguf;
mod chat_template;
mod gguf_meta;
mod gguf_vocab;
mod pre_tokenizer;
mod special;
mod spm_gguf;

pub use chat_template::{chat_template_from_gguf, chat_template_from_hf_dir};
pub use pre_tokenizer::supported_gguf_pre_tokenizers;
pub use special::{
    special_tokens_from_gguf, special_tokens_from_hf_dir, SpecialTokens, END_OF_TURN_TOKENS,
};

/// The `tokenizer.ggml.model` values [`tokenizer_from_gguf`] can rebuild.
pub const SUPPORTED_GGUF_TOKENIZER_MODELS: &[&str] = &["gpt2", "llama"];

/// Rebuilds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, by
/// `tokenizer.ggml.model`: `"gpt2"` is byte-level BPE (SmolLM2, Llama 3, Qwen2, GPT-2; see
/// `bpe_gguf.rs`), `"llama"` is SentencePiece (Gemma, Llama 2, TinyLlama, Mistral; see
/// `spm_gguf.rs`). Any other kind is an error naming the file and what is supported.
///
/// `path` is only used in error messages.
pub fn tokenizer_from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Tokenizer> {
    let model = gguf_meta::gguf_str(content, path, "tokenizer.ggml.model")?;
    match model {
        "gpt2" => bpe_gguf::bpe_tokenizer_from_gguf(content, path),
        "llama" => spm_gguf::spm_tokenizer_from_gguf(content, path),
        _ => {
            let kind = match model {
                "bert" => " (WordPiece)",
                "t5" => " (Unigram)",
                "rwkv" => " (RWKV)",
                _ => "",
            };
            bail!(
                "{}: GGUF tokenizer.ggml.model is {model:?}{kind}, which ftlab cannot rebuild \
                 from GGUF metadata; supported: {:?} (byte-level BPE, SentencePiece). Use the \
                 model's Hugging Face folder with its tokenizer.json instead",
                display(path),
                SUPPORTED_GGUF_TOKENIZER_MODELS
            )
        }
    }
}

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

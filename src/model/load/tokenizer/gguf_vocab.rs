//! What every tokenizer rebuilt from GGUF metadata shares, whatever its model kind: the
//! vocabulary with its token types, the tokens added to the tokenizer (matched whole in the
//! text) and the post-processor adding BOS/EOS.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::display;
use super::gguf_meta::{
    gguf_opt_bool, gguf_opt_id, gguf_opt_int_array, gguf_str_array, TOKEN_TYPE_NORMAL,
};

/// `tokenizer.ggml.tokens` with `tokenizer.ggml.token_type` (when the file has them).
pub(super) struct GgufVocab<'a> {
    pub(super) tokens: Vec<&'a str>,
    types: Option<Vec<i64>>,
}

impl<'a> GgufVocab<'a> {
    /// Reads the tokens (required, not empty) and their types (optional, one per token).
    pub(super) fn read(content: &'a gguf_file::Content, path: &Path) -> Result<Self> {
        let tokens = gguf_str_array(content, path, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            bail!(
                "{}: GGUF metadata `tokenizer.ggml.tokens` is empty",
                display(path)
            );
        }
        let types = gguf_opt_int_array(content, path, "tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            check_len(path, "tokenizer.ggml.token_type", t.len(), tokens.len())?;
        }
        Ok(Self { tokens, types })
    }

    /// The llama.cpp token type of token `i`; a file without types has only normal tokens.
    pub(super) fn token_type(&self, i: usize) -> i64 {
        self.types.as_ref().map_or(TOKEN_TYPE_NORMAL, |t| t[i])
    }
}

/// A per-token array (`key`) must have one entry per token of `tokenizer.ggml.tokens`.
pub(super) fn check_len(path: &Path, key: &str, len: usize, tokens: usize) -> Result<()> {
    if len != tokens {
        bail!(
            "{}: GGUF metadata `{key}` has {len} entries but `tokenizer.ggml.tokens` has {tokens}",
            display(path)
        );
    }
    Ok(())
}

/// A token of the file's vocabulary that the tokenizer matches whole in the text.
pub(super) struct GgufAddedToken<'a> {
    pub(super) content: &'a str,
    pub(super) id: u32,
    /// Special tokens (control, unknown) are skipped when decoding with `skip_special_tokens`;
    /// user-defined ones are kept.
    pub(super) special: bool,
}

/// Adds `added` to `tokenizer` (raw text, not normalized: that is what they are matched against)
/// and checks that each keeps the id the file gives it. Empty tokens are skipped: they cannot
/// be matched.
pub(super) fn add_gguf_tokens(
    tokenizer: &mut Tokenizer,
    added: &[GgufAddedToken],
    path: &Path,
) -> Result<()> {
    let tokens: Vec<AddedToken> = added
        .iter()
        .filter(|t| !t.content.is_empty())
        .map(|t| AddedToken::from(t.content.to_string(), t.special).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(tokens)
        .map_err(|e| anyhow!("{}: cannot add the special tokens: {e}", display(path)))?;
    for t in added.iter().filter(|t| !t.content.is_empty()) {
        let got = tokenizer.token_to_id(t.content);
        if got != Some(t.id) {
            bail!(
                "{}: special token {:?} got id {got:?}, but the GGUF vocabulary has it at {} \
                 (duplicate token strings in `tokenizer.ggml.tokens`?)",
                display(path),
                t.content,
                t.id
            );
        }
    }
    Ok(())
}

/// The post-processor adding BOS before (`tokenizer.ggml.add_bos_token`) and EOS after
/// (`tokenizer.ggml.add_eos_token`) each sequence; `None` when neither is added. A file without
/// `add_bos_token` gets `default_add_bos` (llama.cpp adds BOS to SentencePiece vocabularies that
/// do not say, not to byte-level BPE ones); without `add_eos_token`, no EOS.
pub(super) fn bos_eos_post_processor(
    content: &gguf_file::Content,
    path: &Path,
    tokens: &[&str],
    default_add_bos: bool,
) -> Result<Option<TemplateProcessing>> {
    let add_bos =
        gguf_opt_bool(content, path, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    let add_eos = gguf_opt_bool(content, path, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let lookup = |add: bool, key: &str| -> Result<Option<(String, u32)>> {
        if !add {
            return Ok(None);
        }
        match gguf_opt_id(content, path, key)? {
            None => Ok(None),
            Some(id) => match tokens.get(id as usize) {
                Some(t) => Ok(Some((t.to_string(), id))),
                None => bail!(
                    "{}: GGUF metadata `{key}` = {id} is past the end of the vocabulary ({} tokens)",
                    display(path),
                    tokens.len()
                ),
            },
        }
    };
    let bos = lookup(add_bos, "tokenizer.ggml.bos_token_id")?;
    let eos = lookup(add_eos, "tokenizer.ggml.eos_token_id")?;
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    template_processing(bos, eos)
        .with_context(|| display(path))
        .map(Some)
}

/// A post-processor adding BOS before and/or EOS after each sequence.
fn template_processing(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<TemplateProcessing> {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    if let Some((t, id)) = &bos {
        single.push(format!("{t}:0"));
        specials.push((t.clone(), *id));
    }
    single.push("$A:0".to_string());
    if let Some((t, id)) = &eos {
        single.push(format!("{t}:0"));
        if !specials.iter().any(|(s, _)| s == t) {
            specials.push((t.clone(), *id));
        }
    }
    pair.extend(single.iter().cloned());
    if let Some((t, _)) = &bos {
        pair.push(format!("{t}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some((t, _)) = &eos {
        pair.push(format!("{t}:1"));
    }
    TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| anyhow!("bad post-processor template: {e}"))?
        .try_pair(pair)
        .map_err(|e| anyhow!("bad post-processor template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| anyhow!("cannot build the post-processor: {e}"))
}

//! The byte-level BPE tokenizer a GGUF file describes (`tokenizer.ggml.*`): vocabulary,
//! merges, added tokens and the BOS/EOS post-processor.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::display;
use super::gguf_meta::{
    gguf_opt_bool, gguf_opt_id, gguf_opt_int_array, gguf_opt_str, gguf_str, gguf_str_array,
    TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED,
};
use super::pre_tokenizer::{
    pre_tokenizer_for, pre_tokenizer_style, supported_gguf_pre_tokenizers, PreStyle,
};

/// The `tokenizer.ggml.model` values this module can rebuild.
pub const SUPPORTED_GGUF_TOKENIZER_MODELS: &[&str] = &["gpt2"];

/// GPT-2's byte-to-character table: every byte gets a printable character, so that byte-level
/// BPE vocabularies can be written as text.
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

/// Rebuilds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
///
/// Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE, the kind SmolLM2, Llama 3, Qwen2
/// and GPT-2 use) with the pre-tokenizers in [`supported_gguf_pre_tokenizers`]; a file without
/// `tokenizer.ggml.pre` gets llama.cpp's default split. Tokens typed control (3) or unknown (2)
/// become special added tokens (matched whole, skipped when decoding with
/// `skip_special_tokens`); user-defined ones (4) become plain added tokens (matched whole, kept
/// when decoding), as transformers and llama.cpp do. A BOS (EOS) is added by the post-processor
/// only when `tokenizer.ggml.add_bos_token` (`add_eos_token`) is true.
///
/// `path` is only used in error messages.
pub fn tokenizer_from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Tokenizer> {
    let model = gguf_str(content, path, "tokenizer.ggml.model")?;
    if !SUPPORTED_GGUF_TOKENIZER_MODELS.contains(&model) {
        let kind = match model {
            "llama" => " (SentencePiece)",
            "bert" => " (WordPiece)",
            "t5" => " (Unigram)",
            "rwkv" => " (RWKV)",
            _ => "",
        };
        bail!(
            "{}: GGUF tokenizer.ggml.model is {model:?}{kind}, which ftlab cannot rebuild from GGUF \
             metadata; supported: {:?} (byte-level BPE). Use the model's Hugging Face folder \
             with its tokenizer.json instead",
            display(path),
            SUPPORTED_GGUF_TOKENIZER_MODELS
        );
    }
    let pre = gguf_opt_str(content, path, "tokenizer.ggml.pre")?.unwrap_or("default");
    let style = pre_tokenizer_style(pre).ok_or_else(|| {
        anyhow!(
            "{}: GGUF tokenizer.ggml.pre is {pre:?}, a pre-tokenizer ftlab does not know; \
             supported: {}",
            display(path),
            supported_gguf_pre_tokenizers().join(", ")
        )
    })?;

    let tokens = gguf_str_array(content, path, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!(
            "{}: GGUF metadata `tokenizer.ggml.tokens` is empty",
            display(path)
        );
    }
    let merges = gguf_str_array(content, path, "tokenizer.ggml.merges")?;
    let token_types = gguf_opt_int_array(content, path, "tokenizer.ggml.token_type")?;
    if let Some(types) = &token_types {
        if types.len() != tokens.len() {
            bail!(
                "{}: GGUF metadata `tokenizer.ggml.token_type` has {} entries but \
                 `tokenizer.ggml.tokens` has {}",
                display(path),
                types.len(),
                tokens.len()
            );
        }
    }
    let token_type = |i: usize| token_types.as_ref().map_or(1, |t| t[i]);

    // The vocabulary, in the byte-level spelling. Tokens of a "gpt2" vocabulary are already spelled
    // that way; one that is not (a stray raw string) is respelled, as transformers does. Added
    // tokens keep their raw text: that is what they are matched against.
    let alphabet = byte_level_alphabet();
    let in_alphabet = |s: &str| s.chars().all(|c| alphabet.contains(&c));
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    let mut added: Vec<AddedToken> = Vec::new();
    let mut added_ids: Vec<(String, u32)> = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let ty = token_type(i);
        let is_added = matches!(
            ty,
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_USER_DEFINED
        );
        let spelled = if is_added || in_alphabet(tok) {
            tok.to_string()
        } else {
            tok.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.entry(spelled).or_insert(i as u32);
        if is_added && !tok.is_empty() {
            let special = ty != TOKEN_TYPE_USER_DEFINED;
            added.push(AddedToken::from(tok.to_string(), special).normalized(false));
            added_ids.push((tok.to_string(), i as u32));
        }
    }

    let mut merge_pairs: Vec<(String, String)> = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            anyhow!(
                "{}: GGUF metadata `tokenizer.ggml.merges`[{i}] = {m:?} is not two tokens \
                 separated by a space",
                display(path)
            )
        })?;
        merge_pairs.push((a.to_string(), b.to_string()));
    }

    let ignore_merges = style == PreStyle::Llama3;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merge_pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| {
            anyhow!(
                "{}: cannot build a BPE model from GGUF `tokenizer.ggml.tokens` and \
                 `tokenizer.ggml.merges`: {e}",
                display(path)
            )
        })?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(
        pre_tokenizer_for(style).with_context(|| display(path))?,
    ));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    tokenizer
        .add_special_tokens(added)
        .map_err(|e| anyhow!("{}: cannot add the special tokens: {e}", display(path)))?;
    // Each added token must keep the id the file gives it.
    for (content, want) in &added_ids {
        let got = tokenizer.token_to_id(content);
        if got != Some(*want) {
            bail!(
                "{}: special token {content:?} got id {got:?}, but the GGUF vocabulary has it at \
                 {want} (duplicate token strings in `tokenizer.ggml.tokens`?)",
                display(path)
            );
        }
    }

    let add_bos = gguf_opt_bool(content, path, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = gguf_opt_bool(content, path, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let bos = gguf_opt_id(content, path, "tokenizer.ggml.bos_token_id")?;
    let eos = gguf_opt_id(content, path, "tokenizer.ggml.eos_token_id")?;
    let lookup = |id: Option<u32>, key: &str| -> Result<Option<(String, u32)>> {
        match id {
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
    let bos = if add_bos {
        lookup(bos, "tokenizer.ggml.bos_token_id")?
    } else {
        None
    };
    let eos = if add_eos {
        lookup(eos, "tokenizer.ggml.eos_token_id")?
    } else {
        None
    };
    if bos.is_some() || eos.is_some() {
        tokenizer.with_post_processor(Some(
            template_processing(bos, eos).with_context(|| display(path))?,
        ));
    }
    Ok(tokenizer)
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

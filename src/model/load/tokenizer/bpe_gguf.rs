//! The byte-level BPE tokenizer a GGUF file describes (`tokenizer.ggml.*`): vocabulary,
//! merges, added tokens and the BOS/EOS post-processor.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::Tokenizer;

use super::display;
use super::gguf_meta::{
    gguf_opt_str, gguf_str_array, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED,
};
use super::gguf_vocab::{add_gguf_tokens, bos_eos_post_processor, GgufAddedToken, GgufVocab};
use super::pre_tokenizer::{
    pre_tokenizer_for, pre_tokenizer_style, supported_gguf_pre_tokenizers, PreStyle,
};

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

/// Rebuilds the byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, the kind SmolLM2,
/// Llama 3, Qwen2 and GPT-2 use) a GGUF file describes, with the pre-tokenizers in
/// [`supported_gguf_pre_tokenizers`]; a file without `tokenizer.ggml.pre` gets llama.cpp's
/// default split. Tokens typed control (3) or unknown (2) become special added tokens (matched
/// whole, skipped when decoding with `skip_special_tokens`); user-defined ones (4) become plain
/// added tokens (matched whole, kept when decoding), as transformers and llama.cpp do. A BOS
/// (EOS) is added by the post-processor only when `tokenizer.ggml.add_bos_token`
/// (`add_eos_token`) is true.
///
/// `path` is only used in error messages.
pub(super) fn bpe_tokenizer_from_gguf(
    content: &gguf_file::Content,
    path: &Path,
) -> Result<Tokenizer> {
    let pre = gguf_opt_str(content, path, "tokenizer.ggml.pre")?.unwrap_or("default");
    let style = pre_tokenizer_style(pre).ok_or_else(|| {
        anyhow!(
            "{}: GGUF tokenizer.ggml.pre is {pre:?}, a pre-tokenizer ftlab does not know; \
             supported: {}",
            display(path),
            supported_gguf_pre_tokenizers().join(", ")
        )
    })?;

    let vocab_meta = GgufVocab::read(content, path)?;
    let tokens = &vocab_meta.tokens;
    let merges = gguf_str_array(content, path, "tokenizer.ggml.merges")?;

    // The vocabulary, in the byte-level spelling. Tokens of a "gpt2" vocabulary are already spelled
    // that way; one that is not (a stray raw string) is respelled, as transformers does. Added
    // tokens keep their raw text: that is what they are matched against.
    let alphabet = byte_level_alphabet();
    let in_alphabet = |s: &str| s.chars().all(|c| alphabet.contains(&c));
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    let mut added: Vec<GgufAddedToken> = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let ty = vocab_meta.token_type(i);
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
        if is_added {
            added.push(GgufAddedToken {
                content: tok,
                id: i as u32,
                special: ty != TOKEN_TYPE_USER_DEFINED,
            });
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
    add_gguf_tokens(&mut tokenizer, &added, path)?;
    if let Some(post) = bos_eos_post_processor(content, path, tokens, false)? {
        tokenizer.with_post_processor(Some(post));
    }
    Ok(tokenizer)
}

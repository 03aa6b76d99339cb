//! The SentencePiece tokenizer a GGUF file describes (`tokenizer.ggml.model = "llama"`: Gemma,
//! Llama 2, TinyLlama, Mistral): tokens with scores and token types, byte-fallback tokens
//! `<0x00>`..`<0xFF>`, and no merges list.
//!
//! It is rebuilt the way transformers rebuilds it from the same file (a BPE with byte fallback
//! whose merges come from the vocabulary), so that ids agree with
//! `AutoTokenizer.from_pretrained(dir, gguf_file=name)`:
//! * every way to cut a token into two tokens of the vocabulary is a merge, ranked by the token
//!   it makes: by its score, or for Gemma by its place in the file (Gemma's scores do not follow
//!   its merge order; the file order does);
//! * spaces become `▁` before the model sees the text; a `▁` is put in front of the text when
//!   `tokenizer.ggml.add_space_prefix` says so, and the decoder takes that space off again;
//! * Gemma stores its tokens of two or more spaces as real spaces; they are spelled with `▁`
//!   like every other space, so that the merges building them are found.
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, Result};
use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::Tokenizer;

use super::display;
use super::gguf_meta::{
    gguf_f32_array, gguf_opt_bool, gguf_opt_id, gguf_opt_str, TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED,
};
use super::gguf_vocab::{
    add_gguf_tokens, bos_eos_post_processor, check_len, GgufAddedToken, GgufVocab,
};

/// SentencePiece's stand-in for a space.
const METASPACE: char = '▁';

/// `general.architecture` values whose SentencePiece vocabulary is Gemma's.
const GEMMA_ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3"];

/// Rebuilds the SentencePiece tokenizer a GGUF file describes. Requires `tokenizer.ggml.tokens`
/// and `tokenizer.ggml.scores` (one per token); `tokenizer.ggml.token_type` is optional. Control
/// (3) and unknown (2) tokens become special added tokens, user-defined ones (4) plain added
/// tokens (both matched whole in the text). BOS is added unless `tokenizer.ggml.add_bos_token`
/// is false; EOS only when `add_eos_token` is true. Without `tokenizer.ggml.add_space_prefix`,
/// Gemma files get no prefix space and others get one, as transformers does.
///
/// `path` is only used in error messages.
pub(super) fn spm_tokenizer_from_gguf(
    content: &gguf_file::Content,
    path: &Path,
) -> Result<Tokenizer> {
    let meta = GgufVocab::read(content, path)?;
    let scores = gguf_f32_array(content, path, "tokenizer.ggml.scores")?;
    check_len(
        path,
        "tokenizer.ggml.scores",
        scores.len(),
        meta.tokens.len(),
    )?;
    let arch = gguf_opt_str(content, path, "general.architecture")?;
    let gemma = arch.is_some_and(|a| GEMMA_ARCHITECTURES.contains(&a));
    let add_space_prefix =
        gguf_opt_bool(content, path, "tokenizer.ggml.add_space_prefix")?.unwrap_or(!gemma);

    let spelled: Vec<Cow<str>> = if gemma {
        meta.tokens.iter().map(|t| spell_spaces(t)).collect()
    } else {
        meta.tokens.iter().map(|t| Cow::Borrowed(*t)).collect()
    };
    // token -> id; a token listed twice keeps its last id, as a Python dict built from the list
    // does (transformers builds it that way).
    let mut vocab = Vocab::with_capacity(spelled.len());
    for (i, t) in spelled.iter().enumerate() {
        vocab.insert(t.to_string(), i as u32);
    }
    let priority = |id: u32| -> f32 {
        if gemma {
            -(id as f32)
        } else {
            scores[id as usize]
        }
    };
    let merges = merges_from_vocab(&spelled, &vocab, priority);
    let added = added_tokens(&meta, &vocab);

    let unk = gguf_opt_id(content, path, "tokenizer.ggml.unknown_token_id")?
        .and_then(|id| spelled.get(id as usize))
        .map(|t| t.to_string())
        .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_string()));
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| {
        anyhow!(
            "{}: cannot build a BPE model from the SentencePiece vocabulary in GGUF \
             `tokenizer.ggml.tokens`: {e}",
            display(path)
        )
    })?;

    let mut tokenizer = Tokenizer::new(bpe);
    let scheme = if add_space_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    // Not split at spaces: SentencePiece merges across them ("▁▁" is a token).
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(METASPACE, scheme, false)));
    tokenizer.with_decoder(Some(decoder(add_space_prefix)?));

    add_gguf_tokens(&mut tokenizer, &added, path)?;
    if let Some(post) = bos_eos_post_processor(content, path, &meta.tokens, true)? {
        tokenizer.with_post_processor(Some(post));
    }
    Ok(tokenizer)
}

/// The tokens matched whole in the text: control (3) and unknown (2) ones as special tokens,
/// user-defined (4) ones as plain tokens. A user-defined token whose spelling changed (Gemma's
/// runs of spaces) is left to the merges, as transformers does: it adds only user-defined tokens
/// found in the (respelled) vocabulary.
fn added_tokens<'a>(meta: &GgufVocab<'a>, vocab: &Vocab) -> Vec<GgufAddedToken<'a>> {
    let mut added = Vec::new();
    for (i, tok) in meta.tokens.iter().enumerate() {
        let ty = meta.token_type(i);
        let special = matches!(ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN);
        let user = ty == TOKEN_TYPE_USER_DEFINED && vocab.contains_key(*tok);
        if special || user {
            added.push(GgufAddedToken {
                content: tok,
                id: i as u32,
                special,
            });
        }
    }
    added
}

/// Gemma's tokens made only of whitespace with a space in them ("  ", "   ", ...) respelled with
/// one `▁` per character, the spelling every other token uses for a space.
fn spell_spaces(token: &str) -> Cow<'_, str> {
    if token.contains(' ') && token.chars().all(is_python_space) {
        Cow::Owned(METASPACE.to_string().repeat(token.chars().count()))
    } else {
        Cow::Borrowed(token)
    }
}

/// Python's `str.isspace`, which transformers' respelling uses: Unicode White_Space plus the
/// four ASCII separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The decoder: `▁` back to a space, byte tokens back to UTF-8, and the prefix space taken off.
fn decoder(strip_prefix_space: bool) -> Result<DecoderWrapper> {
    let replace = Replace::new(METASPACE.to_string(), " ")
        .map_err(|e| anyhow!("cannot build the SentencePiece decoder: {e}"))?;
    let mut steps: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if strip_prefix_space {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

/// One merge: the ids of its two pieces, the priority of the token they make, and the lengths
/// (in characters) of the pieces.
struct Candidate {
    left: u32,
    right: u32,
    priority: f32,
    left_chars: usize,
    right_chars: usize,
}

/// The merges a vocabulary without a merges list implies, in transformers' order
/// (`generate_merges`), so that the BPE built from them segments text the same way: every cut of
/// a token into two tokens of the vocabulary is a merge; merges are ranked by the priority of the
/// token they make (highest first), then by the longer left piece, then the longer right piece,
/// then by the ids of the pieces.
fn merges_from_vocab(
    spelled: &[Cow<str>],
    ids: &Vocab,
    priority: impl Fn(u32) -> f32,
) -> Vec<(String, String)> {
    // Each distinct token once, at its first place in the file, with the priority of the id it
    // keeps (its last): the order and value a Python dict built from the list has.
    let has_repeats = ids.len() != spelled.len();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut local: Vec<Candidate> = Vec::new();
    for token in spelled {
        let token = token.as_ref();
        if has_repeats && !seen.insert(token) {
            continue;
        }
        let p = priority(ids[token]);
        local.clear();
        let mut left_chars = 0;
        let total_chars = token.chars().count();
        for (cut, _) in token.char_indices().skip(1) {
            left_chars += 1;
            let (l, r) = token.split_at(cut);
            if let (Some(&left), Some(&right)) = (ids.get(l), ids.get(r)) {
                local.push(Candidate {
                    left,
                    right,
                    priority: p,
                    left_chars,
                    right_chars: total_chars - left_chars,
                });
            }
        }
        local.sort_by_key(|c| (c.left, c.right));
        candidates.append(&mut local);
    }
    // Stable, so merges that tie keep the order above.
    candidates.sort_by(|a, b| {
        b.priority
            .partial_cmp(&a.priority)
            .unwrap_or(Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    candidates
        .iter()
        .map(|c| {
            (
                spelled[c.left as usize].to_string(),
                spelled[c.right as usize].to_string(),
            )
        })
        .collect()
}

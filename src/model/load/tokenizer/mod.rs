//! Tokenizers, special token ids and chat templates, from a GGUF file's metadata or from a
//! Hugging Face model folder (`tokenizer.json`, `tokenizer_config.json`, `config.json`,
//! `generation_config.json`).
//!
//! A GGUF file carries no `tokenizer.json`: llama.cpp stores the vocabulary, the merges, the token
//! types and the special ids as metadata (`tokenizer.ggml.*`). [`tokenizer_from_gguf`] rebuilds
//! the byte-level BPE tokenizer those describe, with the pre-tokenizer named by
//! `tokenizer.ggml.pre`, so that it gives the ids the original `tokenizer.json` gives.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// The `tokenizer.ggml.model` values this module can rebuild.
pub const SUPPORTED_GGUF_TOKENIZER_MODELS: &[&str] = &["gpt2"];

/// GPT-2's split regex, the one `ByteLevel(use_regex = true)` applies.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's split regex, as its `tokenizer.json` spells it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex: Llama 3's with digits one by one.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o's (and Llama 4's) split regex.
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer families `tokenizer.ggml.pre` can name; see [`pre_tokenizer_style`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreStyle {
    /// GPT-2: `ByteLevel(add_prefix_space = false, use_regex = true)`.
    Gpt2,
    /// StarCoder, SmolLM: digits one by one, then GPT-2's split.
    DigitsThenGpt2,
    /// Llama 3: its own split regex (digits in runs of up to 3), merges ignored for whole words.
    Llama3,
    /// Qwen2: Llama 3's regex with digits one by one.
    Qwen2,
    /// GPT-4o, Llama 4.
    Gpt4o,
    /// llama.cpp's fallback for BPE vocabularies that name no pre-tokenizer.
    LlamaCppDefault,
}

/// `tokenizer.ggml.pre` values and the pre-tokenizer each stands for (llama.cpp's names).
const PRE_STYLES: &[(&str, PreStyle)] = &[
    ("default", PreStyle::LlamaCppDefault),
    ("gpt-2", PreStyle::Gpt2),
    ("gpt2", PreStyle::Gpt2),
    ("phi-2", PreStyle::Gpt2),
    ("mpt", PreStyle::Gpt2),
    ("olmo", PreStyle::Gpt2),
    ("jais", PreStyle::Gpt2),
    ("roberta-bpe", PreStyle::Gpt2),
    ("exaone4", PreStyle::Gpt2),
    ("smollm", PreStyle::DigitsThenGpt2),
    ("starcoder", PreStyle::DigitsThenGpt2),
    ("refact", PreStyle::DigitsThenGpt2),
    ("command-r", PreStyle::DigitsThenGpt2),
    ("codeshell", PreStyle::DigitsThenGpt2),
    ("exaone", PreStyle::DigitsThenGpt2),
    ("minerva-7b", PreStyle::DigitsThenGpt2),
    ("llama-bpe", PreStyle::Llama3),
    ("llama3", PreStyle::Llama3),
    ("llama-v3", PreStyle::Llama3),
    ("falcon3", PreStyle::Llama3),
    ("falcon-h1", PreStyle::Llama3),
    ("pixtral", PreStyle::Llama3),
    ("dbrx", PreStyle::Llama3),
    ("smaug-bpe", PreStyle::Llama3),
    ("qwen2", PreStyle::Qwen2),
    ("deepseek-r1-qwen", PreStyle::Qwen2),
    ("stablelm2", PreStyle::Qwen2),
    ("megrez", PreStyle::Qwen2),
    ("gpt-4o", PreStyle::Gpt4o),
    ("llama4", PreStyle::Gpt4o),
];

/// The `tokenizer.ggml.pre` values [`tokenizer_from_gguf`] understands.
/// Token ids of `text` without the special tokens a post-processor would add (BOS, …).
pub fn encode_plain(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing failed: {e}"))?
        .get_ids()
        .to_vec())
}

pub fn supported_gguf_pre_tokenizers() -> Vec<&'static str> {
    PRE_STYLES.iter().map(|(name, _)| *name).collect()
}

fn pre_tokenizer_style(pre: &str) -> Option<PreStyle> {
    PRE_STYLES
        .iter()
        .find(|(name, _)| *name == pre)
        .map(|(_, style)| *style)
}

// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

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

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x as i64),
        Value::I8(x) => Some(x as i64),
        Value::U16(x) => Some(x as i64),
        Value::I16(x) => Some(x as i64),
        Value::U32(x) => Some(x as i64),
        Value::I32(x) => Some(x as i64),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {:?}", first.value_type()),
            None => "empty array".to_string(),
        },
        other => format!("{:?}", other.value_type()),
    }
}

/// A required string key.
fn gguf_str<'a>(content: &'a gguf_file::Content, path: &Path, key: &str) -> Result<&'a str> {
    let v = content.metadata.get(key).ok_or_else(|| {
        anyhow!(
            "{}: GGUF metadata has no `{key}`, needed to build the tokenizer",
            display(path)
        )
    })?;
    match v {
        Value::String(s) => Ok(s),
        other => bail!(
            "{}: GGUF metadata `{key}` should be a string, found {}",
            display(path),
            type_name(other)
        ),
    }
}

/// An optional string key (absent: `None`; present with another type: error).
fn gguf_opt_str<'a>(
    content: &'a gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Option<&'a str>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!(
            "{}: GGUF metadata `{key}` should be a string, found {}",
            display(path),
            type_name(other)
        ),
    }
}

/// A required array of strings.
fn gguf_str_array<'a>(
    content: &'a gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Vec<&'a str>> {
    let v = content.metadata.get(key).ok_or_else(|| {
        anyhow!(
            "{}: GGUF metadata has no `{key}`, needed to build the tokenizer",
            display(path)
        )
    })?;
    let Value::Array(items) = v else {
        bail!(
            "{}: GGUF metadata `{key}` should be an array of strings, found {}",
            display(path),
            type_name(v)
        );
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.as_str()),
            other => bail!(
                "{}: GGUF metadata `{key}`[{i}] should be a string, found {}",
                display(path),
                type_name(other)
            ),
        })
        .collect()
}

/// An optional array of integers.
fn gguf_opt_int_array(
    content: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Option<Vec<i64>>> {
    let Some(v) = content.metadata.get(key) else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        bail!(
            "{}: GGUF metadata `{key}` should be an array of integers, found {}",
            display(path),
            type_name(v)
        );
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            value_as_i64(item).ok_or_else(|| {
                anyhow!(
                    "{}: GGUF metadata `{key}`[{i}] should be an integer, found {}",
                    display(path),
                    type_name(item)
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// An optional token id.
fn gguf_opt_id(content: &gguf_file::Content, path: &Path, key: &str) -> Result<Option<u32>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => {
            let id = value_as_i64(v).ok_or_else(|| {
                anyhow!(
                    "{}: GGUF metadata `{key}` should be an integer token id, found {}",
                    display(path),
                    type_name(v)
                )
            })?;
            // llama.cpp writes -1 (as u32::MAX when unsigned) for "no such token".
            if id < 0 || id >= u32::MAX as i64 {
                Ok(None)
            } else {
                Ok(Some(id as u32))
            }
        }
    }
}

/// An optional boolean.
fn gguf_opt_bool(content: &gguf_file::Content, path: &Path, key: &str) -> Result<Option<bool>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match value_as_i64(v) {
            Some(i) => Ok(Some(i != 0)),
            None => bail!(
                "{}: GGUF metadata `{key}` should be a boolean, found {}",
                display(path),
                type_name(v)
            ),
        },
    }
}

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

fn pre_tokenizer_for(style: PreStyle) -> Result<PreTokenizerWrapper> {
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let s = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("cannot compile split regex {pattern:?}: {e}"))?;
        Ok(PreTokenizerWrapper::Split(s))
    };
    let byte_level_no_regex = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false));
    Ok(match style {
        PreStyle::Gpt2 => PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        PreStyle::DigitsThenGpt2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ])),
        PreStyle::Llama3 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(LLAMA3_SPLIT)?,
            byte_level_no_regex(),
        ])),
        PreStyle::Qwen2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(QWEN2_SPLIT)?,
            byte_level_no_regex(),
        ])),
        PreStyle::Gpt4o => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(GPT4O_SPLIT)?,
            byte_level_no_regex(),
        ])),
        // llama.cpp applies these four splits one after another, keeping every piece.
        PreStyle::LlamaCppDefault => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(r"[\p{P}\$\+<=>\^~\|]+")?,
            split(GPT2_SPLIT)?,
            split(r"\p{N}+")?,
            split(r"[0-9][0-9][0-9]")?,
            byte_level_no_regex(),
        ])),
    })
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

/// Loads a Hugging Face `tokenizer.json`.
pub fn tokenizer_from_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", display(path)))
}

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

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .with_context(|| format!("{}: not valid JSON", display(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", display(path))),
    }
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

/// The Jinja chat template a GGUF file carries (`tokenizer.chat_template`), if any.
pub fn chat_template_from_gguf(content: &gguf_file::Content) -> Option<String> {
    match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The chat template of a Hugging Face model folder, looked for where transformers looks:
/// `chat_template.jinja`, then `chat_template.json` (`{"chat_template": ...}`), then
/// `tokenizer_config.json`'s `chat_template`, which is a string or a list of
/// `{"name", "template"}` (the one named "default" is taken, else the first).
/// `Ok(None)` when the folder has none.
pub fn chat_template_from_hf_dir(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => return Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", display(&jinja))),
    }
    for file in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        let Some(json) = read_json(&path)? else {
            continue;
        };
        match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
            Some(serde_json::Value::Array(items)) => {
                let named = |item: &serde_json::Value| -> Option<(String, String)> {
                    Some((
                        item.get("name")?.as_str()?.to_string(),
                        item.get("template")?.as_str()?.to_string(),
                    ))
                };
                let list: Vec<(String, String)> = items.iter().filter_map(named).collect();
                if list.len() != items.len() {
                    bail!(
                        "{}: `chat_template` is a list whose entries are not all \
                         {{\"name\": ..., \"template\": ...}}",
                        display(&path)
                    );
                }
                let chosen = list
                    .iter()
                    .find(|(n, _)| n == "default")
                    .or_else(|| list.first());
                return Ok(chosen.map(|(_, t)| t.clone()));
            }
            Some(_) => bail!(
                "{}: `chat_template` should be a string or a list of {{\"name\", \"template\"}}",
                display(&path)
            ),
        }
    }
    Ok(None)
}

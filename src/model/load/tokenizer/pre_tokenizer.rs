//! The pre-tokenizers `tokenizer.ggml.pre` names (llama.cpp's names), as `tokenizers`
//! pre-tokenizers: the split that runs before BPE merges.
use anyhow::{anyhow, Result};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

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
pub(super) enum PreStyle {
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
pub fn supported_gguf_pre_tokenizers() -> Vec<&'static str> {
    PRE_STYLES.iter().map(|(name, _)| *name).collect()
}

pub(super) fn pre_tokenizer_style(pre: &str) -> Option<PreStyle> {
    PRE_STYLES
        .iter()
        .find(|(name, _)| *name == pre)
        .map(|(_, style)| *style)
}

pub(super) fn pre_tokenizer_for(style: PreStyle) -> Result<PreTokenizerWrapper> {
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

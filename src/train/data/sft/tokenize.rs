//! [`SftTokenizer`]: an example → token ids with the response mask (the module
//! documentation of [`super`] says how prompt/response boundaries are found).
use std::fmt;

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

use super::super::example::Example;
use super::super::template::{Formatted, Formatter, PromptTemplate};
use crate::infer::LanguageModel;
use crate::model::export::TextSide;
use crate::model::load::tokenizer::{encode_plain, SpecialTokens};

/// A tokenizer with a prompt template: turns examples into token ids and loss masks.
pub struct SftTokenizer {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    formatter: Formatter,
    eos_id: u32,
    pad_id: u32,
    /// Ids the tokenizer's post-processor puts before a single sequence (BOS), if any.
    bos_prefix: Vec<u32>,
}

impl fmt::Debug for SftTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftTokenizer")
            .field("formatter", &self.formatter)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("bos_prefix", &self.bos_prefix)
            .finish_non_exhaustive()
    }
}

impl SftTokenizer {
    /// The model's tokenizer, special tokens and chat template with `template`.
    pub fn new(lm: &LanguageModel, template: PromptTemplate) -> Result<Self> {
        Self::from_side(lm.text_side(), template)
    }

    /// From a model's text side (no weights needed).
    pub fn from_side(text: TextSide<'_>, template: PromptTemplate) -> Result<Self> {
        Self::from_parts(
            text.tokenizer.clone(),
            text.special.clone(),
            text.chat_template,
            template,
        )
    }

    /// From a tokenizer, its special tokens and (for [`PromptTemplate::Chat`]) the chat
    /// template source. The tokenizer must have an EOS token; padding uses its pad token, or
    /// EOS when it has none.
    pub fn from_parts(
        tokenizer: Tokenizer,
        special: SpecialTokens,
        chat_template: Option<&str>,
        template: PromptTemplate,
    ) -> Result<Self> {
        let text_of = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let eos_id = special
            .eos
            .or_else(|| special.eos_tokens.first().copied())
            .ok_or_else(|| {
                anyhow!(
                    "the tokenizer has no end-of-sequence token; SFT needs one to end responses"
                )
            })?;
        let pad_id = special.pad.unwrap_or(eos_id);
        let bos_text = text_of(special.bos);
        let eos_text = text_of(Some(eos_id));
        let end_texts: Vec<String> = special
            .eos_tokens
            .iter()
            .map(|&i| text_of(Some(i)))
            .collect();
        let formatter = Formatter::new(template, chat_template, &bos_text, &eos_text, end_texts)?;
        // What the post-processor adds in front of a single sequence.
        let probe = "a";
        let with = tokenizer
            .encode(probe, true)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let without = tokenizer
            .encode(probe, false)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        let (with, without) = (with.get_ids(), without.get_ids());
        let bos_prefix = match with
            .windows(without.len().max(1))
            .position(|w| w == without)
        {
            Some(at) if !without.is_empty() => with[..at].to_vec(),
            _ => Vec::new(),
        };
        Ok(Self {
            tokenizer,
            special,
            formatter,
            eos_id,
            pad_id,
            bos_prefix,
        })
    }

    /// A system message put before instruction examples under a chat template.
    pub fn with_system_prompt(mut self, system: Option<String>) -> Self {
        self.formatter.set_system_prompt(system);
        self
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }
    pub fn template(&self) -> &PromptTemplate {
        self.formatter.template()
    }
    /// The id appended after responses that do not end with an end-of-turn token.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    /// The id rows are padded with: the tokenizer's pad token, or EOS.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The example's text split into prompt and response segments.
    pub fn format(&self, example: &Example) -> Result<Formatted> {
        self.formatter.format(example)
    }

    /// The prompt text to generate the example's (last) response from, exactly as training
    /// puts it before the response.
    pub fn prompt_text(&self, example: &Example) -> Result<String> {
        self.formatter.prompt(example)
    }

    /// The prompt's token ids (with the BOS the tokenizer adds for plain templates), for
    /// generation.
    pub fn prompt_ids(&self, example: &Example) -> Result<Vec<u32>> {
        let text = self.prompt_text(example)?;
        let mut ids = if matches!(self.template(), PromptTemplate::Chat) {
            Vec::new()
        } else {
            self.bos_prefix.clone()
        };
        ids.extend(self.encode(&text)?);
        Ok(ids)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_plain(&self.tokenizer, text)
    }

    /// Tokenises an example, untruncated: ids and the response mask (1 = a response token,
    /// including the end-of-turn / EOS token).
    pub fn tokenize(&self, example: &Example) -> Result<Tokenized> {
        let formatted = self.format(example)?;
        let full: String = formatted.segments.iter().map(|s| s.text.as_str()).collect();
        let ids = self.encode(&full)?;
        // Token index where each segment starts: the length of the tokenised text before it,
        // where that is a prefix of the whole text's tokens.
        let mut starts = Vec::with_capacity(formatted.segments.len());
        let mut offset = 0;
        let mut merged = false;
        let mut prev = 0;
        for seg in &formatted.segments {
            let start = if offset == 0 {
                0
            } else {
                let prefix = self.encode(&full[..offset])?;
                let common = prefix.iter().zip(&ids).take_while(|(a, b)| a == b).count();
                if common != prefix.len() {
                    merged = true;
                }
                common
            };
            let start = start.max(prev);
            starts.push(start);
            prev = start;
            offset += seg.text.len();
        }
        let mut response_mask = vec![0u8; ids.len()];
        for (k, seg) in formatted.segments.iter().enumerate() {
            if !seg.train {
                continue;
            }
            let end = starts.get(k + 1).copied().unwrap_or(ids.len());
            for m in &mut response_mask[starts[k]..end] {
                *m = 1;
            }
        }
        let mut input_ids = Vec::with_capacity(ids.len() + 2);
        let mut mask = Vec::with_capacity(ids.len() + 2);
        if formatted.prepend_bos && !ids.starts_with(&self.bos_prefix) {
            input_ids.extend_from_slice(&self.bos_prefix);
            mask.extend(std::iter::repeat_n(0u8, self.bos_prefix.len()));
        }
        input_ids.extend_from_slice(&ids);
        mask.extend_from_slice(&response_mask);
        if formatted.append_eos {
            input_ids.push(self.eos_id);
            mask.push(1);
        }
        Ok(Tokenized {
            input_ids,
            response_mask: mask,
            boundary_merge: merged,
        })
    }
}

/// An example's tokens before truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub input_ids: Vec<u32>,
    /// 1 for response tokens (and the end-of-turn / EOS token closing them).
    pub response_mask: Vec<u8>,
    /// A prompt/response boundary fell inside a token (see the module documentation).
    pub boundary_merge: bool,
}

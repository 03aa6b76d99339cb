//! A causal LM ready for text: model, tokenizer, special tokens and chat template.
use anyhow::{anyhow, Result};
use candle_core::Var;
use tokenizers::Tokenizer;

use super::chat_template::{ChatMessage, ChatTemplate};
use super::generate::{generate, GenerateRequest, GenerateStats, TextStream};
use super::sampling::SamplingParams;
use crate::hub::{ModelSource, ResolvedModel};
use crate::model::load::gguf::GgufFile;
use crate::model::load::tokenizer::{
    chat_template_from_gguf, chat_template_from_hf_dir, encode_plain, special_tokens_from_gguf,
    special_tokens_from_hf_dir, tokenizer_from_file, tokenizer_from_gguf, SpecialTokens,
};
use crate::model::{CausalLm, LoadOptions};

pub struct LanguageModel {
    pub name: String,
    pub model: CausalLm,
    /// Trainable parameters (empty unless loaded with `trainable`).
    pub params: Vec<(String, Var)>,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

/// The text side of a language model without its weights: what tokenising data needs
/// (the memory plan reads the rows' lengths this way before any weight loads).
pub struct TextParts {
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

impl TextParts {
    /// The text side of a resolved model; no tensor is read.
    pub fn load(resolved: &ResolvedModel) -> Result<Self> {
        match &resolved.source {
            ModelSource::Gguf { path } => Self::from_gguf(&GgufFile::open(path)?, path),
            ModelSource::HfDir { dir } => Self::from_hf_dir(dir),
        }
    }

    fn from_gguf(file: &GgufFile, path: &std::path::Path) -> Result<Self> {
        Ok(Self {
            tokenizer: tokenizer_from_gguf(file.content(), path)?,
            special: special_tokens_from_gguf(file.content(), path)?,
            chat_template: chat_template_from_gguf(file.content()),
        })
    }

    fn from_hf_dir(dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            tokenizer: tokenizer_from_file(&dir.join("tokenizer.json"))?,
            special: special_tokens_from_hf_dir(dir)?,
            chat_template: chat_template_from_hf_dir(dir)?,
        })
    }

    pub fn side(&self) -> crate::model::export::TextSide<'_> {
        crate::model::export::TextSide {
            tokenizer: &self.tokenizer,
            special: &self.special,
            chat_template: self.chat_template.as_deref(),
        }
    }
}

impl LanguageModel {
    /// The tokenizer side, as an HF directory stores it.
    pub fn text_side(&self) -> crate::model::export::TextSide<'_> {
        crate::model::export::TextSide {
            tokenizer: &self.tokenizer,
            special: &self.special,
            chat_template: self.chat_template.as_deref(),
        }
    }

    pub fn load(resolved: &ResolvedModel, opts: &LoadOptions) -> Result<Self> {
        let (loaded, text) = match &resolved.source {
            ModelSource::Gguf { path } => {
                let file = GgufFile::open(path)?;
                let text = TextParts::from_gguf(&file, path)?;
                (CausalLm::from_gguf_file(file, opts)?, text)
            }
            ModelSource::HfDir { dir } => (
                CausalLm::from_hf_dir(dir, opts)?,
                TextParts::from_hf_dir(dir)?,
            ),
        };
        Ok(Self {
            name: resolved.name.clone(),
            model: loaded.model,
            params: loaded.params,
            tokenizer: text.tokenizer,
            special: text.special,
            chat_template: text.chat_template,
        })
    }

    /// Resolves a model spec (name, path, `hf:org/name`) and loads it.
    pub fn load_spec(spec: &str, opts: &LoadOptions) -> Result<Self> {
        Self::load(&crate::hub::resolve(spec)?, opts)
    }

    /// Token ids of `text` without added special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_plain(&self.tokenizer, text)
    }

    /// Token ids of a prompt as HF's `tokenizer(text)` gives them: with what the
    /// tokenizer adds in front (Gemma's and Llama 2's BOS; nothing for SmolLM2) — unless
    /// the text already starts with the BOS token, as a rendered chat template does.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let bos = self.token_text(self.special.bos);
        if !bos.is_empty() && text.starts_with(&bos) {
            return self.encode(text);
        }
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding failed: {e}"))
    }

    /// Generates from `prompt_ids` until one of the model's end-of-turn tokens or
    /// `max_new_tokens`, calling `on_piece` with each new piece of text (whole UTF-8
    /// characters) as it is produced; an error from `on_piece` stops generation.
    pub fn stream(
        &self,
        prompt_ids: Vec<u32>,
        max_new_tokens: usize,
        sampling: &SamplingParams,
        on_piece: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        let req = GenerateRequest {
            prompt_ids,
            max_new_tokens,
            sampling: sampling.clone(),
            stop_ids: self.special.eos_tokens.clone(),
        };
        let mut stream = TextStream::new(&self.tokenizer);
        generate(&self.model, &req, |id| {
            if let Some(piece) = stream.push(id)? {
                on_piece(&piece)?;
            }
            Ok(())
        })
    }

    fn token_text(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.tokenizer.id_to_token(i))
            .unwrap_or_default()
    }

    /// The chat template of the model (from GGUF metadata or tokenizer_config.json).
    pub fn template(&self) -> Result<ChatTemplate> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            anyhow!(
                "model `{}` has no chat template (GGUF `tokenizer.chat_template` or tokenizer_config.json `chat_template`); run without --chat",
                self.name
            )
        })?;
        ChatTemplate::new(
            source,
            &self.token_text(self.special.bos),
            &self.token_text(self.special.eos),
        )
    }

    /// Renders `messages` with the model's own chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }
}

impl LanguageModel {
    /// Applies a training result: a PEFT adapter directory, a run directory (its
    /// `adapter/`, `best/`, or `model/` weights of a full fine-tuning run), or a checkpoint
    /// (the order is [`crate::runs::layout::lm_result`]'s).
    pub fn apply_run(&mut self, path: &std::path::Path) -> Result<String> {
        use crate::adapt::peft::load_adapter;
        use crate::runs::layout::{lm_result, LmResult};
        match lm_result(path) {
            Some(LmResult::Adapter(dir)) => {
                let vars = load_adapter(&dir, &mut self.model)?;
                self.model.freeze();
                Ok(format!(
                    "LoRA adapter {} ({} tensors)",
                    dir.display(),
                    vars.len()
                ))
            }
            Some(LmResult::FullWeights(full)) => {
                let n = self.load_weights(&full)?;
                Ok(format!(
                    "fine-tuned weights {} ({n} tensors)",
                    full.display()
                ))
            }
            None => anyhow::bail!(
                "{}: no adapter_config.json (LoRA adapter) or model/model.safetensors (full fine-tuning) found here or in adapter/, best/, model/",
                path.display()
            ),
        }
    }

    /// Overwrites model weights by HF name from a safetensors file of trained parameters:
    /// every weight of the architecture's table that the file holds (linears, head,
    /// embedding, norms).
    fn load_weights(&mut self, file: &std::path::Path) -> Result<usize> {
        use crate::model::arch::WeightMut;
        use crate::model::linear::{BaseWeight, Linear};
        let device = self.model.device().clone();
        let tensors = candle_core::safetensors::load(file, &device)
            .map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
        crate::adapt::finite::ensure_finite(file, &tensors)?;
        let misfit = |name: &str, t: &candle_core::Tensor| {
            anyhow!(
                "{}: `{name}` has shape {:?}, which does not fit this model",
                file.display(),
                t.dims()
            )
        };
        let mut used = 0;
        for w in self.model.weights_mut() {
            let weight_name = w.tensor_name();
            let Some(t) = tensors.get(&weight_name) else {
                continue;
            };
            match w.weight {
                WeightMut::Linear(l) => {
                    if t.dims() != [l.out_features(), l.in_features()] {
                        return Err(misfit(&weight_name, t));
                    }
                    let bias = match tensors.get(&format!("{}.bias", w.name)) {
                        Some(b) => Some(b.clone()),
                        None => l.bias().cloned(),
                    };
                    *l = Linear::new(BaseWeight::Dense(t.clone()), bias);
                }
                WeightMut::OptLinear(Some(h)) => {
                    if t.dims() != [h.out_features(), h.in_features()] {
                        return Err(misfit(&weight_name, t));
                    }
                    h.set_base(BaseWeight::Dense(t.clone()));
                }
                WeightMut::OptLinear(None) => continue,
                WeightMut::Tensor(p) => {
                    if t.dims() != p.0.dims() {
                        return Err(misfit(&weight_name, t));
                    }
                    p.0 = t.clone();
                }
            }
            used += 1;
        }
        if used == 0 {
            anyhow::bail!("{}: no tensor matches this model", file.display());
        }
        Ok(used)
    }
}

//! Prompt templates: how an [`Example`] becomes text, split into the prompt (not trained on)
//! and the response (trained on).
//!
//! - [`PromptTemplate::Chat`] renders the model's own Jinja chat template. An instruction
//!   example becomes a user message ([`user_message`]: the instruction, then, when the example
//!   has one, a blank line, `Context:` and the context) and an assistant message (the
//!   response). The prompt is the rendering of the messages before the assistant's with
//!   `add_generation_prompt=true`; the response part is what the rendering of the conversation
//!   adds after that prompt, up to and including the template's end-of-turn token (text after
//!   it, such as `<|im_end|>`'s trailing newline, is dropped: generation stops at the token).
//!   The full rendering must start with the prompt rendering, so the split is exact; a template
//!   for which it does not is an error. Multi-turn conversations train on every assistant
//!   message the same way.
//! - [`PromptTemplate::PlainJa`] / [`PromptTemplate::PlainEn`]: the `### 指示:` / `### Instruction:`
//!   layouts of instruction-tuning tutorials ([`PLAIN_JA_TEMPLATE`], [`PLAIN_EN_TEMPLATE`]);
//!   the input section is left out when the context is empty.
//! - [`PromptTemplate::Custom`]: a Jinja template of your own with the variables
//!   `instruction`, `context`, `input` (the same as `context`), `response`, `bos_token`,
//!   `eos_token` and the example's extra fields. Everything before `{{ response }}` is the
//!   prompt; the response and whatever follows it are trained on. Without `{{ response }}`
//!   the rendering is the prompt and the response is appended to it. Undefined variables are
//!   errors (a typo in a variable name is reported, not rendered as nothing).
//!
//! For the plain and custom templates the tokenizer's end-of-sequence token is appended after
//! the response (unless the text already ends with an end-of-turn token), and the BOS token
//! the tokenizer adds to single sequences, if any, is put in front. Chat templates write their
//! own special tokens, as `apply_chat_template` does.

use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Map;

use super::example::Example;
use crate::config::TemplateChoice;
use crate::infer::chat_template::{ChatMessage, ChatTemplate};

/// The Japanese tutorial layout (`### 指示:` / `### 入力:` / `### 回答:`).
pub const PLAIN_JA_TEMPLATE: &str = "### 指示:\n{{ instruction }}\n\n\
{% if context %}### 入力:\n{{ context }}\n\n{% endif %}\
### 回答:\n{{ response }}";

/// The English (Alpaca-style, without the preamble) layout.
pub const PLAIN_EN_TEMPLATE: &str = "### Instruction:\n{{ instruction }}\n\n\
{% if context %}### Input:\n{{ context }}\n\n{% endif %}\
### Response:\n{{ response }}";

/// Stands for the response while a plain or custom template is rendered, to split it.
const RESPONSE_MARK: &str = "\u{E000}ftlab-response\u{E001}";

/// How examples are turned into text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PromptTemplate {
    /// The model's own chat template.
    #[default]
    Chat,
    /// [`PLAIN_JA_TEMPLATE`].
    PlainJa,
    /// [`PLAIN_EN_TEMPLATE`].
    PlainEn,
    /// A Jinja template (see the module documentation for its variables).
    Custom(String),
}

impl PromptTemplate {
    /// `chat`, `plain-ja`, `plain-en` or `custom`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::PlainJa => "plain-ja",
            Self::PlainEn => "plain-en",
            Self::Custom(_) => "custom",
        }
    }

    /// The Jinja source of a plain or custom template (`None` for `Chat`).
    pub fn jinja_source(&self) -> Option<&str> {
        match self {
            Self::Chat => None,
            Self::PlainJa => Some(PLAIN_JA_TEMPLATE),
            Self::PlainEn => Some(PLAIN_EN_TEMPLATE),
            Self::Custom(s) => Some(s),
        }
    }
}

impl FromStr for PromptTemplate {
    type Err = anyhow::Error;
    /// `chat`, `plain-ja` (`ja`), `plain-en` (`en`, `alpaca`), or a Jinja template (any text
    /// containing `{{`).
    /// The names are read by `config` ([`TemplateChoice::inline`]); template files are not
    /// accepted here.
    fn from_str(s: &str) -> Result<Self> {
        match TemplateChoice::inline(s) {
            Some(TemplateChoice::Builtin(t)) => Ok(t.into()),
            Some(TemplateChoice::Jinja(text)) => Ok(Self::Custom(text)),
            _ => bail!(
                "unknown prompt template `{}`; expected chat, plain-ja, plain-en or a Jinja \
                 template containing {{{{ instruction }}}}",
                s.trim().to_ascii_lowercase().replace('_', "-")
            ),
        }
    }
}

/// The user message of an instruction example under a chat template: the instruction alone,
/// or `"{instruction}\n\nContext:\n{context}"` when the context is not blank.
pub fn user_message(instruction: &str, context: &str) -> String {
    if context.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\nContext:\n{context}")
    }
}

/// A piece of an example's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// Part of a response (counted in the loss).
    pub train: bool,
}

/// An example as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    /// Prompt and response pieces in order; concatenated they are the example's text.
    pub segments: Vec<Segment>,
    /// The tokenizer's EOS id goes after the text (the text does not end with an end-of-turn
    /// token of its own).
    pub append_eos: bool,
    /// The BOS ids the tokenizer adds to a single sequence go in front (plain and custom
    /// templates; chat templates write their own).
    pub prepend_bos: bool,
}

/// A compiled [`PromptTemplate`] with what it needs of the tokenizer.
pub struct Formatter {
    template: PromptTemplate,
    chat: Option<ChatTemplate>,
    plain: Option<Environment<'static>>,
    system_prompt: Option<String>,
    bos_text: String,
    eos_text: String,
    end_texts: Vec<String>,
}

impl std::fmt::Debug for Formatter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Formatter")
            .field("template", &self.template.name())
            .field("system_prompt", &self.system_prompt)
            .field("end_texts", &self.end_texts)
            .finish_non_exhaustive()
    }
}

const PLAIN_NAME: &str = "prompt";

impl Formatter {
    /// `chat_template`: the model's Jinja chat template source (needed for
    /// [`PromptTemplate::Chat`]). `end_texts`: the strings of every end-of-turn / EOS token.
    pub fn new(
        template: PromptTemplate,
        chat_template: Option<&str>,
        bos_text: &str,
        eos_text: &str,
        end_texts: Vec<String>,
    ) -> Result<Self> {
        let mut chat = None;
        let mut plain = None;
        match template.jinja_source() {
            None => {
                let src = chat_template.ok_or_else(|| {
                    anyhow!(
                        "the model has no chat template; use the plain-en, plain-ja or a custom \
                         prompt template"
                    )
                })?;
                chat = Some(ChatTemplate::new(src, bos_text, eos_text)?);
            }
            Some(src) => {
                let mut env = Environment::new();
                env.set_trim_blocks(true);
                env.set_lstrip_blocks(true);
                env.set_keep_trailing_newline(true);
                env.set_undefined_behavior(UndefinedBehavior::Strict);
                env.add_template_owned(PLAIN_NAME, src.to_string())
                    .map_err(|e| {
                        anyhow!(
                            "{} prompt template has a syntax error: {e}",
                            template.name()
                        )
                    })?;
                plain = Some(env);
            }
        }
        let mut end_texts: Vec<String> = end_texts.into_iter().filter(|t| !t.is_empty()).collect();
        if !eos_text.is_empty() && !end_texts.iter().any(|t| t == eos_text) {
            end_texts.push(eos_text.to_string());
        }
        Ok(Self {
            template,
            chat,
            plain,
            system_prompt: None,
            bos_text: bos_text.to_string(),
            eos_text: eos_text.to_string(),
            end_texts,
        })
    }

    /// A system message put before instruction examples under a chat template (chat
    /// examples keep their own).
    pub fn set_system_prompt(&mut self, system: Option<String>) {
        self.system_prompt = system;
    }

    pub fn template(&self) -> &PromptTemplate {
        &self.template
    }

    /// The messages of an example under a chat template.
    fn messages(&self, example: &Example) -> Vec<ChatMessage> {
        match example {
            Example::Instruction {
                instruction,
                context,
                response,
                ..
            } => {
                let mut m = Vec::with_capacity(3);
                if let Some(s) = &self.system_prompt {
                    m.push(ChatMessage::system(s.clone()));
                }
                m.push(ChatMessage::user(user_message(instruction, context)));
                m.push(ChatMessage::assistant(response.clone()));
                m
            }
            Example::Chat { messages, .. } => messages.clone(),
        }
    }

    /// `text` ends (after whitespace) with an end-of-turn token: the text up to it.
    fn cut_after_end(&self, text: &str) -> Option<usize> {
        let t = text.trim_end();
        self.end_texts
            .iter()
            .any(|e| t.ends_with(e.as_str()))
            .then_some(t.len())
    }

    /// The example as prompt and response segments.
    pub fn format(&self, example: &Example) -> Result<Formatted> {
        match &self.chat {
            Some(chat) => self.format_chat(chat, &self.messages(example)),
            None => {
                let (prompt, rest) = self.render_plain(example, true)?;
                let mut completion = rest;
                let append_eos = match self.cut_after_end(&completion) {
                    Some(n) => {
                        completion.truncate(n);
                        false
                    }
                    None => true,
                };
                Ok(Formatted {
                    segments: vec![
                        Segment {
                            text: prompt,
                            train: false,
                        },
                        Segment {
                            text: completion,
                            train: true,
                        },
                    ],
                    append_eos,
                    prepend_bos: true,
                })
            }
        }
    }

    /// The prompt to generate the example's (last) response from: what training puts before
    /// it, as text. Under a chat template, the conversation before the last assistant message
    /// rendered with `add_generation_prompt=true`; for plain and custom templates, the text
    /// before the response (the tokenizer's BOS, if it adds one, is not included).
    pub fn prompt(&self, example: &Example) -> Result<String> {
        match &self.chat {
            Some(chat) => {
                let mut m = self.messages(example);
                if m.last().is_some_and(|m| m.role == "assistant") {
                    m.pop();
                }
                chat.render(&m, true)
            }
            None => Ok(self.render_plain(example, false)?.0),
        }
    }

    fn format_chat(&self, chat: &ChatTemplate, messages: &[ChatMessage]) -> Result<Formatted> {
        let full = chat.render(messages, false)?;
        let mut segments = Vec::new();
        let mut pos = 0;
        let mut append_eos = false;
        let last_assistant = messages.iter().rposition(|m| m.role == "assistant");
        let Some(last_assistant) = last_assistant else {
            bail!("the conversation has no assistant message to train on");
        };
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = chat.render(&messages[..i], true)?;
            let upto = chat.render(&messages[..=i], false)?;
            if !upto.starts_with(&prompt) {
                bail!(
                    "the chat template's rendering of the conversation up to message {i} does not \
                     start with its rendering of the prompt (add_generation_prompt=true), so the \
                     response cannot be split from the prompt exactly.\n prompt: {prompt:?}\n \
                     full:   {upto:?}"
                );
            }
            if !full.starts_with(&prompt) || prompt.len() < pos {
                bail!(
                    "the chat template renders the turns before message {i} differently once later \
                     messages follow (it rewrites earlier turns), so the responses cannot be split \
                     from the prompts exactly"
                );
            }
            let mut span = &upto[prompt.len()..];
            let ends_turn = match self.cut_after_end(span) {
                Some(n) => {
                    span = &span[..n];
                    true
                }
                None => false,
            };
            if !full[prompt.len()..].starts_with(span) {
                bail!(
                    "the chat template renders assistant message {i} differently once later \
                     messages follow, so it cannot be split exactly"
                );
            }
            if span.trim().is_empty() {
                bail!("the chat template renders assistant message {i} as nothing");
            }
            segments.push(Segment {
                text: full[pos..prompt.len()].to_string(),
                train: false,
            });
            segments.push(Segment {
                text: span.to_string(),
                train: true,
            });
            pos = prompt.len() + span.len();
            if i == last_assistant {
                append_eos = !ends_turn;
            }
        }
        // What follows the last response (the newline after `<|im_end|>`, ...) is left out.
        segments.retain(|s| !s.text.is_empty());
        Ok(Formatted {
            segments,
            append_eos,
            prepend_bos: false,
        })
    }

    /// Renders a plain or custom template: (prompt, response + what follows it). Without
    /// `with_response` only the prompt is rendered (the second string is empty).
    fn render_plain(&self, example: &Example, with_response: bool) -> Result<(String, String)> {
        let env = self
            .plain
            .as_ref()
            .ok_or_else(|| anyhow!("internal: no plain template"))?;
        let (instruction, context, response, extra) = match example {
            Example::Instruction {
                instruction,
                context,
                response,
                extra,
            } => (
                instruction.as_str(),
                context.as_str(),
                response.as_str(),
                extra,
            ),
            Example::Chat { messages, extra } => match messages.as_slice() {
                [u, a] if u.role == "user" && a.role == "assistant" => {
                    (u.content.as_str(), "", a.content.as_str(), extra)
                }
                _ => bail!(
                    "the {} prompt template takes single-turn examples (one user message, then \
                     one assistant message, no system message); use the chat template for \
                     conversations",
                    self.template.name()
                ),
            },
        };
        let context = if context.trim().is_empty() {
            ""
        } else {
            context
        };
        let mut vars: Map<String, serde_json::Value> = extra.clone();
        for (k, v) in [
            ("instruction", instruction),
            ("context", context),
            ("input", context),
            ("response", RESPONSE_MARK),
            ("bos_token", self.bos_text.as_str()),
            ("eos_token", self.eos_text.as_str()),
        ] {
            vars.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
        let tmpl = env
            .get_template(PLAIN_NAME)
            .map_err(|e| anyhow!("{} prompt template: {e}", self.template.name()))?;
        let text = tmpl.render(Value::from_serialize(&vars)).map_err(|e| {
            anyhow!(
                "{} prompt template failed to render: {e} (variables: instruction, context, \
                 input, response, bos_token, eos_token and the example's extra fields)",
                self.template.name()
            )
        })?;
        let marks = text.matches(RESPONSE_MARK).count();
        let (prompt, after) = match marks {
            0 => (text, String::new()),
            1 => {
                let at = text.find(RESPONSE_MARK).unwrap_or(text.len());
                (
                    text[..at].to_string(),
                    text[at + RESPONSE_MARK.len()..].to_string(),
                )
            }
            n => bail!(
                "the {} prompt template uses {{{{ response }}}} {n} times; it may appear once",
                self.template.name()
            ),
        };
        if !with_response {
            return Ok((prompt, String::new()));
        }
        Ok((prompt, format!("{response}{after}")))
    }
}

//! Inference tab: three modes over the models the lab knows.
//!
//! - **chat**: a conversation with a base LM or a finished SFT run (its adapter applied);
//! - **search**: the chunks of a documents folder nearest to a query, by a sentence encoder
//!   (the base MiniLM or a finished STS run);
//! - **RAG**: retrieve chunks with the encoder last chosen in search mode, then answer the
//!   question from them with the chosen LM.
//!
//! This file is the tab's state and keys: keys become [`Action::Generate`] jobs for the
//! inference thread (`infer_worker`), whose reports come back through `reports`. `targets`
//! lists the models, `settings` the editable sampling and retrieval settings, `view` draws.
mod reports;
mod settings;
mod targets;
mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub use reports::format_hits;
pub use settings::SAMPLING_FIELDS;
pub use targets::Targets;
pub use view::draw;

use super::action::{Action, Effect};
use super::infer_worker::{InferJob, InferRequest, InferTarget};
use super::widgets::step;
use super::widgets::text_field::{Finished, TextField, EDITING_HINTS};
use crate::config::TaskKind;
use crate::infer::chat_template::ChatMessage;
use crate::infer::sampling::SamplingParams;
use crate::runs::registry::RunRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// Retrieved chunks: search results, or the context of a RAG answer.
    Context,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferMode {
    Chat,
    Search,
    Rag,
}

impl InferMode {
    pub const ALL: [InferMode; 3] = [InferMode::Chat, InferMode::Search, InferMode::Rag];

    pub fn label(&self) -> &'static str {
        match self {
            InferMode::Chat => "chat",
            InferMode::Search => "search",
            InferMode::Rag => "RAG",
        }
    }

    fn next(self) -> Self {
        let i = InferMode::ALL.iter().position(|m| *m == self).unwrap_or(0);
        InferMode::ALL[(i + 1) % InferMode::ALL.len()]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InferFocus {
    /// Choosing the model.
    Targets,
    /// Typing the prompt.
    Prompt,
    Sampling(usize),
    EditingSampling {
        field: usize,
        value: TextField,
    },
}

#[derive(Debug, Clone)]
pub struct Streaming {
    pub job: u64,
    /// The history the answer goes to.
    pub history: String,
    pub mode: InferMode,
    pub tokens: usize,
    pub started: Instant,
    pub first_token: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct InferState {
    pub mode: InferMode,
    /// Selected language model (chat and RAG).
    pub selected: usize,
    /// Selected encoder (search; RAG retrieves with it).
    pub selected_encoder: usize,
    pub focus: InferFocus,
    /// The prompt being typed.
    pub input: TextField,
    /// Turns per mode and target, kept for this session.
    pub histories: HashMap<String, Vec<Turn>>,
    pub streaming: Option<Streaming>,
    /// tokens/s of the last finished answer.
    pub last_tps: Option<f64>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub system: String,
    /// Folder of .txt/.md documents searched in search and RAG modes.
    pub docs: String,
    /// Chunks shown (search) or put into the prompt (RAG).
    pub top_k: usize,
    pub status: String,
    next_job: u64,
}

impl Default for InferState {
    fn default() -> Self {
        let sampling = SamplingParams {
            temperature: 0.7,
            ..Default::default()
        };
        Self {
            mode: InferMode::Chat,
            selected: 0,
            selected_encoder: 0,
            focus: InferFocus::Targets,
            input: TextField::default(),
            histories: HashMap::new(),
            streaming: None,
            last_tps: None,
            sampling,
            max_new_tokens: 128,
            system: String::new(),
            // data/docs in a checkout (as always), else its built-in copy.
            docs: crate::builtin::repo_or_builtin("data/docs")
                .display()
                .to_string(),
            top_k: 3,
            status: String::new(),
            next_job: 1,
        }
    }
}

impl InferState {
    /// What the model list shows in the current mode.
    pub fn mode_targets(&self, t: &Targets) -> Vec<InferTarget> {
        match self.mode {
            InferMode::Search => t.encoders(),
            InferMode::Chat | InferMode::Rag => t.language_models(),
        }
    }

    /// The selected entry of the model list.
    pub fn mode_selected(&self) -> usize {
        match self.mode {
            InferMode::Search => self.selected_encoder,
            InferMode::Chat | InferMode::Rag => self.selected,
        }
    }

    fn set_mode_selected(&mut self, i: usize) {
        match self.mode {
            InferMode::Search => self.selected_encoder = i,
            InferMode::Chat | InferMode::Rag => self.selected = i,
        }
    }

    /// The encoder RAG retrieves with (the one selected in search mode).
    pub fn rag_encoder(&self, t: &Targets) -> Option<InferTarget> {
        let enc = t.encoders();
        let i = self.selected_encoder.min(enc.len().saturating_sub(1));
        enc.get(i).cloned()
    }

    /// The key of the history shown for `target` in the current mode.
    pub fn history_key(&self, target: &InferTarget) -> String {
        match self.mode {
            InferMode::Chat => target.key.clone(),
            InferMode::Search => format!("search:{}", target.key),
            InferMode::Rag => format!("rag:{}", target.key),
        }
    }

    /// Selects run `r` (search mode for an STS run, chat otherwise). False when the run has
    /// no result to load.
    pub fn open_run(&mut self, r: &RunRecord, t: &Targets) -> bool {
        let key = format!("run:{}", r.id);
        self.mode = if targets::run_task(r) == TaskKind::Sts {
            InferMode::Search
        } else {
            InferMode::Chat
        };
        match self.mode_targets(t).iter().position(|x| x.key == key) {
            Some(i) => {
                self.set_mode_selected(i);
                true
            }
            None => false,
        }
    }

    /// The mouse wheel moves the language-model selection (in every mode).
    pub fn scroll(&mut self, d: isize, t: &Targets) {
        self.selected = step(self.selected, d, t.language_models().len());
    }

    /// Whether keys go into a text field (the prompt or a setting).
    pub fn typing(&self) -> bool {
        matches!(
            self.focus,
            InferFocus::Prompt | InferFocus::EditingSampling { .. }
        )
    }

    /// The keys the footer offers in the current focus.
    pub fn key_hints(&self) -> Vec<(&'static str, &'static str)> {
        match self.focus {
            InferFocus::Targets => vec![
                ("↑↓", "model"),
                ("enter", "type"),
                ("m", "chat/search/RAG"),
                ("s", "settings"),
                ("x", "clear"),
            ],
            InferFocus::Prompt => vec![
                ("enter", "send"),
                ("←→", "move"),
                ("esc", "leave/cancel"),
                ("ctrl-u", "clear"),
            ],
            InferFocus::Sampling(_) => vec![("↑↓", "field"), ("enter", "change"), ("esc", "back")],
            InferFocus::EditingSampling { .. } => EDITING_HINTS.to_vec(),
        }
    }

    /// Keys of the tab, over the models `t` lists.
    pub fn on_key(&mut self, key: KeyEvent, t: &Targets) -> Vec<Effect> {
        let targets = self.mode_targets(t);
        match &mut self.focus {
            InferFocus::Targets => return self.key_targets(key, &targets),
            // Only the prompt clears with ctrl-u; in the settings it types a `u`.
            InferFocus::Prompt if is_ctrl_u(&key) => self.input.clear(),
            InferFocus::Prompt => match self.input.on_key(&key) {
                Some(Finished::Cancelled) => {
                    if self.streaming.is_some() {
                        return vec![Effect::Send(Action::CancelGenerate)];
                    }
                    self.focus = InferFocus::Targets;
                }
                Some(Finished::Entered(text)) => return self.send_prompt(text, &targets, t),
                None => {}
            },
            InferFocus::Sampling(f) => {
                let f = *f;
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.focus = InferFocus::Sampling(step(f, -1, SAMPLING_FIELDS.len()))
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.focus = InferFocus::Sampling(step(f, 1, SAMPLING_FIELDS.len()))
                    }
                    KeyCode::Enter | KeyCode::Char('e') => {
                        self.focus = InferFocus::EditingSampling {
                            field: f,
                            value: TextField::new(self.sampling_value(f)),
                        }
                    }
                    KeyCode::Esc | KeyCode::Char('s') => self.focus = InferFocus::Targets,
                    _ => {}
                }
            }
            InferFocus::EditingSampling { field, value } => {
                let field = *field;
                if let Some(done) = value.on_key(&key) {
                    self.focus = InferFocus::Sampling(field);
                    if let Finished::Entered(v) = done {
                        let name = SAMPLING_FIELDS[field];
                        self.status = match self.set_sampling(field, &v) {
                            Ok(()) => format!("{name} = {v}"),
                            Err(e) => format!("{name}: {e}"),
                        };
                    }
                }
            }
        }
        Vec::new()
    }

    fn key_targets(&mut self, key: KeyEvent, targets: &[InferTarget]) -> Vec<Effect> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.set_mode_selected(step(self.mode_selected(), -1, targets.len()))
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.set_mode_selected(step(self.mode_selected(), 1, targets.len()))
            }
            KeyCode::Enter | KeyCode::Char('i') | KeyCode::Char('/') => {
                self.focus = InferFocus::Prompt
            }
            KeyCode::Char('m') if self.streaming.is_none() => {
                self.mode = self.mode.next();
                self.status = format!("{} mode", self.mode.label());
            }
            KeyCode::Char('s') => self.focus = InferFocus::Sampling(0),
            KeyCode::Char('x') => {
                if let Some(t) = targets.get(self.mode_selected()) {
                    let k = self.history_key(t);
                    self.histories.remove(&k);
                    self.status = "conversation cleared".into();
                }
            }
            KeyCode::Esc | KeyCode::Char('c') if self.streaming.is_some() => {
                return vec![Effect::Send(Action::CancelGenerate)]
            }
            _ => {}
        }
        Vec::new()
    }

    /// Sends the prompt to the selected model as a job of the current mode.
    fn send_prompt(&mut self, text: String, targets: &[InferTarget], t: &Targets) -> Vec<Effect> {
        if self.streaming.is_some() {
            self.status = "wait for the answer (Esc cancels it)".into();
            return Vec::new();
        }
        if text.is_empty() {
            return Vec::new();
        }
        let Some(target) = targets.get(self.mode_selected()).cloned() else {
            return Vec::new();
        };
        let mode = self.mode;
        let key = self.history_key(&target);
        let system = Some(self.system.trim().to_string()).filter(|s| !s.is_empty());
        let docs = PathBuf::from(&self.docs);
        let k = self.top_k;
        let request = match mode {
            InferMode::Search => InferRequest::Search {
                query: text.clone(),
                docs,
                k,
            },
            InferMode::Rag => {
                let Some(encoder) = self.rag_encoder(t) else {
                    self.status = "no encoder to retrieve with".into();
                    return Vec::new();
                };
                InferRequest::Rag {
                    question: text.clone(),
                    encoder: encoder.model,
                    docs,
                    k,
                    system,
                }
            }
            InferMode::Chat => {
                let earlier = self.histories.get(&key).map_or(&[][..], |h| h);
                let mut messages: Vec<ChatMessage> =
                    system.iter().map(ChatMessage::system).collect();
                messages.extend(earlier.iter().filter_map(|t| match t.role {
                    Role::User => Some(ChatMessage::user(&t.text)),
                    Role::Assistant => Some(ChatMessage::assistant(&t.text)),
                    Role::Context => None,
                }));
                messages.push(ChatMessage::user(&text));
                InferRequest::Chat { messages }
            }
        };
        self.input.clear();
        let history = self.histories.entry(key.clone()).or_default();
        history.push(Turn {
            role: Role::User,
            text,
        });
        if mode == InferMode::Chat {
            history.push(Turn {
                role: Role::Assistant,
                text: String::new(),
            });
        }
        let job = self.next_job;
        self.next_job += 1;
        self.streaming = Some(Streaming {
            job,
            history: key,
            mode,
            tokens: 0,
            started: Instant::now(),
            first_token: None,
        });
        self.status = match mode {
            InferMode::Search => format!("searching with {}…", target.label),
            _ => format!("asking {}…", target.label),
        };
        vec![Effect::Send(Action::Generate(Box::new(InferJob {
            id: job,
            target,
            request,
            sampling: self.sampling.clone(),
            max_new_tokens: self.max_new_tokens,
        })))]
    }
}

fn is_ctrl_u(key: &KeyEvent) -> bool {
    key.code == KeyCode::Char('u') && key.modifiers.contains(KeyModifiers::CONTROL)
}

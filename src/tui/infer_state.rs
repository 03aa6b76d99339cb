//! The Inference tab's state and keys: three modes over the models the lab knows.
//!
//! - **chat**: a conversation with a base LM or a finished SFT run (its adapter applied);
//! - **search**: the chunks of a documents folder nearest to a query, by a sentence encoder
//!   (the base MiniLM or a finished STS run);
//! - **RAG**: retrieve chunks with the encoder last chosen in search mode, then answer the
//!   question from them with the chosen LM.
//!
//! Keys become [`Action::Generate`] jobs for the inference thread (`infer_worker`), whose
//! reports come back through [`App::on_infer`].
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{short_spec, step, Action, App};
use super::infer_worker::{InferEvent, InferJob, InferRequest, InferTarget};
use crate::config::TaskKind;
use crate::infer::chat_template::ChatMessage;
use crate::infer::sampling::SamplingParams;
use crate::infer::search::Hit;
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

/// The settings editable in the Inference tab (sampling, then retrieval).
pub const SAMPLING_FIELDS: [&str; 9] = [
    "temperature",
    "top-p",
    "top-k",
    "repeat penalty",
    "max new tokens",
    "seed",
    "system prompt",
    "documents",
    "chunks (k)",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InferFocus {
    /// Choosing the model.
    Targets,
    /// Typing the prompt.
    Prompt,
    Sampling(usize),
    EditingSampling {
        field: usize,
        buffer: String,
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
    pub input: String,
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
    pub(super) next_job: u64,
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
            input: String::new(),
            histories: HashMap::new(),
            streaming: None,
            last_tps: None,
            sampling,
            max_new_tokens: 128,
            system: String::new(),
            docs: "data/docs".into(),
            top_k: 3,
            status: String::new(),
            next_job: 1,
        }
    }
}

/// The run's task (SFT when its config is unreadable, as for any config without `task`).
fn run_task(r: &RunRecord) -> TaskKind {
    r.config.as_ref().map(|c| c.task).unwrap_or_default()
}

fn run_target(r: &RunRecord, model: String, adapter: Option<PathBuf>) -> InferTarget {
    InferTarget {
        key: format!("run:{}", r.id),
        label: format!("run {}", r.id),
        model,
        adapter,
    }
}

fn base_target(spec: String) -> InferTarget {
    InferTarget {
        key: format!("base:{spec}"),
        label: format!("base {}", short_spec(&spec)),
        model: spec,
        adapter: None,
    }
}

impl App {
    pub fn on_infer(&mut self, ev: InferEvent) {
        let Some(cur) = self.infer.streaming.clone() else {
            return;
        };
        match ev {
            InferEvent::Status { job, text } if job == cur.job => self.infer.status = text,
            InferEvent::Hits {
                job,
                hits,
                searched,
            } if job == cur.job => {
                let text = format_hits(&hits, cur.mode == InferMode::Search);
                let h = self.infer.histories.entry(cur.history).or_default();
                h.push(Turn {
                    role: Role::Context,
                    text,
                });
                if cur.mode == InferMode::Rag {
                    h.push(Turn {
                        role: Role::Assistant,
                        text: String::new(),
                    });
                }
                self.infer.status = format!("{} of {searched} chunks retrieved", hits.len());
            }
            InferEvent::Token { job, text } if job == cur.job => {
                if let Some(s) = self.infer.streaming.as_mut() {
                    s.tokens += 1;
                    s.first_token.get_or_insert_with(Instant::now);
                }
                if let Some(last) = self
                    .infer
                    .histories
                    .get_mut(&cur.history)
                    .and_then(|h| h.last_mut())
                    .filter(|t| t.role == Role::Assistant)
                {
                    last.text.push_str(&text);
                }
            }
            InferEvent::Done {
                job,
                generated,
                tokens_per_sec,
                stopped,
                cancelled,
            } if job == cur.job => {
                self.infer.streaming = None;
                if cur.mode == InferMode::Search {
                    self.infer.status =
                        format!("searched in {:.2} s", cur.started.elapsed().as_secs_f64());
                    return;
                }
                self.infer.last_tps = Some(tokens_per_sec);
                self.infer.status = format!(
                    "{generated} tokens · {tokens_per_sec:.1} tokens/s{}",
                    if cancelled {
                        " · cancelled"
                    } else if stopped {
                        " · end of turn"
                    } else {
                        " · token limit"
                    }
                );
            }
            InferEvent::Failed { job, error } if job == cur.job => {
                self.infer.streaming = None;
                self.infer.status = format!("error: {error}");
            }
            _ => {}
        }
    }

    /// Live tokens/s of the answer being streamed.
    pub fn streaming_tps(&self) -> Option<f64> {
        let s = self.infer.streaming.as_ref()?;
        let t0 = s.first_token?;
        let secs = t0.elapsed().as_secs_f64();
        (secs > 0.0 && s.tokens > 1).then(|| (s.tokens - 1) as f64 / secs)
    }

    /// The language models the Inference tab offers: each base LM of the presets, then each
    /// finished SFT run with a result (adapter or weights), newest first.
    pub fn infer_targets(&self) -> Vec<InferTarget> {
        self.targets_of(TaskKind::Sft, "smollm2", |r| {
            run_target(r, r.model(), Some(r.dir.clone()))
        })
    }

    /// The sentence encoders: each base encoder of the STS presets (MiniLM at least), then
    /// each finished STS run with a result (its best checkpoint), newest first.
    pub fn encoder_targets(&self) -> Vec<InferTarget> {
        self.targets_of(TaskKind::Sts, "minilm", |r| {
            run_target(r, r.dir.display().to_string(), None)
        })
    }

    /// `default_spec` and the other base models of `task`'s presets, then each finished run
    /// of `task` with a result (as `run` makes its target), newest first.
    fn targets_of(
        &self,
        task: TaskKind,
        default_spec: &str,
        run: impl Fn(&RunRecord) -> InferTarget,
    ) -> Vec<InferTarget> {
        let mut specs: Vec<String> = vec![default_spec.into()];
        for e in &self.presets.entries {
            if let Ok(c) = &e.base {
                if c.task == task && !specs.contains(&c.model.spec) {
                    specs.push(c.model.spec.clone());
                }
            }
        }
        let mut out: Vec<InferTarget> = specs.into_iter().map(base_target).collect();
        for r in self.runs.iter().rev() {
            if r.status.is_finished_ok() && r.has_result() && run_task(r) == task {
                out.push(run(r));
            }
        }
        out
    }

    /// What the model list shows in the current mode.
    pub fn mode_targets(&self) -> Vec<InferTarget> {
        match self.infer.mode {
            InferMode::Search => self.encoder_targets(),
            InferMode::Chat | InferMode::Rag => self.infer_targets(),
        }
    }

    /// The selected entry of the model list.
    pub fn mode_selected(&self) -> usize {
        match self.infer.mode {
            InferMode::Search => self.infer.selected_encoder,
            InferMode::Chat | InferMode::Rag => self.infer.selected,
        }
    }

    fn set_mode_selected(&mut self, i: usize) {
        match self.infer.mode {
            InferMode::Search => self.infer.selected_encoder = i,
            InferMode::Chat | InferMode::Rag => self.infer.selected = i,
        }
    }

    /// The encoder RAG retrieves with (the one selected in search mode).
    pub fn rag_encoder(&self) -> Option<InferTarget> {
        let enc = self.encoder_targets();
        let i = self.infer.selected_encoder.min(enc.len().saturating_sub(1));
        enc.get(i).cloned()
    }

    /// The key of the history shown for `target` in the current mode.
    pub fn history_key(&self, target: &InferTarget) -> String {
        match self.infer.mode {
            InferMode::Chat => target.key.clone(),
            InferMode::Search => format!("search:{}", target.key),
            InferMode::Rag => format!("rag:{}", target.key),
        }
    }

    /// Opens the Inference tab on run `r` (search mode for an STS run, chat otherwise).
    /// False when the run has no result to load.
    pub fn open_in_inference(&mut self, r: &RunRecord) -> bool {
        let key = format!("run:{}", r.id);
        self.infer.mode = if run_task(r) == TaskKind::Sts {
            InferMode::Search
        } else {
            InferMode::Chat
        };
        match self.mode_targets().iter().position(|t| t.key == key) {
            Some(i) => {
                self.set_mode_selected(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn key_infer(&mut self, key: KeyEvent) -> Vec<Action> {
        let targets = self.mode_targets();
        match self.infer.focus.clone() {
            InferFocus::Targets => match key.code {
                KeyCode::Up | KeyCode::Char('k') => {
                    self.set_mode_selected(step(self.mode_selected(), -1, targets.len()))
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.set_mode_selected(step(self.mode_selected(), 1, targets.len()))
                }
                KeyCode::Enter | KeyCode::Char('i') | KeyCode::Char('/') => {
                    self.infer.focus = InferFocus::Prompt
                }
                KeyCode::Char('m') if self.infer.streaming.is_none() => {
                    self.infer.mode = self.infer.mode.next();
                    self.infer.status = format!("{} mode", self.infer.mode.label());
                }
                KeyCode::Char('s') => self.infer.focus = InferFocus::Sampling(0),
                KeyCode::Char('x') => {
                    if let Some(t) = targets.get(self.mode_selected()) {
                        let k = self.history_key(t);
                        self.infer.histories.remove(&k);
                        self.infer.status = "conversation cleared".into();
                    }
                }
                KeyCode::Esc | KeyCode::Char('c') if self.infer.streaming.is_some() => {
                    return vec![Action::CancelGenerate]
                }
                _ => {}
            },
            InferFocus::Prompt => match key.code {
                KeyCode::Esc => {
                    if self.infer.streaming.is_some() {
                        return vec![Action::CancelGenerate];
                    }
                    self.infer.focus = InferFocus::Targets;
                }
                KeyCode::Enter => return self.send_prompt(&targets),
                KeyCode::Backspace => {
                    self.infer.input.pop();
                }
                KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.infer.input.clear()
                }
                KeyCode::Char(c) if !c.is_control() => self.infer.input.push(c),
                _ => {}
            },
            InferFocus::Sampling(f) => match key.code {
                KeyCode::Up | KeyCode::Char('k') => {
                    self.infer.focus = InferFocus::Sampling(step(f, -1, SAMPLING_FIELDS.len()))
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.infer.focus = InferFocus::Sampling(step(f, 1, SAMPLING_FIELDS.len()))
                }
                KeyCode::Enter | KeyCode::Char('e') => {
                    self.infer.focus = InferFocus::EditingSampling {
                        field: f,
                        buffer: self.sampling_value(f),
                    }
                }
                KeyCode::Esc | KeyCode::Char('s') => self.infer.focus = InferFocus::Targets,
                _ => {}
            },
            InferFocus::EditingSampling { field, mut buffer } => match key.code {
                KeyCode::Esc => self.infer.focus = InferFocus::Sampling(field),
                KeyCode::Enter => {
                    match self.set_sampling(field, buffer.trim()) {
                        Ok(()) => {
                            self.infer.status =
                                format!("{} = {}", SAMPLING_FIELDS[field], buffer.trim())
                        }
                        Err(e) => self.infer.status = format!("{}: {e}", SAMPLING_FIELDS[field]),
                    }
                    self.infer.focus = InferFocus::Sampling(field);
                }
                KeyCode::Backspace => {
                    buffer.pop();
                    self.infer.focus = InferFocus::EditingSampling { field, buffer };
                }
                KeyCode::Char(c) if !c.is_control() => {
                    buffer.push(c);
                    self.infer.focus = InferFocus::EditingSampling { field, buffer };
                }
                _ => {}
            },
        }
        Vec::new()
    }

    pub fn sampling_value(&self, field: usize) -> String {
        let s = &self.infer.sampling;
        match field {
            0 => format!("{}", s.temperature),
            1 => format!("{}", s.top_p),
            2 => s.top_k.to_string(),
            3 => format!("{}", s.repeat_penalty),
            4 => self.infer.max_new_tokens.to_string(),
            5 => s.seed.to_string(),
            6 => self.infer.system.clone(),
            7 => self.infer.docs.clone(),
            _ => self.infer.top_k.to_string(),
        }
    }

    fn set_sampling(&mut self, field: usize, v: &str) -> Result<(), String> {
        let mut s = self.infer.sampling.clone();
        let bad = |e: &dyn std::fmt::Display| format!("`{v}`: {e}");
        let positive = |v: &str| -> Result<usize, String> {
            match v.parse::<usize>() {
                Ok(0) => Err("must be at least 1".into()),
                Ok(n) => Ok(n),
                Err(e) => Err(bad(&e)),
            }
        };
        match field {
            0 => s.temperature = v.parse().map_err(|e| bad(&e))?,
            1 => s.top_p = v.parse().map_err(|e| bad(&e))?,
            2 => s.top_k = v.parse().map_err(|e| bad(&e))?,
            3 => s.repeat_penalty = v.parse().map_err(|e| bad(&e))?,
            4 => self.infer.max_new_tokens = positive(v)?,
            5 => s.seed = v.parse().map_err(|e| bad(&e))?,
            6 => self.infer.system = v.to_string(),
            7 => {
                if !std::path::Path::new(v).is_dir() {
                    return Err(format!("`{v}` is not a folder"));
                }
                self.infer.docs = v.to_string();
            }
            _ => self.infer.top_k = positive(v)?,
        }
        s.validate().map_err(|e| e.to_string())?;
        self.infer.sampling = s;
        Ok(())
    }

    fn send_prompt(&mut self, targets: &[InferTarget]) -> Vec<Action> {
        if self.infer.streaming.is_some() {
            self.infer.status = "wait for the answer (Esc cancels it)".into();
            return Vec::new();
        }
        let text = self.infer.input.trim().to_string();
        if text.is_empty() {
            return Vec::new();
        }
        let Some(target) = targets.get(self.mode_selected()).cloned() else {
            return Vec::new();
        };
        let mode = self.infer.mode;
        let key = self.history_key(&target);
        let system = Some(self.infer.system.trim().to_string()).filter(|s| !s.is_empty());
        let docs = PathBuf::from(&self.infer.docs);
        let k = self.infer.top_k;
        let request = match mode {
            InferMode::Search => InferRequest::Search {
                query: text.clone(),
                docs,
                k,
            },
            InferMode::Rag => {
                let Some(encoder) = self.rag_encoder() else {
                    self.infer.status = "no encoder to retrieve with".into();
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
                let earlier = self.infer.histories.get(&key).map_or(&[][..], |h| h);
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
        self.infer.input.clear();
        let history = self.infer.histories.entry(key.clone()).or_default();
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
        let job = self.infer.next_job;
        self.infer.next_job += 1;
        self.infer.streaming = Some(Streaming {
            job,
            history: key,
            mode,
            tokens: 0,
            started: Instant::now(),
            first_token: None,
        });
        self.infer.status = match mode {
            InferMode::Search => format!("searching with {}…", target.label),
            _ => format!("asking {}…", target.label),
        };
        vec![Action::Generate(Box::new(InferJob {
            id: job,
            target,
            request,
            sampling: self.infer.sampling.clone(),
            max_new_tokens: self.infer.max_new_tokens,
        }))]
    }
}

/// Retrieved chunks as the conversation shows them: rank, source and score, then the text
/// (whole for search results, the first line for a RAG answer's context).
pub fn format_hits(hits: &[Hit], full_text: bool) -> String {
    if hits.is_empty() {
        return "no chunks found".into();
    }
    hits.iter()
        .map(|h| {
            let text = if full_text {
                h.text.clone()
            } else {
                let first = h.text.lines().next().unwrap_or("");
                let short: String = first.chars().take(100).collect();
                if short.len() < h.text.len() {
                    format!("{short}…")
                } else {
                    short
                }
            };
            format!("[{}] {} · {:.3}\n{text}", h.rank, h.source, h.score)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

//! The Inference tab's model runs on its own thread: loading a model and generating are
//! heavy and blocking, and the UI thread only draws. Jobs go in over a channel; tokens come
//! back as [`InferEvent`]s as they are generated. The loaded model is kept between questions
//! and reloaded only when the target (base model or run) changes.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use anyhow::{anyhow, Result};

use crate::infer::chat_template::{ChatMessage, ChatTemplate};
use crate::infer::generate::{generate, GenerateRequest, TextStream};
use crate::infer::sampling::SamplingParams;
use crate::infer::LanguageModel;
use crate::model::LoadOptions;

/// A model to talk to: a base model, or a run's result applied to its base.
#[derive(Debug, Clone, PartialEq)]
pub struct InferTarget {
    /// Stable key for the conversation history.
    pub key: String,
    pub label: String,
    pub model: String,
    /// A run directory (its adapter/ or model/) to apply.
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferJob {
    pub id: u64,
    pub target: InferTarget,
    pub messages: Vec<ChatMessage>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InferEvent {
    Status {
        job: u64,
        text: String,
    },
    Token {
        job: u64,
        text: String,
    },
    Done {
        job: u64,
        generated: usize,
        tokens_per_sec: f64,
        stopped: bool,
        cancelled: bool,
    },
    Failed {
        job: u64,
        error: String,
    },
}

/// Runs jobs until the job channel closes. `cancel` aborts the answer being generated.
pub fn serve(jobs: Receiver<InferJob>, cancel: Arc<AtomicBool>, out: impl Fn(InferEvent)) {
    let mut loaded: Option<(String, Option<PathBuf>, LanguageModel)> = None;
    while let Ok(job) = jobs.recv() {
        cancel.store(false, Ordering::SeqCst);
        let id = job.id;
        match answer(&job, &mut loaded, &cancel, &out) {
            Ok(()) => {}
            Err(e) => out(InferEvent::Failed {
                job: id,
                error: format!("{e:#}"),
            }),
        }
    }
}

fn answer(
    job: &InferJob,
    loaded: &mut Option<(String, Option<PathBuf>, LanguageModel)>,
    cancel: &AtomicBool,
    out: &impl Fn(InferEvent),
) -> Result<()> {
    let t = &job.target;
    let fresh = !matches!(loaded, Some((m, a, _)) if *m == t.model && *a == t.adapter);
    if fresh {
        *loaded = None;
        out(InferEvent::Status {
            job: job.id,
            text: format!("loading {}…", t.model),
        });
        let mut lm = LanguageModel::load_spec(&t.model, &LoadOptions::default())?;
        if let Some(a) = &t.adapter {
            let what = lm.apply_run(a)?;
            out(InferEvent::Status {
                job: job.id,
                text: format!("applied {what}"),
            });
        }
        *loaded = Some((t.model.clone(), t.adapter.clone(), lm));
    }
    let lm = &loaded.as_ref().ok_or_else(|| anyhow!("no model"))?.2;
    let prompt = match lm.render_chat(&job.messages, true) {
        Ok(p) => p,
        // A base model without a chat template: ftlab's plain `Role: text` fallback.
        Err(_) => ChatTemplate::fallback("", "")?.render(&job.messages, true)?,
    };
    let req = GenerateRequest {
        prompt_ids: lm.encode(&prompt)?,
        max_new_tokens: job.max_new_tokens,
        sampling: job.sampling.clone(),
        stop_ids: lm.special.eos_tokens.clone(),
    };
    out(InferEvent::Status {
        job: job.id,
        text: format!("{} prompt tokens, generating…", req.prompt_ids.len()),
    });
    let mut stream = TextStream::new(&lm.tokenizer);
    let mut cancelled = false;
    let result = generate(&lm.model, &req, |tok| {
        if cancel.load(Ordering::SeqCst) {
            cancelled = true;
            anyhow::bail!("cancelled");
        }
        if let Some(piece) = stream.push(tok)? {
            out(InferEvent::Token {
                job: job.id,
                text: piece,
            });
        }
        Ok(())
    });
    match result {
        Ok((ids, stats)) => out(InferEvent::Done {
            job: job.id,
            generated: ids.len(),
            tokens_per_sec: stats.tokens_per_sec(),
            stopped: stats.stopped,
            cancelled: false,
        }),
        Err(_) if cancelled => out(InferEvent::Done {
            job: job.id,
            generated: stream.ids().len(),
            tokens_per_sec: 0.0,
            stopped: false,
            cancelled: true,
        }),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Starts the inference thread; returns the job sender.
pub fn spawn(
    cancel: Arc<AtomicBool>,
    out: impl Fn(InferEvent) + Send + 'static,
) -> Sender<InferJob> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ftlab-infer".into())
        .spawn(move || serve(rx, cancel, out))
        .expect("spawning the inference thread");
    tx
}

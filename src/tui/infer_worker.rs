//! The Inference tab's model runs on its own thread: loading a model and generating are
//! heavy and blocking, and the UI thread only draws. Jobs go in over a channel; tokens come
//! back as [`InferEvent`]s as they are generated. The loaded model is kept between questions
//! and reloaded only when the target (base model or run) changes; so are the encoder and the
//! embedded chunks of the documents folder that search and RAG jobs retrieve from.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use anyhow::{anyhow, Result};

use crate::config::DeviceChoice;
use crate::infer::chat_template::{ChatMessage, ChatTemplate};
use crate::infer::generate::{GenerateStats, Interrupted};
use crate::infer::rag::{self, RagOptions, RagPrompt, Retriever};
use crate::infer::sampling::SamplingParams;
use crate::infer::search::{load_encoder, Hit};
use crate::infer::split::SplitConfig;
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

/// What a job asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum InferRequest {
    /// Continue a conversation with the target LM.
    Chat { messages: Vec<ChatMessage> },
    /// The `k` chunks of the documents in `docs` nearest to `query`, by the target encoder
    /// (the target's `model` is the encoder spec: `minilm` or an STS run directory).
    Search {
        query: String,
        docs: PathBuf,
        k: usize,
    },
    /// Retrieve `k` chunks of `docs` with `encoder`, then answer `question` from them with
    /// the target LM.
    Rag {
        question: String,
        encoder: String,
        docs: PathBuf,
        k: usize,
        system: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferJob {
    pub id: u64,
    pub target: InferTarget,
    pub request: InferRequest,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InferEvent {
    Status {
        job: u64,
        text: String,
    },
    /// Retrieved chunks (search results, or a RAG answer's context), best first.
    Hits {
        job: u64,
        hits: Vec<Hit>,
        /// Chunks searched.
        searched: usize,
    },
    Token {
        job: u64,
        text: String,
    },
    Done {
        job: u64,
        /// Tokens generated (for a cancelled answer, those produced before the cancel).
        generated: usize,
        /// Their decode speed; None when there is none to give (no token generated, or a
        /// search, which generates nothing).
        tokens_per_sec: Option<f64>,
        stopped: bool,
        cancelled: bool,
    },
    Failed {
        job: u64,
        error: String,
    },
}

/// What the thread keeps loaded between jobs.
#[derive(Default)]
struct Loaded {
    /// (model spec, adapter, model)
    lm: Option<(String, Option<PathBuf>, LanguageModel)>,
    /// (encoder spec, documents folder, chunks embedded by that encoder)
    retriever: Option<(String, PathBuf, Retriever)>,
    /// Where models load (`ftlab --device`; `auto`: the GPU of a CUDA build, else the
    /// CPU), resolved on first use.
    choice: DeviceChoice,
    device: Option<candle_core::Device>,
}

impl Loaded {
    fn load_options(&mut self) -> Result<LoadOptions> {
        let device = match &self.device {
            Some(d) => d.clone(),
            None => {
                let d = self.choice.resolve()?;
                self.device = Some(d.clone());
                d
            }
        };
        Ok(LoadOptions {
            device,
            // A GGUF's own quantisation, as `ftlab generate` (inference only).
            keep_quantized: true,
            ..LoadOptions::default()
        })
    }

    fn lm(
        &mut self,
        job: u64,
        t: &InferTarget,
        out: &impl Fn(InferEvent),
    ) -> Result<&LanguageModel> {
        let fresh = !matches!(&self.lm, Some((m, a, _)) if *m == t.model && *a == t.adapter);
        if fresh {
            self.lm = None;
            let opts = self.load_options()?;
            out(InferEvent::Status {
                job,
                text: format!(
                    "loading {} on {}…",
                    t.model,
                    crate::config::device_name(&opts.device)
                ),
            });
            let mut lm = LanguageModel::load_spec(&t.model, &opts)?;
            if let Some(a) = &t.adapter {
                let what = lm.apply_run(a)?;
                out(InferEvent::Status {
                    job,
                    text: format!("applied {what}"),
                });
            }
            self.lm = Some((t.model.clone(), t.adapter.clone(), lm));
        }
        Ok(&self.lm.as_ref().ok_or_else(|| anyhow!("no model"))?.2)
    }

    fn retriever(
        &mut self,
        job: u64,
        encoder: &str,
        docs: &Path,
        out: &impl Fn(InferEvent),
    ) -> Result<&Retriever> {
        let fresh = !matches!(&self.retriever, Some((e, d, _)) if e == encoder && d == docs);
        if fresh {
            self.retriever = None;
            out(InferEvent::Status {
                job,
                text: format!("loading encoder {encoder}…"),
            });
            let opts = self.load_options()?;
            let (enc, desc) = load_encoder(encoder, &opts)?;
            out(InferEvent::Status {
                job,
                text: format!("embedding the documents of {} with {desc}…", docs.display()),
            });
            let r = Retriever::from_dir(enc, docs, &SplitConfig::default())?;
            self.retriever = Some((encoder.to_string(), docs.to_path_buf(), r));
        }
        Ok(&self
            .retriever
            .as_ref()
            .ok_or_else(|| anyhow!("no encoder"))?
            .2)
    }
}

/// Runs jobs until the job channel closes, with the models on `device` (resolved when the
/// first one loads). `cancel` aborts the answer being generated.
pub fn serve(
    device: DeviceChoice,
    jobs: Receiver<InferJob>,
    cancel: Arc<AtomicBool>,
    out: impl Fn(InferEvent) + Sync,
) {
    let mut loaded = Loaded {
        choice: device,
        ..Loaded::default()
    };
    while let Ok(job) = jobs.recv() {
        cancel.store(false, Ordering::SeqCst);
        let id = job.id;
        // Each job computes on a thread of the CPU pool, where the matmul's threads are
        // (`model::pool`); between jobs the pool's threads are free.
        let result = crate::model::pool::run(|| run_job(&job, &mut loaded, &cancel, &out));
        if let Err(e) = result {
            out(InferEvent::Failed {
                job: id,
                error: format!("{e:#}"),
            })
        }
    }
}

fn run_job(
    job: &InferJob,
    loaded: &mut Loaded,
    cancel: &AtomicBool,
    out: &impl Fn(InferEvent),
) -> Result<()> {
    match &job.request {
        InferRequest::Chat { messages } => chat(job, messages, loaded, cancel, out),
        InferRequest::Search { query, docs, k } => {
            let r = loaded.retriever(job.id, &job.target.model, docs, out)?;
            let hits = r.retrieve(query, *k)?;
            out(InferEvent::Hits {
                job: job.id,
                hits,
                searched: r.chunks.len(),
            });
            out(InferEvent::Done {
                job: job.id,
                generated: 0,
                tokens_per_sec: None,
                stopped: true,
                cancelled: false,
            });
            Ok(())
        }
        InferRequest::Rag {
            question,
            encoder,
            docs,
            k,
            system,
        } => {
            let opts = RagOptions {
                top_k: *k,
                system: system.clone(),
                max_new_tokens: job.max_new_tokens,
                sampling: job.sampling.clone(),
                ..RagOptions::default()
            };
            opts.validate()?;
            let r = loaded.retriever(job.id, encoder, docs, out)?;
            let hits = r.retrieve(question, *k)?;
            let searched = r.chunks.len();
            out(InferEvent::Hits {
                job: job.id,
                hits: hits.clone(),
                searched,
            });
            let lm = loaded.lm(job.id, &job.target, out)?;
            let prompt = RagPrompt::build(lm, &opts, question, &hits)?;
            out(InferEvent::Status {
                job: job.id,
                text: format!("{} prompt tokens, generating…", prompt.ids.len()),
            });
            let result = rag::generate_answer(
                lm,
                &opts,
                question,
                hits,
                prompt,
                &mut emit_pieces(job.id, cancel, out),
            );
            finish(
                job.id,
                result.map(|a| {
                    let rate = (a.generated_tokens > 0).then_some(a.tokens_per_sec);
                    (a.generated_tokens, rate, a.stopped)
                }),
                cancel,
                out,
            )
        }
    }
}

/// Reports the end of a generation: done, cancelled (the error came from the cancel flag:
/// the tokens produced until then and their real speed, from the error's [`Interrupted`]
/// context), or failed. `result` is (tokens generated, their speed, stopped at end of turn).
fn finish(
    job: u64,
    result: Result<(usize, Option<f64>, bool)>,
    cancel: &AtomicBool,
    out: &impl Fn(InferEvent),
) -> Result<()> {
    match result {
        Ok((generated, tokens_per_sec, stopped)) => out(InferEvent::Done {
            job,
            generated,
            tokens_per_sec,
            stopped,
            cancelled: false,
        }),
        Err(e) if cancel.load(Ordering::SeqCst) => {
            let done = e.downcast_ref::<Interrupted>().map(|i| &i.0);
            out(InferEvent::Done {
                job,
                generated: done.map_or(0, |s| s.generated_tokens),
                tokens_per_sec: done.and_then(GenerateStats::rate),
                stopped: false,
                cancelled: true,
            })
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn chat(
    job: &InferJob,
    messages: &[ChatMessage],
    loaded: &mut Loaded,
    cancel: &AtomicBool,
    out: &impl Fn(InferEvent),
) -> Result<()> {
    let lm = loaded.lm(job.id, &job.target, out)?;
    let prompt = match lm.render_chat(messages, true) {
        Ok(p) => p,
        // A base model without a chat template: ftlab's plain `Role: text` fallback.
        Err(_) => ChatTemplate::fallback("", "")?.render(messages, true)?,
    };
    let prompt_ids = lm.encode_prompt(&prompt)?;
    out(InferEvent::Status {
        job: job.id,
        text: format!("{} prompt tokens, generating…", prompt_ids.len()),
    });
    let result = lm.stream(
        prompt_ids,
        job.max_new_tokens,
        &job.sampling,
        &mut emit_pieces(job.id, cancel, out),
    );
    finish(
        job.id,
        result.map(|(ids, stats)| (ids.len(), stats.rate(), stats.stopped)),
        cancel,
        out,
    )
}

/// The callback of a streamed answer: stops when `cancel` is set, else sends each piece of
/// text as a [`InferEvent::Token`].
fn emit_pieces<'a>(
    job: u64,
    cancel: &'a AtomicBool,
    out: &'a impl Fn(InferEvent),
) -> impl FnMut(&str) -> Result<()> + 'a {
    move |piece| {
        if cancel.load(Ordering::SeqCst) {
            anyhow::bail!("cancelled");
        }
        out(InferEvent::Token {
            job,
            text: piece.to_string(),
        });
        Ok(())
    }
}

/// Starts the inference thread with the models on `device`; returns the job sender.
pub fn spawn(
    device: DeviceChoice,
    cancel: Arc<AtomicBool>,
    out: impl Fn(InferEvent) + Send + Sync + 'static,
) -> Sender<InferJob> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ftlab-infer".into())
        .spawn(move || serve(device, rx, cancel, out))
        .expect("spawning the inference thread");
    tx
}

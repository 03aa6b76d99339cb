//! `ftlab rag`: answer a question from a folder of documents. The answer goes to stdout
//! (streamed), the retrieved chunks to stderr; `--json` prints both as one object.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::generate::SamplingArgs;
use super::input::read_utf8_file;
use crate::infer::rag::{Rag, RagOptions, Retriever, DEFAULT_TEMPLATE};
use crate::infer::rag_eval::{evaluate, load_questions, RagCounts};
use crate::infer::sampling::SamplingParams;
use crate::infer::search::{load_encoder, Hit};
use crate::infer::split::SplitConfig;
use crate::infer::LanguageModel;

#[derive(clap::Args, Debug)]
pub struct RagArgs {
    /// Folder of .txt / .md documents.
    #[arg(long)]
    pub docs: PathBuf,
    /// The question.
    #[arg(
        long,
        required_unless_present = "questions",
        conflicts_with = "questions"
    )]
    pub question: Option<String>,
    /// Evaluate instead: a JSON-lines file of `question`, `answer` (null: the documents do
    /// not answer it) and optional `source`, `lang`, e.g. data/docs/questions.jsonl.
    /// Answers greedily (sampling flags are ignored) and reports how often the source
    /// document is retrieved and the answer contains the expected one (or, for null, says
    /// the context does not say).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// With --questions: evaluate at most N questions (0 = all).
    #[arg(long, default_value_t = 0, requires = "questions")]
    pub limit: usize,
    /// Language model: a default name (smollm2), a .gguf file, an HF directory or hf:org/name.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// A training result to apply to the LM: a run directory or a PEFT adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Sentence encoder for retrieval: minilm, an HF directory, or an STS run directory.
    #[arg(long, default_value = "minilm")]
    pub embed_model: String,
    /// Chunk size in characters.
    #[arg(long, default_value_t = SplitConfig::default().chunk_size)]
    pub chunk_size: usize,
    /// Characters shared by consecutive chunks (at most).
    #[arg(long, default_value_t = SplitConfig::default().chunk_overlap)]
    pub chunk_overlap: usize,
    /// Chunks put into the prompt.
    #[arg(short, long, default_value_t = 3)]
    pub k: usize,
    /// Prompt template file with {context} and {question} (default: a short instruction).
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Do not wrap the prompt in the model's chat template.
    #[arg(long)]
    pub no_chat: bool,
    /// System message (chat template only).
    #[arg(long)]
    pub system: Option<String>,
    /// Default: 256 for one question, 48 with --questions.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Print {"question", "answer", "chunks", ...} as one JSON object instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

fn print_chunks(hits: &[Hit]) {
    let mut err = std::io::stderr().lock();
    for h in hits {
        let _ = writeln!(err, "[{}] {} (score {:.4})", h.rank, h.source, h.score);
        for line in h.text.lines() {
            let _ = writeln!(err, "    {line}");
        }
    }
    let _ = writeln!(err);
}

pub fn run(args: RagArgs) -> Result<()> {
    let question = match (&args.question, &args.questions) {
        (_, Some(file)) => return run_eval(&args, file),
        (Some(q), None) if !q.trim().is_empty() => q.clone(),
        _ => bail!("the question is empty: usage: ftlab rag --docs DIR --question \"...\""),
    };
    let rag = load(
        &args,
        args.sampling.params(),
        args.max_new_tokens.unwrap_or(256),
    )?;
    let hits = rag.retrieve(&question)?;
    if args.json {
        let answer = rag.generate(&question, hits, &mut |_| Ok(()))?;
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    print_chunks(&hits);
    let mut out = std::io::stdout().lock();
    let answer = rag.generate(&question, hits, &mut |piece| {
        out.write_all(piece.as_bytes())?;
        out.flush()?;
        Ok(())
    })?;
    writeln!(out)?;
    eprintln!(
        "[ftlab] {} prompt tokens, {} new tokens, {:.1} tokens/s",
        answer.prompt_tokens, answer.generated_tokens, answer.tokens_per_sec
    );
    Ok(())
}

/// The retriever over `--docs` and the LM (with `--adapter`), as the arguments say.
fn load(args: &RagArgs, sampling: SamplingParams, max_new_tokens: usize) -> Result<Rag> {
    let split = SplitConfig {
        chunk_size: args.chunk_size,
        chunk_overlap: args.chunk_overlap,
    };
    split.validate()?;
    let template = match &args.template {
        Some(p) => read_utf8_file(p)?,
        None => DEFAULT_TEMPLATE.to_string(),
    };
    let opts = RagOptions {
        top_k: args.k,
        template,
        chat: !args.no_chat,
        system: args.system.clone(),
        max_new_tokens,
        sampling,
    };
    let load = args.device.load_options()?;
    let (encoder, desc) = load_encoder(&args.embed_model, &load)?;
    let retriever = Retriever::from_dir(encoder, &args.docs, &split)?;
    eprintln!(
        "[ftlab] {} chunks from {}; encoder: {desc}",
        retriever.chunks.len(),
        args.docs.display()
    );
    let mut lm = LanguageModel::load_spec(&args.model, &load)?;
    if let Some(a) = &args.adapter {
        eprintln!("[ftlab] applied {}", lm.apply_run(a)?);
    }
    Rag::new(retriever, lm, opts)
}

/// `--questions FILE`: retrieval hit rate and contained-answer accuracy, greedy.
fn run_eval(args: &RagArgs, file: &Path) -> Result<()> {
    let mut questions = load_questions(file)?;
    if args.limit > 0 {
        questions.truncate(args.limit);
    }
    let rag = load(
        args,
        SamplingParams::greedy(),
        args.max_new_tokens.unwrap_or(48),
    )?;
    let res = evaluate(&rag, &questions, |i, n, s| {
        let source = match s.source_found {
            Some(true) => "source retrieved",
            Some(false) => "source MISSED",
            None => "no source given",
        };
        eprintln!(
            "[{i}/{n}] {} ({source}) expected {}, got {:?}",
            if s.correct { "ok  " } else { "MISS" },
            s.expected
                .as_deref()
                .map_or("\"the context does not say\"".into(), |e| format!("{e:?}")),
            s.answer
        );
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
        return Ok(());
    }
    let line = |name: &str, c: &RagCounts| {
        let retrieval = if c.with_source == 0 {
            "no source documents named".to_string()
        } else {
            format!(
                "source in the top {}: {}/{} = {:.3}",
                args.k,
                c.source_found,
                c.with_source,
                c.hit_rate()
            )
        };
        println!(
            "{name:<12} answer contains the expected one: {}/{} = {:.3}; {retrieval}",
            c.correct,
            c.questions,
            c.accuracy()
        )
    };
    line("all", &res.total);
    for (group, c) in res.by_lang.iter().chain(&res.by_kind) {
        line(group, c);
    }
    Ok(())
}

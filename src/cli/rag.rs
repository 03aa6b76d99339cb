//! `ftlab rag`: answer a question from a folder of documents. The answer goes to stdout
//! (streamed), the retrieved chunks to stderr; `--json` prints both as one object.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::generate::SamplingArgs;
use super::input::read_utf8_file;
use crate::infer::rag::{Rag, RagOptions, Retriever, DEFAULT_TEMPLATE};
use crate::infer::search::{load_encoder, Hit};
use crate::infer::split::SplitConfig;
use crate::infer::LanguageModel;
use crate::model::LoadOptions;

#[derive(clap::Args, Debug)]
pub struct RagArgs {
    /// Folder of .txt / .md documents.
    #[arg(long)]
    pub docs: PathBuf,
    /// The question.
    #[arg(long)]
    pub question: String,
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
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Print {"question", "answer", "chunks", ...} as one JSON object instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
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
    if args.question.trim().is_empty() {
        bail!("the question is empty: usage: ftlab rag --docs DIR --question \"...\"");
    }
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
        max_new_tokens: args.max_new_tokens,
        sampling: args.sampling.params(),
    };
    let (encoder, desc) = load_encoder(&args.embed_model)?;
    let retriever = Retriever::from_dir(encoder, &args.docs, &split)?;
    eprintln!(
        "[ftlab] {} chunks from {}; encoder: {desc}",
        retriever.chunks.len(),
        args.docs.display()
    );
    let mut lm = LanguageModel::load_spec(&args.model, &LoadOptions::default())?;
    if let Some(a) = &args.adapter {
        eprintln!("[ftlab] applied {}", lm.apply_run(a)?);
    }
    let rag = Rag::new(retriever, lm, opts)?;
    let hits = rag.retrieve(&args.question)?;
    if args.json {
        let answer = rag.generate(&args.question, hits, &mut |_| Ok(()))?;
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    print_chunks(&hits);
    let mut out = std::io::stdout().lock();
    let answer = rag.generate(&args.question, hits, &mut |piece| {
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

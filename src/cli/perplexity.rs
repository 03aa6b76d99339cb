//! `ftlab perplexity`: mean next-token NLL of a text file, as one JSON line.
use std::path::PathBuf;

use anyhow::Result;

use super::input::read_utf8_file;
use crate::infer::perplexity::perplexity;
use crate::infer::LanguageModel;

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// Model: a default name (smollm2), a .gguf file, an HF directory or hf:org/name.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// A training result to apply: a run directory, its adapter/ or a PEFT adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// UTF-8 text file to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per window (capped by the model's context length).
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Window advance; tokens in the overlap serve as context only.
    #[arg(long, default_value_t = 256)]
    pub stride: usize,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    let text = read_utf8_file(&args.file)?;
    let mut lm = LanguageModel::load_spec(&args.model, &args.device.load_options()?)?;
    if let Some(a) = &args.adapter {
        eprintln!("[ftlab] applied {}", lm.apply_run(a)?);
    }
    let ids = lm.encode_prompt(&text)?;
    let p = perplexity(&lm.model, &ids, args.window, args.stride, lm.model.device())?;
    println!("{}", serde_json::to_string(&p)?);
    Ok(())
}

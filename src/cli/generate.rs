//! `ftlab generate`: stream a completion or a chat answer from a causal LM.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::input::read_utf8_file;
use crate::infer::chat_template::ChatMessage;
use crate::infer::sampling::SamplingParams;
use crate::infer::LanguageModel;

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling probability mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Repetition penalty (1 = off; HF semantics).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty considers (0 = all).
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model: a default name (smollm2), a .gguf file, an HF directory or hf:org/name.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// A training result to apply: a run directory, its adapter/ or a PEFT adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a UTF-8 file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's own chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => read_utf8_file(f)?,
        (None, None) => bail!("give a prompt with --prompt TEXT or --prompt-file FILE"),
    };
    args.sampling.params().validate()?;
    let opts = args.device.load_options()?;
    let mut lm = LanguageModel::load_spec(&args.model, &opts)?;
    if let Some(a) = &args.adapter {
        eprintln!("[ftlab] applied {}", lm.apply_run(a)?);
    }
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", &prompt));
        lm.render_chat(&messages, true)?
    } else {
        prompt
    };
    let mut out = std::io::stdout().lock();
    let (_, stats) = lm.stream(
        lm.encode_prompt(&text)?,
        args.max_new_tokens,
        &args.sampling.params(),
        &mut |piece| {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
            Ok(())
        },
    )?;
    writeln!(out)?;
    eprintln!(
        "[ftlab] {} prompt tokens, {} new tokens in {:.2} s: {:.1} tokens/s (prompt processed in {:.2} s) on {}{}",
        stats.prompt_tokens,
        stats.generated_tokens,
        stats.decode_secs,
        stats.tokens_per_sec(),
        stats.prefill_secs,
        crate::config::device_name(&opts.device),
        if stats.stopped { ", stopped at end of turn" } else { "" }
    );
    Ok(())
}

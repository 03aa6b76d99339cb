//! `ftlab eval`: held-out contained-answer accuracy of a model (optionally with a run's adapter).
use std::path::PathBuf;

use anyhow::Result;

use crate::infer::LanguageModel;
use crate::train::data::{keep_languages, load_jsonl, DataFormat};
use crate::train::evaluate::answer_accuracy;
use crate::train::sft_task::prompt_template;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// A training result to apply (run directory or adapter directory).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Held-out data (default: data/sft/heldout.jsonl, else its built-in copy).
    #[arg(long, default_value_os_t = crate::builtin::repo_or_builtin("data/sft/heldout.jsonl"))]
    pub data: PathBuf,
    /// Prompt template: chat, plain-ja, plain-en or a Jinja file (as in the preset).
    #[arg(long, default_value = "chat")]
    pub template: String,
    /// Only these categories (comma-separated), e.g. closed_qa,unanswerable.
    #[arg(long, value_delimiter = ',')]
    pub categories: Vec<String>,
    /// Only examples whose `lang` is one of these (comma-separated), e.g. ja.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Evaluate at most N examples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Print the result (with every sample) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let mut lm = LanguageModel::load_spec(&args.model, &args.device.load_options()?)?;
    if let Some(a) = &args.adapter {
        eprintln!("applied {}", lm.apply_run(a)?);
    }
    let mut records = keep_languages(
        load_jsonl(&args.data, DataFormat::Auto)?,
        &args.languages,
        &args.data,
    )?;
    if args.limit > 0 {
        records.truncate(args.limit);
    }
    let template = prompt_template(&args.template, std::path::Path::new("."))?;
    let res = answer_accuracy(
        &lm,
        &records,
        template,
        &args.categories,
        args.max_new_tokens,
        |i, n, s| {
            eprintln!(
                "[{i}/{n}] {} {}: expected {:?}, got {:?}",
                if s.correct { "ok " } else { "MISS" },
                s.origin,
                s.expected,
                s.output
            );
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        println!(
            "contained-answer accuracy: {}/{} = {:.3}",
            res.correct, res.examples, res.accuracy
        );
        for (c, (ok, n)) in &res.by_category {
            println!("  {c:<16} {ok}/{n}");
        }
    }
    Ok(())
}

//! `ftlab merge`: fold a run's LoRA adapter into its base model and write an HF directory.
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::adapt::peft::merge_adapters;
use crate::config::RunConfig;
use crate::infer::LanguageModel;
use crate::model::export::{model_tensors, write_hf_dir};
use crate::model::LoadOptions;
use crate::runs::layout::RunDir;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// A run directory (or a PEFT adapter directory, with --model).
    pub run: PathBuf,
    /// Output directory for the merged model (config.json, model.safetensors, tokenizer).
    #[arg(long)]
    pub out: PathBuf,
    /// Base model (default: the run's model.spec).
    #[arg(long)]
    pub model: Option<String>,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let spec = match &args.model {
        Some(m) => m.clone(),
        None => {
            RunConfig::load(&RunDir::new(&args.run).config(), &[])?
                .model
                .spec
        }
    };
    if args.out.join("config.json").exists() {
        bail!(
            "{}: already holds a model; choose another --out",
            args.out.display()
        );
    }
    let mut lm = LanguageModel::load_spec(&spec, &LoadOptions::default())?;
    eprintln!("applied {}", lm.apply_run(&args.run)?);
    let merged = merge_adapters(&mut lm.model)?;
    let tensors = model_tensors(&lm.model)?;
    write_hf_dir(&args.out, lm.model.config(), &tensors, lm.text_side())?;
    println!("merged {merged} adapted layers into {}", args.out.display());
    Ok(())
}

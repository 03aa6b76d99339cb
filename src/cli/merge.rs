//! `ftlab merge`: fold a run's LoRA adapter into its base model and write an HF directory.
use std::path::{Component, Path, PathBuf};

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
    if is_inside(&args.out, &args.run) {
        bail!(
            "--out {}: is inside {}; write the merged model elsewhere (a run or adapter directory holds only what training wrote)",
            args.out.display(),
            args.run.display()
        );
    }
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

/// Whether `path` (which need not exist yet) is `dir` or below it: `.` and `..` dropped,
/// then the longest existing ancestor resolved (symlinks).
fn is_inside(path: &Path, dir: &Path) -> bool {
    let (Ok(dir), Ok(abs)) = (dir.canonicalize(), std::path::absolute(path)) else {
        return false;
    };
    let mut norm = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                norm.pop();
            }
            Component::CurDir => {}
            c => norm.push(c),
        }
    }
    let mut rest = Vec::new();
    let mut existing = norm.as_path();
    let resolved = loop {
        if let Ok(p) = existing.canonicalize() {
            break p;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return false,
        }
    };
    rest.iter()
        .rev()
        .fold(resolved, |p, n| p.join(n))
        .starts_with(&dir)
}

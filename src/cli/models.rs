//! `ftlab models fetch|list`.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::infer::LanguageModel;
use crate::model::LoadOptions;

use crate::hub;

#[derive(clap::Subcommand, Debug)]
pub enum ModelsCmd {
    /// Download default models (all if none named)
    Fetch {
        /// Model names or aliases (see `ftlab models list`)
        names: Vec<String>,
    },
    /// Show cached models
    List,
    /// Write a model of random weights: the shape of a real one where its weights cannot
    /// go (memory and speed checks on a GPU machine without network)
    Random {
        /// The HF model folder to write (config.json, tokenizer, model.safetensors)
        out: PathBuf,
        /// Copy the architecture and tokenizer of this model (a default name, a .gguf, an
        /// HF folder). Without it, OUT must already hold config.json and the tokenizer
        /// files (written by `--like … --no-weights`): only the weights are written.
        #[arg(long)]
        like: Option<String>,
        /// With --like: write config.json and the tokenizer only.
        #[arg(long, requires = "like")]
        no_weights: bool,
    },
}

pub fn run(cmd: ModelsCmd) -> Result<()> {
    match cmd {
        ModelsCmd::Fetch { names } => fetch(names),
        ModelsCmd::List => list(),
        ModelsCmd::Random {
            out,
            like,
            no_weights,
        } => random(&out, like.as_deref(), no_weights),
    }
}

fn random(out: &Path, like: Option<&str>, no_weights: bool) -> Result<()> {
    use crate::model::export::write_config_and_tokenizer;
    let arch = match like {
        Some(spec) => {
            let lm = LanguageModel::load_spec(spec, &LoadOptions::default())?;
            let arch = lm.model.config().clone();
            write_config_and_tokenizer(out, &arch, lm.text_side())?;
            arch
        }
        None => crate::model::causal::read_hf_causal_config(out).with_context(|| {
            format!(
                "{}: no model config to fill with random weights (write one with --like MODEL --no-weights)",
                out.display()
            )
        })?,
    };
    if !no_weights {
        // A tenth of the test models' scale: logits of a sane size at real widths
        // (SmolLM2's shape: a perplexity near the vocabulary size, as an untrained model).
        let weights = crate::model::tiny::random_weights(&arch, 0.1)?;
        crate::weights_file::save(&weights, &out.join("model.safetensors"))?;
    }
    println!("{}", out.display());
    Ok(())
}

fn fetch(names: Vec<String>) -> Result<()> {
    let names = if names.is_empty() {
        hub::default_models().into_iter().map(|m| m.name).collect()
    } else {
        names
    };
    // Check every name before downloading anything.
    let models = names
        .iter()
        .map(|n| hub::find_default(n))
        .collect::<Result<Vec<_>>>()?;
    for m in models {
        let dir = hub::fetch_default(&m.name, true)?;
        let resolved = hub::model_in(&m, &dir)?;
        let path = match resolved.source {
            hub::ModelSource::Gguf { path } => path,
            hub::ModelSource::HfDir { dir } => dir,
        };
        println!("{}\t{}", m.name, path.display());
    }
    Ok(())
}

fn list() -> Result<()> {
    let cache = hub::cache_dir()?;
    let models = hub::list_cached_in(&cache)?;
    if models.is_empty() {
        println!(
            "no models cached in {} (run `ftlab models fetch`)",
            cache.display()
        );
        return Ok(());
    }
    let rows: Vec<[String; 4]> = models
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.source.clone(),
                human_size(m.size_bytes),
                m.path.display().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "SOURCE", "SIZE", "PATH"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    Ok(())
}

/// Bytes as `93.2 MB` (decimal units).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

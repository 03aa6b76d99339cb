//! `ftlab sts-eval`: Pearson and Spearman correlation of an encoder's cosine similarities
//! with the gold scores of sentence pairs (base model or fine-tuned run).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::infer::search::load_encoder;
use crate::train::data::sts::{load_pairs, LabelScale, StsFormat};
use crate::train::sts_task::{evaluate_model, StsData};

#[derive(clap::Args, Debug)]
pub struct StsEvalArgs {
    /// Encoder: minilm, an HF directory, hf:org/name, or an STS run directory (its best
    /// checkpoint) / checkpoint / adapter directory.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Pairs: JSONL, CSV or TSV with sentence1, sentence2 and label (0–5); default
    /// data/sts/heldout.jsonl, else its built-in copy.
    #[arg(long, default_value_os_t = crate::builtin::repo_or_builtin("data/sts/heldout.jsonl"))]
    pub data: PathBuf,
    /// auto (by extension), jsonl, csv or tsv.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Cosine targets for the reported MSE: signed ([−1, 1]) or unit ([0, 1]).
    #[arg(long, default_value = "signed")]
    pub label_scale: String,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

pub fn run(args: StsEvalArgs) -> Result<()> {
    let format: StsFormat = args.format.parse()?;
    let pairs = load_pairs(&args.data, format)?;
    let (encoder, desc) = load_encoder(&args.model, &args.device.load_options()?)?;
    let scale = match args.label_scale.as_str() {
        "signed" => LabelScale::Signed,
        "unit" => LabelScale::Unit,
        other => bail!("--label-scale `{other}`: expected signed or unit"),
    };
    let mut data = StsData::new(
        pairs,
        encoder.tokenizer(),
        encoder.max_len(),
        encoder.device(),
    )?;
    data.scale = scale;
    let t = Instant::now();
    let ev = evaluate_model(encoder.model(), &data, args.batch)?;
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "model": args.model,
            "loaded": desc,
            "data": args.data.display().to_string(),
            "pairs": data.len(),
            "mse": ev.loss,
            "metrics": ev.metrics,
            "secs": secs,
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    eprintln!("[ftlab] {desc}; {} pairs in {secs:.1} s", data.len());
    let mut line = format!("mse {:.4}", ev.loss);
    for (k, v) in &ev.metrics {
        line.push_str(&format!("  {k} {v:.4}"));
    }
    println!("{line}");
    Ok(())
}

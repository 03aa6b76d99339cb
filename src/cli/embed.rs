//! `ftlab embed`: sentence embeddings and their cosine similarities.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::hub::{self, ModelSource};
use crate::infer::embed::{cosine_matrix, Embedder};

/// Sentences embedded per forward pass.
const BATCH: usize = 32;

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Embedding model: a default model name, an HF directory, or hf:org/name
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// sentences (or --file with one sentence per line)
    pub sentences: Vec<String>,
    /// Read sentences from a file, one per line (blank lines are skipped)
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Print the embeddings and the similarity matrix as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let mut sentences = args.sentences.clone();
    if let Some(path) = &args.file {
        sentences.extend(read_sentences(path)?);
    }
    if sentences.is_empty() {
        bail!(
            "no sentences given: usage: ftlab embed [--model NAME|DIR] \"first sentence\" \"second sentence\" ... (or --file FILE with one sentence per line)"
        );
    }
    let opts = args.device.load_options()?;
    let resolved = hub::resolve(&args.model)?;
    let dir = match &resolved.source {
        ModelSource::HfDir { dir } => dir.clone(),
        ModelSource::Gguf { path } => bail!(
            "{}: embedding models must be HF directories (config.json, model.safetensors, tokenizer.json), not GGUF files",
            path.display()
        ),
    };
    let embedder = Embedder::from_dir(&dir, &opts)?;
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let mut chunks = Vec::new();
    for chunk in refs.chunks(BATCH) {
        chunks.push(embedder.embed(chunk)?);
    }
    let emb = Tensor::cat(&chunks, 0)?;
    let cos = cosine_matrix(&emb)?;
    if args.json {
        let out = serde_json::json!({
            "model": resolved.name,
            "sentences": sentences,
            "dim": embedder.hidden_size(),
            "embeddings": emb.to_vec2::<f32>()?,
            "cosine": cos,
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    match sentences.len() {
        1 => {
            let v = emb.get(0)?.to_vec1::<f32>()?;
            let text: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
            println!("{}", text.join(" "));
        }
        2 => println!("{:.4}", cos[0][1]),
        _ => print!("{}", format_matrix(&sentences, &cos)),
    }
    Ok(())
}

/// Numbered sentence list, then the similarity matrix with numbered rows and columns.
pub fn format_matrix(sentences: &[String], cos: &[Vec<f32>]) -> String {
    let n = sentences.len();
    let label_w = n.to_string().len();
    let mut out = String::new();
    for (i, s) in sentences.iter().enumerate() {
        out.push_str(&format!("[{:>label_w$}] {s}\n", i + 1));
    }
    out.push('\n');
    let col_w = 7usize.max(label_w);
    out.push_str(&" ".repeat(label_w + 2));
    for j in 0..n {
        out.push_str(&format!(" {:>col_w$}", j + 1));
    }
    out.push('\n');
    for (i, row) in cos.iter().enumerate() {
        out.push_str(&format!("[{:>label_w$}]", i + 1));
        for v in row {
            out.push_str(&format!(" {v:>col_w$.4}"));
        }
        out.push('\n');
    }
    out
}

/// One sentence per line; blank lines are skipped, `\r\n` is accepted. Invalid UTF-8 is
/// an error naming the file and the line.
pub fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not valid UTF-8 (invalid byte at column {})",
                path.display(),
                i + 1,
                e.valid_up_to() + 1
            )
        })?;
        let text = text.trim();
        if !text.is_empty() {
            out.push(text.to_string());
        }
    }
    Ok(out)
}

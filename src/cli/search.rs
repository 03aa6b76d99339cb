//! `ftlab search`: query an index built with `ftlab index build`.
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::infer::search::{Hit, Searcher};

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// Index directory (from `ftlab index build`).
    #[arg(long)]
    pub index: PathBuf,
    /// The query text.
    pub query: String,
    /// Number of neighbours.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// HNSW candidate list size for this query (default: the index's).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Print the hits as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

/// One line per hit: rank, score, source and the text on one line (shortened).
pub fn format_hits(hits: &[Hit], width: usize) -> String {
    let mut out = String::new();
    for h in hits {
        let flat: String = h.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = if flat.chars().count() > width {
            flat.chars().take(width).collect::<String>() + "…"
        } else {
            flat
        };
        out.push_str(&format!(
            "{:>2}  {:.4}  {}  {}\n",
            h.rank, h.score, h.source, short
        ));
    }
    out
}

pub fn run(args: SearchArgs) -> Result<()> {
    if args.query.trim().is_empty() {
        bail!("the query is empty: usage: ftlab search --index INDEX \"query\" -k 5");
    }
    let mut searcher = Searcher::open(&args.index, &args.device.load_options()?)?;
    if let Some(ef) = args.ef {
        searcher.index.vectors.set_ef_search(ef);
    }
    let hits = searcher.search(&args.query, args.k)?;
    if args.json {
        let out = serde_json::json!({
            "query": args.query,
            "index": args.index.display().to_string(),
            "model": searcher.index.meta.model,
            "hits": hits,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print!("{}", format_hits(&hits, 160));
    }
    Ok(())
}

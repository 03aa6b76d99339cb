//! `ftlab index build|bench`: an HNSW index of sentence embeddings, and its throughput.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use crate::infer::search::{bench, load_encoder, read_corpus, HnswParams, SearchIndex};
use crate::infer::split::SplitConfig;

#[derive(clap::Subcommand, Debug)]
pub enum IndexCmd {
    /// Embed a corpus and save an approximate nearest-neighbour index (HNSW, cosine).
    Build(BuildArgs),
    /// Build and query throughput and recall@k of the HNSW index on synthetic vectors.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct HnswArgs {
    /// Links per node and layer (HNSW M).
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// Candidate list size while building.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Candidate list size while searching (stored in the index; `ftlab search --ef`
    /// overrides it).
    #[arg(long, default_value_t = 64)]
    pub ef_search: usize,
}

impl HnswArgs {
    pub fn params(&self) -> HnswParams {
        HnswParams {
            m: self.m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Encoder: minilm, an HF directory, hf:org/name, or an STS run directory (its best
    /// checkpoint) / adapter directory.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Corpus: a text file (one document per line), a .jsonl file (`text`, optional
    /// `source`), or a folder of .txt/.md files (split into chunks).
    #[arg(long)]
    pub input: PathBuf,
    /// Index directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub hnsw: HnswArgs,
    /// Sentences embedded per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Chunk size in characters (folder input).
    #[arg(long, default_value_t = SplitConfig::default().chunk_size)]
    pub chunk_size: usize,
    /// Chunk overlap in characters (folder input).
    #[arg(long, default_value_t = SplitConfig::default().chunk_overlap)]
    pub chunk_overlap: usize,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Vectors in the index.
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Dimension (all-MiniLM-L6-v2: 384).
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Dimension of the data's latent (clustered) structure; = --dim for i.i.d. random
    /// vectors, the hardest case.
    #[arg(long, default_value_t = 32)]
    pub latent: usize,
    /// Queries timed (and used for recall).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    #[command(flatten)]
    pub hnsw: HnswArgs,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: IndexCmd) -> Result<()> {
    match cmd {
        IndexCmd::Build(a) => build(a),
        IndexCmd::Bench(a) => run_bench(a),
    }
}

fn build(args: BuildArgs) -> Result<()> {
    let params = args.hnsw.params();
    params.validate()?;
    let split = SplitConfig {
        chunk_size: args.chunk_size,
        chunk_overlap: args.chunk_overlap,
    };
    let docs = read_corpus(&args.input, &split)?;
    let t = Instant::now();
    let (encoder, desc) = load_encoder(&args.model, &args.device.load_options()?)?;
    eprintln!(
        "[ftlab] {} documents from {}; encoder: {desc} (loaded in {:.1} s)",
        docs.len(),
        args.input.display(),
        t.elapsed().as_secs_f64()
    );
    let n = docs.len();
    let mut last = Instant::now();
    let mut progress = |done: usize, total: usize| {
        if last.elapsed().as_secs_f64() >= 2.0 || done == total {
            eprintln!("[ftlab] embedded {done}/{total}");
            last = Instant::now();
        }
    };
    let (mut index, stats) = SearchIndex::build(
        &encoder,
        &args.model,
        &desc,
        docs,
        params,
        args.batch,
        &mut progress,
    )?;
    index.save(&args.out)?;
    println!(
        "indexed {n} documents ({}-dimensional) into {}: embedding {:.2} s ({:.1} docs/s), HNSW build {:.2} s ({:.0} vectors/s)",
        index.meta.vectors.dim,
        args.out.display(),
        stats.embed_secs,
        n as f64 / stats.embed_secs.max(1e-9),
        stats.index_secs,
        n as f64 / stats.index_secs.max(1e-9),
    );
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<()> {
    let params = args.hnsw.params();
    params.validate()?;
    eprintln!(
        "[ftlab] {} synthetic {}-dimensional vectors ({}-dimensional latent structure, {} clusters), {} queries, k = {}, M = {}, ef_construction = {}, ef_search = {}",
        args.n,
        args.dim,
        args.latent,
        (args.n / 100).max(1),
        args.queries,
        args.k,
        params.m,
        params.ef_construction,
        params.ef_search
    );
    let r = bench(
        args.n,
        args.dim,
        args.latent,
        args.queries,
        args.k,
        params,
        args.seed,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "build: {:.2} s, {:.0} vectors/s ({} threads)",
        r.build_secs, r.build_vectors_per_sec, r.threads
    );
    println!(
        "query: {:.0} queries/s HNSW, {:.0} queries/s exact (one thread, one query at a time)",
        r.queries_per_sec, r.exact_queries_per_sec
    );
    println!("recall@{}: {:.4}", r.k, r.recall_at_k);
    Ok(())
}

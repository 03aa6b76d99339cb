use clap::{Parser, Subcommand};

use ftlab::cli;

/// ftlab: a terminal lab for memory-efficient fine-tuning of language models.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Threads for the CPU's matmuls and element-wise kernels (default: every core; also
    /// FTLAB_THREADS). Training workers and bench workers inherit it.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Where the dashboard's Inference tab computes: auto, cpu, cuda or cuda:N (training
    /// runs follow their preset's model.device).
    #[command(flatten)]
    device: cli::device::DeviceArgs,
}

/// Sets up the CPU threads of this process (`model::pool`): `--threads`, else
/// FTLAB_THREADS, else RAYON_NUM_THREADS, else every core. Children (training and bench
/// workers) inherit the count through RAYON_NUM_THREADS.
fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let n = match threads {
        Some(n) => n,
        None => match std::env::var("FTLAB_THREADS") {
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("FTLAB_THREADS={v}: expected a number of threads"))?,
            // RAYON_NUM_THREADS when set, else the cores (counted once here: candle asks
            // for its thread count at each matmul and, with RAYON_NUM_THREADS unset,
            // reads /proc/cpuinfo again each time).
            Err(_) => candle_core::utils::get_num_threads(),
        },
    };
    // Before any thread starts (the first thing main does).
    ftlab::model::pool::configure(n)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download or list models in the per-user cache.
    #[command(subcommand)]
    Models(cli::models::ModelsCmd),
    /// Generate text (streamed) from a causal LM.
    Generate(cli::generate::GenerateArgs),
    /// Mean next-token negative log-likelihood of a text file, as one JSON line.
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Fine-tune headless from a preset (or resume a run).
    Train(cli::train::TrainArgs),
    /// List the presets (./presets, the user's, built-in) or export a built-in one to edit.
    #[command(subcommand)]
    Presets(cli::presets::PresetsCmd),
    /// Fold a run's LoRA adapter into the base model; writes an HF model directory.
    Merge(cli::merge::MergeArgs),
    /// Held-out contained-answer accuracy (greedy generation on SFT data with short answers).
    Eval(cli::eval::EvalArgs),
    /// Predicted memory of a preset: weights, gradients, optimizer state, activations.
    Plan(cli::plan::PlanArgs),
    /// A few training steps of each technique: step time, tokens/s, peak memory.
    Bench(cli::bench::BenchArgs),
    /// Cosine similarities of sentence embeddings (all-MiniLM-L6-v2 by default).
    Embed(cli::embed::EmbedArgs),
    /// Build (or benchmark) an HNSW index of sentence embeddings.
    #[command(subcommand)]
    Index(cli::index::IndexCmd),
    /// Nearest documents of a query in an index built with `ftlab index build`.
    Search(cli::search::SearchArgs),
    /// Answer a question from a folder of documents: retrieve chunks, then generate.
    Rag(cli::rag::RagArgs),
    /// Pearson and Spearman correlation of an encoder on STS sentence pairs.
    StsEval(cli::sts::StsEvalArgs),
    /// Each memory-saving op on a device (GPU kernels, generic definitions) against the
    /// CPU kernels: values, gradients, optimiser updates.
    CheckKernels(cli::check::CheckArgs),
}

/// Commands whose output is read by a pipe (`ftlab presets list | head`) end quietly when
/// the reader goes away, as other command-line tools do, instead of panicking in
/// `println!`. `ftlab train` keeps SIGPIPE ignored: a worker whose reader has gone
/// stops cleanly at a checkpoint (see `cli::train`), and the dashboard never writes to a pipe.
fn quiet_on_closed_pipe(command: &Option<Command>) {
    if matches!(command, Some(Command::Train(_)) | None) {
        return;
    }
    // SAFETY: restoring the default action of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    // Before any thread starts: one heap for all of them.
    ftlab::telemetry::memory::one_heap();
    let cli = Cli::parse();
    if let Err(e) = set_threads(cli.threads) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    quiet_on_closed_pipe(&cli.command);
    let result = match cli.command {
        // The dashboard computes nothing itself (its inference thread runs each job on the pool).
        None => cli::tui::run(cli.device.device),
        // A command runs on a thread of the CPU pool, where the matmul's threads are.
        Some(command) => ftlab::model::pool::run(move || run(command)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Models(cmd) => cli::models::run(cmd),
        Command::Generate(args) => cli::generate::run(args),
        Command::Perplexity(args) => cli::perplexity::run(args),
        Command::Train(args) => cli::train::run(args),
        Command::Presets(cmd) => cli::presets::run(cmd),
        Command::Merge(args) => cli::merge::run(args),
        Command::Embed(args) => cli::embed::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Index(cmd) => cli::index::run(cmd),
        Command::Search(args) => cli::search::run(args),
        Command::Rag(args) => cli::rag::run(args),
        Command::StsEval(args) => cli::sts::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::CheckKernels(args) => cli::check::run(args),
    }
}

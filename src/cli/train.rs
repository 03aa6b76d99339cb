//! `ftlab train`: a headless training run (the same code path the dashboard's workers use).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::config::{RunConfig, TaskKind};
use crate::locations::Locations;
use crate::runs::layout::RunDir;
use crate::train::events::{EventLine, TrainEvent};
use crate::train::setup;
use crate::train::sft_task::SftTask;
use crate::train::sts_task::StsTask;
use crate::train::trainer::{TrainTask, Trainer};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Preset: a name (qlora: ./presets, the user's, then the built-in one) or a TOML file
    /// (e.g. presets/qlora.toml).
    #[arg(required_unless_present_any = ["resume", "list"])]
    pub preset: Option<PathBuf>,
    /// List the presets a name can choose from, and where each comes from.
    #[arg(long, conflicts_with_all = ["preset", "resume"])]
    pub list: bool,
    /// Override any preset field, e.g. --set lora.r=16 --set train.max_steps=20.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where to write the run (default: a new directory under --runs-root).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Parent of new run directories (default: $FTLAB_RUNS_DIR, ./runs in a checkout of
    /// ftlab, else ~/.local/share/ftlab/runs).
    #[arg(long)]
    pub runs_root: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with = "preset")]
    pub resume: Option<PathBuf>,
    /// Print events as JSON lines on stdout (for the dashboard's supervisor).
    #[arg(long)]
    pub events: bool,
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn print_event(line: &EventLine) {
    match &line.event {
        TrainEvent::Start { run, technique, total_steps, trainable_params, total_params, train_examples, predicted_peak_bytes, resumed_from_step, .. } => {
            eprintln!(
                "run {run}: {technique}, {total_steps} steps, {train_examples} training examples\ntrainable params: {trainable_params} || all params: {total_params} || trainable%: {:.4}",
                100.0 * *trainable_params as f64 / (*total_params).max(1) as f64
            );
            if let Some(p) = predicted_peak_bytes {
                eprintln!("predicted peak memory: {}", gib(*p));
            }
            if *resumed_from_step > 0 {
                eprintln!("resuming from step {resumed_from_step}");
            }
        }
        TrainEvent::Step { step, total_steps, loss, lr, grad_norm, tokens_per_sec, its, rss_bytes, .. } => eprintln!(
            "step {step:>5}/{total_steps}  loss {loss:.4}  lr {lr:.2e}  grad-norm {grad_norm:.3}  {tokens_per_sec:.0} tok/s  {its:.2} it/s  RSS {}",
            rss_bytes.map(gib).unwrap_or_else(|| "?".into())
        ),
        TrainEvent::Eval { step, loss, best, metrics, .. } => eprintln!("eval  step {step}: loss {loss:.4}{}{}", format_metrics(metrics), if *best { " (best)" } else { "" }),
        TrainEvent::Checkpoint { path, .. } => eprintln!("checkpoint: {path}"),
        TrainEvent::Done { reason, step, elapsed_secs, peak_rss_bytes, .. } => eprintln!(
            "done: {reason} after {step} steps in {elapsed_secs:.1} s, peak RSS {}",
            peak_rss_bytes.map(gib).unwrap_or_else(|| "?".into())
        ),
        TrainEvent::Error { message } => eprintln!("error: {message}"),
    }
}

/// The run's config: the preset with overrides, or a resumed run's own config.toml.
/// Returns (config, resume, directory that relative template paths resolve against).
fn load_config(args: &TrainArgs) -> Result<(RunConfig, bool, PathBuf)> {
    if let Some(dir) = &args.resume {
        let run = RunDir::new(dir);
        let cfg = RunConfig::load(&run.config(), &args.overrides)?;
        if run.list_checkpoints().is_empty() {
            bail!("{}: no checkpoint to resume from", dir.display());
        }
        return Ok((cfg, true, PathBuf::from(".")));
    }
    let preset = args.preset.as_ref().context("a preset file is required")?;
    let preset = &Locations::from_env().resolve_preset(preset)?;
    let cfg = RunConfig::load(preset, &args.overrides)?;
    let base = preset.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((cfg, false, base))
}

/// The run directory: the resumed one, --run-dir (which must not hold a run yet), or a
/// fresh one under --runs-root. Created only once the model and data have loaded, so a
/// bad config or data file leaves nothing behind.
fn run_dir(args: &TrainArgs, cfg: &RunConfig) -> Result<RunDir> {
    if let Some(dir) = &args.resume {
        return Ok(RunDir::new(dir));
    }
    match &args.run_dir {
        Some(d) => {
            if RunDir::new(d).metrics().exists() {
                bail!("{}: already holds a run; use --resume to continue it or choose another --run-dir", d.display());
            }
            std::fs::create_dir_all(d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
            Ok(RunDir::new(d))
        }
        None => {
            let root = args
                .runs_root
                .clone()
                .unwrap_or_else(|| Locations::from_env().runs_root);
            RunDir::create_unique(&root, &cfg.name)
        }
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.list {
        return super::presets::list();
    }
    let (cfg, resume, base) = load_config(&args)?;
    if let Some(d) = &args.run_dir {
        if !resume && RunDir::new(d).metrics().exists() {
            bail!(
                "{}: already holds a run; use --resume to continue it or choose another --run-dir",
                d.display()
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while the checkpoint is written is ignored on purpose.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    match cfg.task {
        TaskKind::Sft => {
            let task = SftTask::from_config(&cfg, &base)?;
            eprintln!("training set: {}", task.train.stats());
            let predicted = setup::predict_peak(&cfg, &task.tm.model).ok();
            drive(&args, cfg, resume, task, predicted, &stop)
        }
        TaskKind::Sts => {
            let task = StsTask::from_config(&cfg, &base)?;
            eprintln!("training set: {}", task.stats());
            drive(&args, cfg, resume, task, None, &stop)
        }
    }
}

/// `  name value` for each metric.
fn format_metrics(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("  {k} {v:.4}"))
        .collect()
}

/// Creates the run directory and runs the trainer on `task` (any kind of training).
fn drive<T: TrainTask>(
    args: &TrainArgs,
    cfg: RunConfig,
    resume: bool,
    task: T,
    predicted: Option<u64>,
    stop: &AtomicBool,
) -> Result<()> {
    let run = run_dir(args, &cfg)?;
    if !resume {
        std::fs::write(run.config(), cfg.to_toml()?)
            .with_context(|| format!("{}: cannot write", run.config().display()))?;
    }
    eprintln!("run directory: {}", run.root.display());
    let mut trainer = Trainer {
        cfg,
        run,
        task,
        predicted_peak_bytes: predicted,
    };
    let events = args.events;
    let mut sink = |line: &EventLine| {
        if events {
            if let Ok(s) = serde_json::to_string(line) {
                println!("{s}");
            }
        } else {
            print_event(line);
        }
    };
    let summary = trainer.run(resume, stop, &mut sink)?;
    if !events {
        eprintln!("summary: {}", trainer.run.summary().display());
    }
    let _ = summary;
    Ok(())
}

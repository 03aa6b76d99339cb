//! `ftlab train`: a headless training run (the same code path the dashboard's workers use).
//!
//! A stop request — Ctrl-C, SIGTERM (timeout, kill, systemd, docker), SIGHUP (a closed
//! terminal), the dashboard's stop, or the dashboard going away while a worker writes its
//! events — ends the run cleanly: the current optimiser step is dropped (resume replays its
//! micro-batches), a checkpoint is saved, the `done` event says "stopped", and the process
//! exits with [`STOPPED_EXIT_CODE`].
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::config::{device_name, RunConfig, TaskKind};
use crate::locations::Locations;
use crate::runs::layout::RunDir;
use crate::runs::lock::RunLock;
use crate::train::auto_batch;
use crate::train::checkpoint;
use crate::train::events::{EventLine, TrainEvent};
use crate::train::setup;
use crate::train::sft_task::{self, SftTask};
use crate::train::sts_task::StsTask;
use crate::train::trainer::{TrainTask, Trainer};

/// Exit status of a run stopped on request (checkpoint saved): 130, as shells report a
/// command ended by Ctrl-C (128 + SIGINT), whichever way the stop came. Scripts can tell a
/// stopped run (resume it) from a finished one (0) and a failed one (1).
pub const STOPPED_EXIT_CODE: i32 = 130;

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
    /// Continue the run in this directory from its last checkpoint. `--set` overrides
    /// apply to the rest of the run and are recorded in its config.toml (e.g. raise
    /// train.max_steps to train a finished run further).
    #[arg(long, conflicts_with = "preset")]
    pub resume: Option<PathBuf>,
    /// Print events as JSON lines on stdout (for the dashboard's supervisor).
    #[arg(long)]
    pub events: bool,
    /// With --resume: a run without a checkpoint yet starts over in its directory instead
    /// of being refused (the supervisor's relaunch after an out-of-memory death).
    #[arg(long, requires = "resume", hide = true)]
    pub relaunch: bool,
}

/// Test hook (`tests/auto_batch.rs`): a worker whose micro-batch is above 1 kills itself
/// with SIGKILL after step N, as the OOM killer would, so the supervisor's relaunch can be
/// tested deterministically. Read nowhere else.
pub const TEST_SIGKILL_AT_STEP: &str = "FTLAB_TEST_SIGKILL_AT_STEP";

fn test_oom_kill(step: usize, micro: usize) {
    let at = std::env::var(TEST_SIGKILL_AT_STEP)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if micro > 1 && at == Some(step) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
    }
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `eprintln!` that never panics: a closed terminal must not kill a run that is stopping.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// " in bf16 (trained weights kept in f32)" and the like: what a run computes in, and that
/// what it trains stays f32 when that is narrower ("" for runs that did not say).
fn compute_note(dtype: &str) -> String {
    match dtype {
        "" => String::new(),
        "f32" => " in f32".into(),
        d => format!(" in {d} (trained weights kept in f32)"),
    }
}

fn print_event(line: &EventLine) {
    match &line.event {
        TrainEvent::Start { run, technique, total_steps, trainable_params, total_params, train_examples, predicted_peak_bytes, resumed_from_step, device, dtype, .. } => {
            say!(
                "run {run}: {technique} on {device}{}, {total_steps} steps, {train_examples} training examples\ntrainable params: {trainable_params} || all params: {total_params} || trainable%: {:.4}",
                compute_note(dtype),
                100.0 * *trainable_params as f64 / (*total_params).max(1) as f64
            );
            if let Some(p) = predicted_peak_bytes {
                say!("predicted peak memory: {}", gib(*p));
            }
            if *resumed_from_step > 0 {
                say!("resuming from step {resumed_from_step}");
            }
        }
        TrainEvent::Step { step, total_steps, loss, lr, grad_norm, tokens_per_sec, its, rss_bytes, .. } => say!(
            "step {step:>5}/{total_steps}  loss {loss:.4}  lr {lr:.2e}  grad-norm {grad_norm:.3}  {tokens_per_sec:.0} tok/s  {its:.2} it/s  RSS {}",
            rss_bytes.map(gib).unwrap_or_else(|| "?".into())
        ),
        TrainEvent::Eval { step, loss, best, metrics, .. } => say!("eval  step {step}: loss {loss:.4}{}{}", format_metrics(metrics), if *best { " (best)" } else { "" }),
        TrainEvent::Checkpoint { path, .. } => say!("checkpoint: {path}"),
        TrainEvent::Done { reason, step, elapsed_secs, peak_rss_bytes, .. } => say!(
            "done: {reason} after {step} steps in {elapsed_secs:.1} s, peak RSS {}",
            peak_rss_bytes.map(gib).unwrap_or_else(|| "?".into())
        ),
        // The error is also what the run returns, and `main` prints that: once is enough.
        TrainEvent::Error { .. } => {}
        // Said before loading (`train`); the supervisor's relaunch notes are its own.
        TrainEvent::Batch { .. } => {}
    }
}

/// The run's config: the preset with overrides, or a resumed run's own config.toml.
/// Returns (config, resume, directory that relative template paths resolve against).
fn load_config(args: &TrainArgs) -> Result<(RunConfig, bool, PathBuf)> {
    if let Some(dir) = &args.resume {
        let run = RunDir::new(dir);
        let cfg = RunConfig::load(&run.config(), &args.overrides)?;
        let found = checkpoint::newest_valid(&run);
        for why in &found.skipped {
            eprintln!("warning: skipping an unreadable checkpoint: {why}");
        }
        if found.newest.is_none() {
            if args.relaunch {
                // Nothing saved yet: the relaunched run starts over where it was.
                return Ok((cfg, false, PathBuf::from(".")));
            }
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

/// Trains; a run stopped on request exits with [`STOPPED_EXIT_CODE`] once everything is
/// saved and closed.
pub fn run(args: TrainArgs) -> Result<()> {
    if args.list {
        super::presets::list()?;
        return Ok(());
    }
    if train(args)? == Ending::Stopped {
        std::process::exit(STOPPED_EXIT_CODE);
    }
    Ok(())
}

/// How a run that did not fail ended.
#[derive(Debug, PartialEq)]
enum Ending {
    Finished,
    Stopped,
}

fn train(args: TrainArgs) -> Result<Ending> {
    // A resumed run is locked before its model loads, so a second writer learns at once.
    let lock = match &args.resume {
        Some(dir) => Some(RunLock::acquire(dir)?),
        None => None,
    };
    let (cfg, resume, base) = load_config(&args)?;
    // A device this binary cannot use is refused before anything loads.
    cfg.model.device.check_available()?;
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
        // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination` feature) all ask for a clean
        // stop. A second one while the checkpoint is written is ignored on purpose.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let device = cfg.model.device.resolve()?;
    // SFT data is tokenised before any weight loads: its errors come first, and its row
    // lengths plan the memory.
    let data = match cfg.task {
        TaskKind::Sft => Some(sft_task::load_data(&cfg, &base, &device)?),
        TaskKind::Sts => None,
    };
    // The micro-batch that fits, chosen before the weights load (a run that cannot fit is
    // refused here). It is recorded (a `batch` event, config.toml) when it changes the
    // config: a resumed or relaunched run that keeps its micro-batch adds nothing.
    let (cfg, batch_note) = match auto_batch::choose(&cfg, data.as_ref())? {
        Some((chosen, note)) => {
            eprintln!("{note}");
            let changed = chosen.train.micro_batch_size != cfg.train.micro_batch_size;
            (chosen, changed.then_some(note))
        }
        None => (cfg, None),
    };
    let launch = Launch {
        resume,
        batch_note,
        lock,
    };
    eprintln!("device: {}", device_name(&device));
    match data {
        Some(data) => {
            let rows = setup::row_lengths(&cfg, &data)?;
            let task = SftTask::with_data(&cfg, &device, data)?;
            eprintln!("training set: {}", task.train.stats());
            // The whole process: loading, the step's worst micro-batch, evaluation.
            let input = setup::plan_input(&cfg, task.tm.model.config(), Some(rows));
            let predicted = Some(crate::plan::process_peak(&input));
            drive(&args, cfg, launch, task, predicted, &stop)
        }
        None => {
            let task = StsTask::from_config(&cfg, &base, &device)?;
            eprintln!("training set: {}", task.stats());
            drive(&args, cfg, launch, task, None, &stop)
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

/// How a run starts: resumed or not, the auto batch's note, and a resumed run's lock
/// (taken before loading).
struct Launch {
    resume: bool,
    batch_note: Option<String>,
    lock: Option<RunLock>,
}

/// Creates (and locks) the run directory and runs the trainer on `task` (any kind of
/// training).
fn drive<T: TrainTask>(
    args: &TrainArgs,
    cfg: RunConfig,
    launch: Launch,
    task: T,
    predicted: Option<u64>,
    stop: &AtomicBool,
) -> Result<Ending> {
    let Launch {
        resume,
        batch_note,
        lock,
    } = launch;
    let run = run_dir(args, &cfg)?;
    let _lock = match lock {
        Some(l) => l,
        None => RunLock::acquire(&run.root)?,
    };
    // A resumed run's overrides are recorded once its checkpoint has loaded (the start
    // event), so config.toml always describes what trained — as HF Trainer's saved
    // arguments are those of the session that resumed.
    let mut record_config = None;
    if !resume {
        std::fs::write(run.config(), cfg.to_toml()?)
            .with_context(|| format!("{}: cannot write", run.config().display()))?;
    } else if !args.overrides.is_empty() || batch_note.is_some() {
        // `--set` overrides, or a micro-batch the auto batch chose anew.
        record_config = Some((run.config(), cfg.to_toml()?));
    }
    eprintln!("run directory: {}", run.root.display());
    let mut trainer = Trainer {
        cfg,
        run,
        task,
        predicted_peak_bytes: predicted,
        batch_note,
    };
    let events = args.events;
    let micro = trainer.cfg.train.micro_batch();
    let mut sink = |line: &EventLine| {
        if let TrainEvent::Step { step, .. } = &line.event {
            test_oom_kill(*step, micro);
        }
        if let (TrainEvent::Start { .. }, Some((path, text))) = (&line.event, record_config.take())
        {
            match std::fs::write(&path, text) {
                Ok(()) => eprintln!("{}: recorded the resumed run's config", path.display()),
                Err(e) => eprintln!(
                    "warning: {}: cannot record the resumed run's config: {e}",
                    path.display()
                ),
            }
        }
        if events {
            if let Ok(s) = serde_json::to_string(line) {
                // The reader (the dashboard) is gone, e.g. its terminal closed: stop
                // cleanly rather than die at this write.
                if writeln!(std::io::stdout(), "{s}").is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        } else {
            print_event(line);
        }
    };
    let summary = trainer.run(resume, stop, &mut sink)?;
    if summary.reason == "stopped" {
        // stderr may be gone with the dashboard; the events and files say it all.
        let _ = if summary.steps > 0 {
            writeln!(
                std::io::stderr(),
                "stopped after step {}: checkpoint saved; continue with `ftlab train --resume {}`",
                summary.steps,
                trainer.run.root.display()
            )
        } else {
            writeln!(
                std::io::stderr(),
                "stopped before the first step: nothing to resume"
            )
        };
        return Ok(Ending::Stopped);
    }
    if !events {
        eprintln!("summary: {}", trainer.run.summary().display());
    }
    Ok(Ending::Finished)
}

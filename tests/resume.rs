//! Runs that never lose work (issue 13), on a tiny LLaMA: a stop inside gradient
//! accumulation resumes to the same run, the summary after a resume is the uninterrupted
//! run's, a finished run is not resumed, and the binary stops cleanly on SIGTERM or when its
//! reader goes away, refuses a second writer, falls back past a broken checkpoint, and
//! reports a full disk once, naming the file.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use candle_core::{Tensor, Var};
use ftlab::config::RunConfig;
use ftlab::runs::layout::RunDir;
use ftlab::runs::lock::RunLock;
use ftlab::train::checkpoint::{read_state, TrainerState};
use ftlab::train::events::{EventLine, TrainEvent};
use ftlab::train::sft_task::SftTask;
use ftlab::train::trainer::{Evaluation, Summary, TrainTask, Trainer};

/// A task that raises `stop` during its `stop_after`-th micro-batch (forward and backward),
/// i.e. wherever that falls inside an optimiser step; `on_stop` runs at that moment.
struct StopDuring<T> {
    inner: T,
    calls: AtomicUsize,
    stop_after: usize,
    stop: Arc<AtomicBool>,
    on_stop: Box<dyn Fn()>,
}

impl<T: TrainTask> TrainTask for StopDuring<T> {
    type Batch = T::Batch;
    fn params(&self) -> &[(String, Var)] {
        self.inner.params()
    }
    fn total_params(&self) -> usize {
        self.inner.total_params()
    }
    fn train_len(&self) -> usize {
        self.inner.train_len()
    }
    fn eval_len(&self) -> usize {
        self.inner.eval_len()
    }
    fn batches(&self, epoch: usize, batch_size: usize, seed: u64) -> Result<Vec<T::Batch>> {
        self.inner.batches(epoch, batch_size, seed)
    }
    fn forward_backward(
        &self,
        batch: &T::Batch,
        noise_seed: u64,
        accum: &mut [Option<Tensor>],
    ) -> Result<(f64, usize)> {
        let out = self.inner.forward_backward(batch, noise_seed, accum)?;
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.stop_after {
            (self.on_stop)();
            self.stop.store(true, Ordering::SeqCst);
        }
        Ok(out)
    }
    fn evaluate(&self, batch_size: usize, seed: u64) -> Result<Option<Evaluation>> {
        self.inner.evaluate(batch_size, seed)
    }
    fn set_training(&mut self, training: bool) {
        self.inner.set_training(training)
    }
    fn save_weights(&mut self, dir: &Path, trained: &[(String, Var)]) -> Result<()> {
        self.inner.save_weights(dir, trained)
    }
}

/// A LoRA run of 8 steps with gradient accumulation, evaluated on 8 examples.
fn accum_setup(extra: &str) -> (tempfile::TempDir, RunConfig) {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let data = common::small_sft(root.path(), 48);
    let preset = common::preset(
        root.path(),
        &model,
        &data,
        &format!("grad_accum = 2\n{extra}[lora]\nr = 4\nalpha = 8\n"),
    );
    let mut cfg = RunConfig::load(&preset, &[]).unwrap();
    cfg.train.max_steps = 8;
    cfg.data.eval_limit = 8;
    (root, cfg)
}

fn task(cfg: &RunConfig) -> SftTask {
    SftTask::from_config(cfg, Path::new("."), &candle_core::Device::Cpu).unwrap()
}

/// Step losses of a run (or a resumed session) and its summary.
fn train(cfg: &RunConfig, dir: &Path, resume: bool) -> (Summary, Vec<(usize, f64)>) {
    let mut steps = Vec::new();
    let summary = common::run_trainer(cfg, task(cfg), dir, resume, |l, _| {
        if let TrainEvent::Step { step, loss, .. } = l.event {
            steps.push((step, loss));
        }
    });
    (summary, steps)
}

/// A session stopped during its `stop_after`-th micro-batch; `on_stop` runs then.
fn train_stopped(
    cfg: &RunConfig,
    dir: &Path,
    stop_after: usize,
    on_stop: Box<dyn Fn()>,
) -> (Summary, Vec<(usize, f64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut trainer = Trainer {
        cfg: cfg.clone(),
        run: RunDir::new(dir),
        task: StopDuring {
            inner: task(cfg),
            calls: AtomicUsize::new(0),
            stop_after,
            stop: stop.clone(),
            on_stop,
        },
        predicted_peak_bytes: None,
        batch_note: None,
    };
    let mut steps = Vec::new();
    let mut sink = |l: &EventLine| {
        if let TrainEvent::Step { step, loss, .. } = l.event {
            steps.push((step, loss));
        }
    };
    let summary = trainer.run(false, &stop, &mut sink).unwrap();
    (summary, steps)
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap()
}

fn assert_same_losses(straight: &[(usize, f64)], resumed: &[(usize, f64)]) {
    assert_eq!(
        straight.iter().map(|s| s.0).collect::<Vec<_>>(),
        resumed.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for ((s, a), (_, b)) in straight.iter().zip(resumed) {
        assert!((a - b).abs() < 1e-5, "step {s}: {a} vs {b}");
    }
}

#[test]
fn a_stop_inside_gradient_accumulation_resumes_to_the_same_run() {
    let (root, cfg) = accum_setup("");
    let save_every = cfg.train.save_every;
    // The uninterrupted run, checkpointed every 2 steps to see where each step ends
    // (checkpoints do not change training).
    let mut every_2 = cfg.clone();
    every_2.train.save_every = 2;
    let straight_dir = root.path().join("a");
    let (_, straight) = train(&every_2, &straight_dir, false);

    // Stopped one micro-batch into step 3 (no periodic checkpoint at step 2), and one
    // micro-batch after the periodic checkpoint of step 4.
    for done_steps in [2, save_every] {
        let there = read_state(&RunDir::new(&straight_dir).checkpoint(done_steps)).unwrap();
        assert_eq!(there.epoch, 0, "the test stops inside the first epoch");
        let consumed = there.batch_in_epoch;
        let dir = root.path().join(format!("stop-{done_steps}"));
        let ckpt = RunDir::new(&dir).checkpoint(done_steps);
        let seen_at_stop: Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let on_stop: Box<dyn Fn()> = {
            let (seen, file) = (seen_at_stop.clone(), ckpt.join("trainer_state.json"));
            Box::new(move || *seen.lock().unwrap() = std::fs::read_to_string(&file).ok())
        };
        let (s1, first) = train_stopped(&cfg, &dir, consumed + 1, on_stop);
        assert_eq!(s1.reason, "stopped");
        assert_eq!(s1.steps, done_steps);
        let state: TrainerState = read_state(&ckpt).unwrap();
        assert_eq!(
            state.batch_in_epoch, consumed,
            "the stop checkpoint counts the micro-batches of completed steps only"
        );
        let before = seen_at_stop.lock().unwrap().clone();
        assert_eq!(before.is_some(), done_steps % save_every == 0);
        if let Some(before) = before {
            let after = std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap();
            assert_eq!(after, before, "the periodic checkpoint stays as it was");
        }
        let (s2, second) = train(&cfg, &dir, true);
        assert_eq!(s2.reason, "completed");
        let resumed: Vec<(usize, f64)> = first.into_iter().chain(second).collect();
        assert_same_losses(&straight, &resumed);
        assert!(
            adapter_bytes(&root.path().join("a")) == adapter_bytes(&dir),
            "stop at step {done_steps}: the final adapter differs from the uninterrupted run's"
        );
    }
}

/// Full fine-tuning in bf16 with f32 master weights (`model.dtype = "bf16"`; what `auto`
/// gives on a GPU) stopped inside gradient accumulation: the checkpoint holds the masters
/// and the resumed run equals the uninterrupted one, its final weights byte for byte.
#[test]
fn a_bf16_full_run_with_master_weights_resumes_to_the_same_run() {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let data = common::small_sft(root.path(), 48);
    let preset = common::preset(root.path(), &model, &data, "grad_accum = 2\n");
    let mut cfg = RunConfig::load(&preset, &[]).unwrap();
    cfg.model.dtype = ftlab::config::ComputeDtype::Bf16;
    cfg.train.max_steps = 6;
    cfg.train.lr = 1e-4;
    cfg.data.eval_limit = 8;
    let straight_dir = root.path().join("a");
    let (_, straight) = train(&cfg, &straight_dir, false);
    // Stopped one micro-batch into step 3.
    let dir = root.path().join("b");
    let (s1, first) = train_stopped(&cfg, &dir, 2 * 2 + 1, Box::new(|| {}));
    assert_eq!((s1.reason.as_str(), s1.steps), ("stopped", 2));
    let (s2, second) = train(&cfg, &dir, true);
    assert_eq!(s2.reason, "completed");
    let resumed: Vec<(usize, f64)> = first.into_iter().chain(second).collect();
    assert_same_losses(&straight, &resumed);
    let weights =
        |d: &Path| std::fs::read(RunDir::new(d).model().join("model.safetensors")).unwrap();
    assert!(
        weights(&straight_dir) == weights(&dir),
        "the final weights differ from the uninterrupted run's"
    );
}

#[test]
fn the_summary_after_a_resume_is_the_uninterrupted_runs() {
    let (root, cfg) = accum_setup("eval_every = 2\neval_on_start = true\n");
    let (straight, _) = train(&cfg, &root.path().join("a"), false);
    let dir = root.path().join("b");
    let (first, _) = train_stopped(&cfg, &dir, 3 * cfg.train.grad_accum, Box::new(|| {}));
    assert_eq!(first.reason, "stopped");
    let (resumed, _) = train(&cfg, &dir, true);
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.json")).unwrap(),
        serde_json::to_string_pretty(&resumed).unwrap(),
        "summary.json is the summary returned"
    );

    assert_eq!(resumed.steps, straight.steps);
    assert_eq!(resumed.reason, straight.reason);
    assert_eq!(
        resumed.eval_losses.iter().map(|e| e.0).collect::<Vec<_>>(),
        straight.eval_losses.iter().map(|e| e.0).collect::<Vec<_>>(),
        "every evaluation of both sessions"
    );
    assert_same_losses(&straight.eval_losses, &resumed.eval_losses);
    let close = |a: Option<f64>, b: Option<f64>| (a.unwrap() - b.unwrap()).abs() < 1e-5;
    assert!(close(resumed.best_eval_loss, straight.best_eval_loss));
    assert!(close(resumed.final_train_loss, straight.final_train_loss));
    assert_eq!(
        resumed.best_eval_metrics.keys().collect::<Vec<_>>(),
        straight.best_eval_metrics.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        (resumed.trainable_params, resumed.total_params),
        (straight.trainable_params, straight.total_params)
    );
    assert!(resumed.mean_tokens_per_sec > 0.0);
    assert!(resumed.peak_rss_bytes.unwrap() >= first.peak_rss_bytes.unwrap());
    assert!(resumed.elapsed_secs >= first.elapsed_secs);

    // Resuming the finished run is refused and leaves its files as they are.
    let summary_text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let metrics_text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut trainer = Trainer {
        cfg: cfg.clone(),
        run: RunDir::new(&dir),
        task: task(&cfg),
        predicted_peak_bytes: None,
        batch_note: None,
    };
    let err = trainer
        .run(true, &AtomicBool::new(false), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("finished"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.json")).unwrap(),
        summary_text
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        metrics_text
    );
}

/// One step: the start event counts the eval examples, and weights files get the same
/// permissions as the run's other files (the umask's, not safetensors' temporary 0600).
#[test]
fn the_start_event_counts_the_eval_examples_and_weights_are_written_like_other_files() {
    let (root, mut cfg) = accum_setup("");
    cfg.train.max_steps = 1;
    let t = task(&cfg);
    let expected = t.eval.as_ref().unwrap().len();
    assert!(expected > 0);
    let mut seen = None;
    common::run_trainer(&cfg, t, &root.path().join("run"), false, |l, _| {
        if let TrainEvent::Start { eval_examples, .. } = l.event {
            seen = Some(eval_examples);
        }
    });
    assert_eq!(seen, Some(expected));
    use std::os::unix::fs::PermissionsExt;
    let run = RunDir::new(root.path().join("run"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let expected = mode(&run.summary());
    for f in [
        run.adapter().join("adapter_model.safetensors"),
        run.checkpoint(1).join("adapter_model.safetensors"),
        run.checkpoint(1).join("optimizer.safetensors"),
    ] {
        assert_eq!(mode(&f), expected, "{}", f.display());
    }
}

// ---- the binary -------------------------------------------------------------------------

fn ftlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ftlab"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A tiny preset with a step budget that no test waits for (save_every 0: only stop
/// checkpoints), and the run directory to use.
fn long_preset(root: &Path) -> (PathBuf, PathBuf) {
    let model = common::tiny_model(root);
    let data = common::small_sft(root, 16);
    let extra = "[lora]\nr = 4\nalpha = 8\n";
    let preset = common::preset(root, &model, &data, extra);
    (preset, root.join("run"))
}

/// Starts `ftlab train` with events on stdout; returns the child and the stdout lines.
fn spawn_train(
    preset: &Path,
    dir: &Path,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = ftlab()
        .args(["train"])
        .arg(preset)
        .args([
            "--set",
            "train.max_steps=100000",
            "--set",
            "train.save_every=0",
        ])
        .arg("--run-dir")
        .arg(dir)
        .arg("--events")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Reads events until the first step event.
fn until_first_step(lines: &mut impl Iterator<Item = std::io::Result<String>>) {
    for l in lines {
        let l = l.unwrap();
        if let Ok(ev) = EventLine::parse(&l) {
            if matches!(ev.event, TrainEvent::Step { .. }) {
                return;
            }
        }
    }
    panic!("the run ended before its first step");
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

fn done_reason(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| EventLine::parse(l).ok())
        .find_map(|e| match e.event {
            TrainEvent::Done { reason, .. } => Some(reason),
            _ => None,
        })
}

/// `ftlab train --resume dir --set train.max_steps=N` with N two steps past the newest
/// checkpoint: it must finish there, and record the override. Returns its stderr.
fn resume_two_more(dir: &Path) -> String {
    let run = RunDir::new(dir);
    let (step, _) = *run.list_checkpoints().last().unwrap();
    let err = resume_two_more_from(dir, step);
    let recorded = RunConfig::load(&run.config(), &[]).unwrap();
    assert_eq!(
        recorded.train.max_steps,
        step + 2,
        "config.toml records --set"
    );
    err
}

#[test]
fn sigterm_stops_cleanly_with_a_checkpoint_and_the_run_resumes() {
    let root = tempfile::tempdir().unwrap();
    let (preset, dir) = long_preset(root.path());
    let (mut child, mut lines) = spawn_train(&preset, &dir);
    until_first_step(&mut lines);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    lines.for_each(drop);
    let err = stderr_of(&mut child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert_eq!(done_reason(&dir).as_deref(), Some("stopped"));
    assert!(!RunDir::new(&dir).list_checkpoints().is_empty(), "{err}");
    resume_two_more(&dir);
}

#[test]
fn a_worker_whose_reader_goes_away_stops_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let (preset, dir) = long_preset(root.path());
    let (mut child, mut lines) = spawn_train(&preset, &dir);
    until_first_step(&mut lines);
    drop(lines); // the dashboard is gone (its terminal closed)
    let err = stderr_of(&mut child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(done_reason(&dir).as_deref(), Some("stopped"));
    assert!(!RunDir::new(&dir).list_checkpoints().is_empty());
}

/// A run stopped at step 6 with checkpoints at steps 4 and 6, written by the library.
fn stopped_run(root: &Path) -> PathBuf {
    let model = common::tiny_model(root);
    let data = common::small_sft(root, 16);
    let preset = common::preset(root, &model, &data, "[lora]\nr = 4\nalpha = 8\n");
    let cfg = RunConfig::load(&preset, &[]).unwrap();
    let dir = root.join("run");
    let s = common::run_trainer(&cfg, task(&cfg), &dir, false, |l, stop| {
        if matches!(l.event, TrainEvent::Step { step: 6, .. }) {
            stop.store(true, Ordering::SeqCst);
        }
    });
    assert_eq!(s.reason, "stopped");
    std::fs::write(RunDir::new(&dir).config(), cfg.to_toml().unwrap()).unwrap();
    dir
}

#[test]
fn a_second_writer_is_refused_naming_the_pid_and_a_stale_lock_is_not_an_obstacle() {
    let root = tempfile::tempdir().unwrap();
    let dir = stopped_run(root.path());
    let held = RunLock::acquire(&dir).unwrap();
    let out = ftlab()
        .args(["train", "--resume"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("process {}", std::process::id())),
        "the error names the PID holding the lock: {err}"
    );
    drop(held);
    // The lock file of a process that has exited.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(dir.join(".lock"), format!("{}\n", gone.id())).unwrap();
    resume_two_more(&dir);
}

#[test]
fn a_broken_newest_checkpoint_falls_back_to_the_previous_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let dir = stopped_run(root.path());
    let run = RunDir::new(&dir);
    let steps: Vec<usize> = run.list_checkpoints().iter().map(|c| c.0).collect();
    assert!(steps.len() >= 2, "{steps:?}");
    let (newest, previous) = (steps[steps.len() - 1], steps[steps.len() - 2]);
    // A write cut short: half of the newest checkpoint's adapter.
    let weights = run.checkpoint(newest).join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = resume_two_more_from(&dir, previous);
    assert!(
        err.contains("warning") && err.contains(&weights.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains(&format!("resuming from step {previous}")),
        "{err}"
    );
}

/// `ftlab train --resume dir` up to two steps past `step` (the checkpoint it must resume
/// from): it must finish there. Returns its stderr.
fn resume_two_more_from(dir: &Path, step: usize) -> String {
    let out = ftlab()
        .args(["train", "--resume"])
        .arg(dir)
        .args(["--set", &format!("train.max_steps={}", step + 2)])
        .output()
        .unwrap();
    common::assert_success(&out);
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(RunDir::new(dir).summary()).unwrap())
            .unwrap();
    assert_eq!(summary.steps, step + 2);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ftlab train` (two steps) into a run directory where `file` is a link to /dev/full,
/// which answers every write with ENOSPC as a full disk does. The run must fail with exit
/// status 1 and an error that names the file, printed once.
fn a_full_disk_at(file: &str) {
    let full = Path::new("/dev/full");
    assert!(
        full.exists(),
        "{}: needed to simulate a full disk",
        full.display()
    );
    let root = tempfile::tempdir().unwrap();
    let (preset, dir) = long_preset(root.path());
    let target = dir.join(file);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(full, &target).unwrap();
    let out = ftlab()
        .args(["train"])
        .arg(&preset)
        .args(["--set", "train.max_steps=2", "--set", "train.save_every=0"])
        .arg("--run-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = format!("error: {}: cannot write", target.display());
    assert!(err.contains(&line), "the error names {file}: {err}");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "printed once: {err}"
    );
    // The run's own record of the failure names the file too (the Runs tab shows it).
    let failed = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| EventLine::parse(l).ok())
        .find_map(|e| match e.event {
            TrainEvent::Error { message } => Some(message),
            _ => None,
        });
    assert!(
        failed.is_some_and(|m| m.contains(&target.display().to_string())),
        "{err}"
    );
}

#[test]
fn a_full_disk_names_the_file_and_is_reported_once() {
    a_full_disk_at("adapter/adapter_config.json");
    a_full_disk_at("summary.json");
}

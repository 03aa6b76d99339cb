//! `train.auto_batch` end to end on a tiny LLaMA: under a memory limit (`FTLAB_MEMORY_LIMIT`)
//! the run picks the largest micro-batch whose predicted peak fits and accumulates more
//! micro-batches per step, keeping the effective batch; `auto_batch = false` trains exactly as
//! before; a run that cannot fit is refused before loading with predicted against available.
//! And a worker killed by SIGKILL (as the OOM killer does) is relaunched by the supervisor
//! with half the micro-batch from its last checkpoint, recorded as a `batch` event, and
//! finishes.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ftlab::cli::train::TEST_SIGKILL_AT_STEP;
use ftlab::config::RunConfig;
use ftlab::plan::fit::with_margin;
use ftlab::runs::registry::{Registry, RunStatus};
use ftlab::runs::supervisor::{LaunchRequest, Supervisor, SupervisorEvent, SupervisorOptions};
use ftlab::telemetry::available::MEMORY_LIMIT_ENV;
use ftlab::train::auto_batch::with_micro_batch;
use ftlab::train::events::{EventLine, TrainEvent};
use ftlab::train::setup::{arch_of, plan_data, predicted_process_peak};
use ftlab::train::trainer::Summary;

const LORA: &str = "[lora]\nr = 4\nalpha = 8\n";

/// A tiny LoRA preset (batch 4), and its config with `overrides`.
fn setup(root: &Path) -> PathBuf {
    let model = common::tiny_model(root);
    let data = common::small_sft(root, 16);
    common::preset(root, &model, &data, LORA)
}

/// The limit under which micro-batch 2 fits and 4 does not (the plan's own predictions,
/// with the margin): halfway between what the two need.
fn limit_for_micro_2(preset: &Path, overrides: &[&str]) -> u64 {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::load(preset, &o).unwrap();
    let arch = arch_of(&cfg).unwrap();
    // The rows `ftlab train` plans with: the data's own, tokenised.
    let data = plan_data(&cfg, preset.parent().unwrap()).unwrap();
    let need = |m| {
        let peak = predicted_process_peak(&with_micro_batch(&cfg, m), &arch, Some(&data));
        with_margin(peak.unwrap())
    };
    let (two, four) = (need(2), need(4));
    assert!(
        two < four,
        "the plan grows with the micro-batch: {two} vs {four}"
    );
    (two + four) / 2
}

const STEPS: [&str; 5] = [
    "train.max_steps=2",
    "train.grad_accum=2",
    "train.save_every=0",
    "train.eval_on_start=false",
    "train.eval_every=0",
];

/// `ftlab train PRESET --run-dir DIR` with the limit (if any) and extra overrides.
fn train(preset: &Path, dir: &Path, limit: Option<u64>, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ftlab"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove(TEST_SIGKILL_AT_STEP)
        .env_remove(MEMORY_LIMIT_ENV)
        .arg("train")
        .arg(preset)
        .arg("--run-dir")
        .arg(dir);
    if let Some(l) = limit {
        c.env(MEMORY_LIMIT_ENV, l.to_string());
    }
    for o in STEPS.iter().chain(extra) {
        c.args(["--set", o]);
    }
    c.output().unwrap()
}

fn events(dir: &Path) -> Vec<TrainEvent> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| EventLine::parse(l).unwrap().event)
        .collect()
}

fn losses(dir: &Path) -> Vec<f64> {
    events(dir)
        .into_iter()
        .filter_map(|e| match e {
            TrainEvent::Step { loss, .. } => Some(loss),
            _ => None,
        })
        .collect()
}

fn summary(dir: &Path) -> Summary {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_low_memory_limit_picks_a_smaller_micro_batch_and_keeps_the_effective_batch() {
    let root = tempfile::tempdir().unwrap();
    let preset = setup(root.path());
    let limit = limit_for_micro_2(&preset, &STEPS);
    let dir = root.path().join("small");
    let out = train(&preset, &dir, Some(limit), &[]);
    common::assert_success(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("auto batch:"))
        .unwrap_or_else(|| panic!("no auto batch line in:\n{err}"));
    assert!(
        line.contains("micro-batch 2 × 4 per step = 8 examples per step (batch 4 × grad_accum 2)")
            && line.contains("micro-batch 4 would need")
            && line.contains("available (FTLAB_MEMORY_LIMIT)"),
        "{line}"
    );
    // Recorded: config.toml, the batch event, the summary.
    let cfg = RunConfig::load(&dir.join("config.toml"), &[]).unwrap();
    assert_eq!(
        (
            cfg.train.batch_size,
            cfg.train.grad_accum,
            cfg.train.micro_batch_size
        ),
        (4, 2, Some(2))
    );
    let batch = events(&dir)
        .into_iter()
        .find(|e| matches!(e, TrainEvent::Batch { .. }))
        .expect("a batch event");
    match batch {
        TrainEvent::Batch {
            micro_batch,
            micro_batches_per_step,
            effective_batch,
            ..
        } => assert_eq!(
            (micro_batch, micro_batches_per_step, effective_batch),
            (2, 4, 8)
        ),
        _ => unreachable!(),
    }
    let s = summary(&dir);
    assert_eq!(
        (s.micro_batch, s.micro_batches_per_step),
        (Some(2), Some(4))
    );
    assert_eq!(s.steps, 2);

    // The whole-batch run's losses, closely (a step's loss is the mean of its micro-batch
    // means, not of the whole batch).
    let whole = root.path().join("whole");
    common::assert_success(&train(&preset, &whole, None, &["train.auto_batch=false"]));
    for (a, b) in losses(&dir).iter().zip(losses(&whole)) {
        assert!((a - b).abs() < 0.05 * b, "{a} vs {b}");
    }
}

#[test]
fn auto_batch_false_trains_as_before_and_a_roomy_limit_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let preset = setup(root.path());
    let limit = limit_for_micro_2(&preset, &STEPS);
    let off = root.path().join("off");
    let out = train(&preset, &off, Some(limit), &["train.auto_batch=false"]);
    common::assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("auto batch"));
    let cfg = RunConfig::load(&off.join("config.toml"), &[]).unwrap();
    assert_eq!(cfg.train.micro_batch_size, None);
    assert!(!events(&off)
        .iter()
        .any(|e| matches!(e, TrainEvent::Batch { .. })));
    let s = summary(&off);
    assert_eq!(
        (s.micro_batch, s.micro_batches_per_step),
        (Some(4), Some(2))
    );

    // With room for the whole batch the auto batch keeps it, and the run is the same.
    let roomy = root.path().join("roomy");
    let out = train(&preset, &roomy, Some(1 << 40), &[]);
    common::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("auto batch: micro-batch 4 × 2 per step = 8 examples per step"));
    assert_eq!(losses(&off), losses(&roomy));
}

#[test]
fn a_run_that_cannot_fit_is_refused_before_loading() {
    let root = tempfile::tempdir().unwrap();
    let preset = setup(root.path());
    let dir = root.path().join("none");
    let out = train(&preset, &dir, Some(1 << 20), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not fit in memory: even micro-batch 1 is predicted at")
            && err.contains("1 MiB available (FTLAB_MEMORY_LIMIT)")
            && err.contains("data.max_seq_len")
            && err.contains("train.auto_batch = false"),
        "{err}"
    );
    assert!(
        !dir.join("metrics.jsonl").exists(),
        "refused before the run began"
    );
}

/// Every supervisor event of one run until it finishes.
fn run_to_the_end(runs: &Path, req: LaunchRequest, timeout: Duration) -> Vec<SupervisorEvent> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = SupervisorOptions::new(env!("CARGO_BIN_EXE_ftlab"), runs);
    let sup = Supervisor::start(opts, rt.handle(), move |ev| {
        let _ = tx.send(ev);
    });
    sup.launch(req);
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let next =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), rx.recv()).await });
        if let Ok(Some(ev)) = next {
            let end = matches!(ev, SupervisorEvent::Finished { .. });
            seen.push(ev);
            if end {
                return seen;
            }
        }
    }
    panic!("the run did not finish in time: {seen:#?}");
}

#[test]
fn a_worker_killed_for_memory_is_relaunched_with_half_the_micro_batch_and_finishes() {
    let root = tempfile::tempdir().unwrap();
    let preset = setup(root.path());
    // Every worker of this test binary's supervisor kills itself after step 2 while its
    // micro-batch is above 1 (the CLI tests above remove the variable).
    std::env::set_var(TEST_SIGKILL_AT_STEP, "2");
    let runs = root.path().join("runs");
    let overrides = [
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.max_steps=4",
        "train.save_every=1",
        "train.eval_every=0",
    ];
    let seen = run_to_the_end(
        &runs,
        LaunchRequest {
            preset,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        },
        Duration::from_secs(300),
    );
    let status = seen.iter().find_map(|e| match e {
        SupervisorEvent::Finished { status, .. } => Some(status.clone()),
        _ => None,
    });
    assert_eq!(
        status,
        Some(RunStatus::Done("completed".into())),
        "{seen:#?}"
    );
    let starts = seen
        .iter()
        .filter(|e| matches!(e, SupervisorEvent::Started { .. }))
        .count();
    assert_eq!(starts, 2, "one relaunch");
    // The last batch event is the relaunch's (the relaunched worker keeps its micro-batch).
    let batch = seen.iter().rev().find_map(|e| match e {
        SupervisorEvent::Event { line, .. } => match &line.event {
            b @ TrainEvent::Batch { .. } => Some(b.clone()),
            _ => None,
        },
        _ => None,
    });
    let Some(TrainEvent::Batch {
        step,
        micro_batch,
        micro_batches_per_step,
        effective_batch,
        reason,
        ..
    }) = batch
    else {
        panic!("no batch event: {seen:#?}");
    };
    assert_eq!(
        (micro_batch, micro_batches_per_step, effective_batch),
        (1, 4, 4)
    );
    assert!(
        step >= 1,
        "relaunched from a checkpoint, not from the start"
    );
    assert!(
        reason.contains("SIGKILL without a stop request: most likely the OOM killer")
            || reason.contains("OOM killer (its oom_kill count rose)"),
        "{reason}"
    );
    assert!(
        reason.contains("at micro-batch 2; relaunched from the checkpoint of step"),
        "{reason}"
    );

    // What the Runs tab reads: the record with its batch note, the run finished.
    let rec = &Registry::new(&runs).scan()[0];
    assert_eq!(rec.status, RunStatus::Done("completed".into()));
    assert_eq!(rec.current_step(), 4);
    let note = rec
        .batch
        .as_ref()
        .expect("the record keeps the batch event");
    assert!(
        note.line().starts_with("micro-batch 1 × 4 = 4 per step: "),
        "{}",
        note.line()
    );
    let cfg = RunConfig::load(&rec.dir.join("config.toml"), &[]).unwrap();
    assert_eq!(cfg.train.micro_batch_size, Some(1));
    let s = summary(&rec.dir);
    assert_eq!(
        (s.micro_batch, s.micro_batches_per_step, s.steps),
        (Some(1), Some(4), 4)
    );
}

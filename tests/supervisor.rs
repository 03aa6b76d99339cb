//! The dashboard's supervisor end to end: real `ftlab train` workers on a tiny LLaMA, their
//! events arriving, a run finishing and appearing in the registry; a worker killed mid-run
//! marked failed while the supervisor goes on; a bad config failing with its reason; and runs
//! on one device queueing.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftlab::runs::registry::{Registry, RunStatus};
use ftlab::runs::supervisor::{LaunchRequest, Supervisor, SupervisorEvent, SupervisorOptions};
use ftlab::train::events::TrainEvent;
use tokio::sync::mpsc;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftlab"))
}

struct Harness {
    _rt: tokio::runtime::Runtime,
    sup: Supervisor,
    rx: mpsc::UnboundedReceiver<SupervisorEvent>,
    seen: Vec<SupervisorEvent>,
}

impl Harness {
    fn new(runs_root: &Path, max_concurrent: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut opts = SupervisorOptions::new(exe(), runs_root);
        opts.max_concurrent_per_device = max_concurrent;
        opts.sample_every = Duration::from_millis(200);
        let sup = Supervisor::start(opts, rt.handle(), move |ev| {
            let _ = tx.send(ev);
        });
        Self {
            _rt: rt,
            sup,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the first event matching `pred`, keeping every event seen.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&SupervisorEvent) -> bool,
    ) -> SupervisorEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; saw: {:#?}",
                self.seen
                    .iter()
                    .filter(|e| !matches!(e, SupervisorEvent::Memory { .. }))
                    .collect::<Vec<_>>()
            );
            let ev = self
                ._rt
                .block_on(async { tokio::time::timeout(left, self.rx.recv()).await });
            match ev {
                Ok(Some(ev)) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!("supervisor channel closed while waiting for {what}"),
                Err(_) => continue,
            }
        }
    }

    fn queued_id(&mut self) -> String {
        match self.wait_for("queued", Duration::from_secs(30), |e| {
            matches!(e, SupervisorEvent::Queued { .. })
        }) {
            SupervisorEvent::Queued { id, .. } => id,
            _ => unreachable!(),
        }
    }

    fn finished(&mut self, id: &str, timeout: Duration) -> RunStatus {
        let id = id.to_string();
        match self.wait_for(
            &format!("{id} to finish"),
            timeout,
            |e| matches!(e, SupervisorEvent::Finished { id: i, .. } if *i == id),
        ) {
            SupervisorEvent::Finished { status, .. } => status,
            _ => unreachable!(),
        }
    }
}

fn tiny_preset(root: &Path, extra: &str) -> PathBuf {
    let model = common::tiny_model(root);
    let data = common::small_sft(root, 16);
    common::preset(root, &model, &data, extra)
}

#[test]
fn a_run_streams_events_finishes_and_is_in_the_registry() {
    let root = tempfile::tempdir().unwrap();
    let preset = tiny_preset(root.path(), "eval_every = 4\n");
    let runs = root.path().join("runs");
    let mut h = Harness::new(&runs, 1);
    h.sup.launch(LaunchRequest {
        preset: preset.clone(),
        overrides: vec!["train.max_steps=6".into()],
    });
    let id = h.queued_id();
    h.wait_for("started", Duration::from_secs(30), |e| {
        matches!(e, SupervisorEvent::Started { .. })
    });
    let status = h.finished(&id, Duration::from_secs(300));
    assert_eq!(status, RunStatus::Done("completed".into()), "{:#?}", h.seen);

    let events: Vec<&TrainEvent> = h
        .seen
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Event { line, .. } => Some(&line.event),
            _ => None,
        })
        .collect();
    assert!(matches!(
        events.first(),
        Some(TrainEvent::Start { total_steps: 6, .. })
    ));
    let steps = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Step { .. }))
        .count();
    assert_eq!(steps, 6, "one step event per step");
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Eval { .. })));
    assert!(matches!(events.last(), Some(TrainEvent::Done { .. })));
    assert!(
        h.seen
            .iter()
            .any(|e| matches!(e, SupervisorEvent::Memory { point, .. } if point.bytes > 0)),
        "the supervisor samples the worker's memory"
    );

    // The registry (what a restarted dashboard reads) has the run, finished, with its curves.
    let reg = Registry::new(&runs);
    let all = reg.scan();
    assert_eq!(all.len(), 1);
    let rec = &all[0];
    assert_eq!(rec.id, id);
    assert_eq!(rec.status, RunStatus::Done("completed".into()));
    assert_eq!(rec.steps.len(), 6);
    assert_eq!(rec.current_step(), 6);
    assert!(rec.final_train_loss().is_some());
    assert!(!rec.evals.is_empty());
    assert!(!rec.memory.is_empty(), "memory.jsonl is kept with the run");
    assert!(rec.peak_memory().unwrap() > 1 << 20);
    assert!(rec.has_result(), "the worker wrote its final weights");
    assert_eq!(rec.config.as_ref().unwrap().train.max_steps, 6);
}

#[test]
fn a_killed_worker_marks_its_run_failed_and_the_supervisor_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let preset = tiny_preset(root.path(), "");
    let runs = root.path().join("runs");
    let mut h = Harness::new(&runs, 1);
    h.sup.launch(LaunchRequest {
        preset: preset.clone(),
        // auto_batch would relaunch it with a smaller micro-batch (tests/auto_batch.rs).
        overrides: vec![
            "train.max_steps=100000".into(),
            "train.save_every=0".into(),
            "train.auto_batch=false".into(),
        ],
    });
    let id = h.queued_id();
    let pid = match h.wait_for("started", Duration::from_secs(30), |e| {
        matches!(e, SupervisorEvent::Started { .. })
    }) {
        SupervisorEvent::Started { pid, .. } => pid,
        _ => unreachable!(),
    };
    h.wait_for("a step", Duration::from_secs(120), |e| {
        matches!(e, SupervisorEvent::Event { line, .. } if matches!(line.event, TrainEvent::Step { .. }))
    });
    // What an OOM kill looks like from outside: SIGKILL, no chance to say anything.
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = h.finished(&id, Duration::from_secs(30));
    match &status {
        RunStatus::Failed(reason) => assert!(reason.contains("SIGKILL"), "{reason}"),
        other => panic!("expected failed, got {other:?}"),
    }
    // The history says the same after a restart.
    let rec = Registry::new(&runs).get(&id).unwrap();
    assert!(
        matches!(&rec.status, RunStatus::Failed(r) if r.contains("SIGKILL")),
        "{:?}",
        rec.status
    );

    // The supervisor is alive: a bad config is its own failed run, with the worker's reason.
    h.sup.launch(LaunchRequest {
        preset,
        overrides: vec!["train.lr=-1".into()],
    });
    let bad = h.queued_id();
    match h.finished(&bad, Duration::from_secs(60)) {
        RunStatus::Failed(reason) => {
            assert!(
                reason.contains("train.lr must be a positive number"),
                "{reason}"
            )
        }
        other => panic!("expected failed, got {other:?}"),
    }
}

#[test]
fn runs_on_one_device_queue_and_a_queued_run_can_be_cancelled() {
    let root = tempfile::tempdir().unwrap();
    let preset = tiny_preset(root.path(), "");
    let runs = root.path().join("runs");
    let mut h = Harness::new(&runs, 1);
    let req = LaunchRequest {
        preset,
        overrides: vec!["train.max_steps=3".into()],
    };
    h.sup.launch(req.clone());
    let first = h.queued_id();
    h.sup.launch(req.clone());
    let second = h.queued_id();
    h.sup.launch(req);
    let third = h.queued_id();
    h.sup.stop(&third);
    assert_eq!(
        h.finished(&third, Duration::from_secs(10)),
        RunStatus::Stopped
    );
    assert_eq!(
        h.finished(&first, Duration::from_secs(300)),
        RunStatus::Done("completed".into())
    );
    assert_eq!(
        h.finished(&second, Duration::from_secs(300)),
        RunStatus::Done("completed".into())
    );
    // The second started only after the first finished.
    let pos = |pred: &dyn Fn(&SupervisorEvent) -> bool| h.seen.iter().position(pred).unwrap();
    let first_done = pos(&|e| matches!(e, SupervisorEvent::Finished { id, .. } if *id == first));
    let second_start = pos(&|e| matches!(e, SupervisorEvent::Started { id, .. } if *id == second));
    assert!(second_start > first_done, "runs on one device queue");
    assert!(!h
        .seen
        .iter()
        .any(|e| matches!(e, SupervisorEvent::Started { id, .. } if *id == third)));
}

#[test]
fn stopping_a_run_saves_it_and_marks_it_stopped() {
    let root = tempfile::tempdir().unwrap();
    let preset = tiny_preset(root.path(), "");
    let runs = root.path().join("runs");
    let mut h = Harness::new(&runs, 1);
    h.sup.launch(LaunchRequest {
        preset,
        overrides: vec!["train.max_steps=100000".into(), "train.save_every=0".into()],
    });
    let id = h.queued_id();
    h.wait_for("a step", Duration::from_secs(120), |e| {
        matches!(e, SupervisorEvent::Event { line, .. } if matches!(line.event, TrainEvent::Step { .. }))
    });
    h.sup.stop(&id);
    assert_eq!(h.finished(&id, Duration::from_secs(60)), RunStatus::Stopped);
    assert!(h.seen.iter().any(|e| matches!(
        e,
        SupervisorEvent::Event { line, .. }
            if matches!(&line.event, TrainEvent::Done { reason, .. } if reason == "stopped")
    )));
    let rec = Registry::new(&runs).get(&id).unwrap();
    assert_eq!(rec.status, RunStatus::Stopped);
    assert!(rec.has_result(), "a stopped run keeps its weights");
}

/// Writes the tiny model for `scripts/screenshots.sh` (not a test: run with --ignored and
/// FTLAB_TINY_MODEL_DIR set).
#[test]
#[ignore]
fn write_tiny_model_for_screenshots() {
    let Some(dir) = std::env::var_os("FTLAB_TINY_MODEL_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = common::tiny_model(&dir);
    let data = common::small_sft(&dir, 64);
    println!("{}\n{}", model.display(), data.display());
}

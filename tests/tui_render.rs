//! The dashboard drawn into ratatui's TestBackend, tab by tab and state by state (empty,
//! running, finished, failed). Assertions are on what matters — labels, values, the presence
//! of a chart — not on whole-screen snapshots.
mod common;
use common::render;
use common::repo;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ftlab::config::{RunConfig, TaskKind};
use ftlab::infer::chat_template::ChatMessage;
use ftlab::infer::search::Hit;
use ftlab::runs::registry::{MemoryKind, MemoryPoint, RunRecord, RunStatus};
use ftlab::runs::supervisor::SupervisorEvent;
use ftlab::train::events::{EventLine, TrainEvent, SCHEMA_VERSION};
use ftlab::tui::infer::{InferMode, Role, Turn};
use ftlab::tui::infer_worker::{InferEvent, InferJob, InferRequest};
use ftlab::tui::presets::{discover_presets, PresetSource};
use ftlab::tui::{Action, App, GpuState, Tab};

fn no_gpu() -> GpuState {
    GpuState::Unavailable("NVIDIA driver library not found".into())
}

fn app_with_presets() -> App {
    let presets = discover_presets(&[(repo("presets"), PresetSource::Project)]);
    App::new(no_gpu(), PathBuf::from("/nonexistent/runs"), presets)
}

fn empty_app() -> App {
    App::new(no_gpu(), PathBuf::from("/nonexistent/runs"), Vec::new())
}

fn braille_cells(screen: &str) -> usize {
    screen
        .chars()
        .filter(|c| ('\u{2801}'..='\u{28FF}').contains(c))
        .count()
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn line(time: f64, event: TrainEvent) -> EventLine {
    EventLine {
        v: SCHEMA_VERSION,
        time,
        event,
    }
}

fn start(total: usize) -> TrainEvent {
    TrainEvent::Start {
        run: "r".into(),
        technique: "LoRA".into(),
        model: "smollm2".into(),
        total_steps: total,
        trainable_params: 2_442_240,
        total_params: 134_515_008,
        train_examples: 500,
        eval_examples: 32,
        predicted_peak_bytes: Some(900 << 20),
        resumed_from_step: 0,
        device: "cpu".into(),
        dtype: "f32".into(),
    }
}

fn step(s: usize, total: usize) -> TrainEvent {
    TrainEvent::Step {
        step: s,
        total_steps: total,
        epoch: 0.1,
        loss: 3.0 - 0.1 * s as f64,
        lr: 2e-4,
        grad_norm: 1.0,
        tokens: 1024,
        tokens_per_sec: 40.0 + s as f64,
        its: 0.04,
        elapsed_secs: 25.0 * s as f64,
        rss_bytes: Some((700 + 10 * s as u64) << 20),
        peak_rss_bytes: Some((720 + 10 * s as u64) << 20),
    }
}

/// A run at `steps` of `total` (running), with memory samples.
fn running_run(dir: &Path, steps: usize, total: usize) -> RunRecord {
    let mut r = RunRecord::new(dir);
    r.apply(&line(1000.0, start(total)));
    for s in 1..=steps {
        r.apply(&line(1000.0 + 25.0 * s as f64, step(s, total)));
        if s % 2 == 0 {
            r.apply(&line(
                1000.0 + 25.0 * s as f64,
                TrainEvent::Eval {
                    step: s,
                    loss: 3.1 - 0.1 * s as f64,
                    tokens: 5000,
                    metrics: Default::default(),
                    best: true,
                },
            ));
        }
    }
    for i in 0..20 {
        r.push_memory(MemoryPoint {
            secs: i as f64 * 5.0,
            bytes: (600 + 5 * i) << 20,
            kind: MemoryKind::Ram,
            peak: Some((610 + 5 * i) << 20),
            capacity: None,
            device_used: None,
        });
    }
    r.pid = Some(4242);
    r.status = RunStatus::Running;
    r
}

fn finished_run(dir: &Path, total: usize) -> RunRecord {
    let mut r = running_run(dir, total, total);
    r.apply(&line(
        5000.0,
        TrainEvent::Done {
            step: total,
            reason: "completed".into(),
            elapsed_secs: 25.0 * total as f64,
            final_train_loss: Some(3.0 - 0.1 * total as f64),
            best_eval_loss: Some(2.5),
            peak_rss_bytes: Some(880 << 20),
        },
    ));
    r.pid = None;
    r
}

fn failed_run(dir: &Path) -> RunRecord {
    let mut r = running_run(dir, 3, 10);
    r.pid = None;
    r.status = RunStatus::Failed("killed by SIGKILL (out of memory, or killed): step 3".into());
    r
}

// ---------------------------------------------------------------- Presets

#[test]
fn presets_tab_lists_presets_with_technique_model_and_fields() {
    let mut app = app_with_presets();
    let s = render(&mut app, 140, 40);
    for name in ["baseline", "grad-ckpt", "lora", "qlora"] {
        assert!(s.contains(name), "{name} missing:\n{s}");
    }
    assert!(
        s.contains("full fine-tuning"),
        "technique of the selected preset:\n{s}"
    );
    assert!(s.contains("smollm2"), "model:\n{s}");
    // The sentence-similarity presets say which track they are.
    for label in [
        "sentence similarity · full fine-tuning",
        "sentence similarity · LoRA",
    ] {
        assert!(s.contains(label), "{label}:\n{s}");
    }
    for field in [
        "batch size",
        "sequence length",
        "LoRA rank",
        "learning rate",
        "steps",
    ] {
        assert!(s.contains(field), "{field}:\n{s}");
    }
    assert!(s.contains("predicted peak"), "{s}");
    // The baseline has no LoRA: its rank is not editable.
    assert!(s.contains("— (not LoRA)"), "{s}");
    assert!(s.contains("no GPU: showing RAM"), "{s}");
}

#[test]
fn presets_tab_empty_says_where_it_looked() {
    let mut app = empty_app();
    let s = render(&mut app, 100, 30);
    assert!(s.contains("no presets found"), "{s}");
    assert!(s.contains("./presets"), "{s}");
}

#[test]
fn editing_a_preset_field_becomes_a_set_override_and_launches_with_it() {
    let mut app = app_with_presets();
    // Select qlora (6th: baseline, gemma3-ja-lora, gemma3-ja-qlora, grad-ckpt, lora, qlora),
    // open the fields, go to "steps" and type 5.
    for _ in 0..5 {
        app.on_key(code(KeyCode::Down));
    }
    app.on_key(key('e'));
    for _ in 0..4 {
        app.on_key(code(KeyCode::Down));
    }
    app.on_key(code(KeyCode::Enter));
    for _ in 0..4 {
        app.on_key(code(KeyCode::Backspace));
    }
    app.on_key(key('5'));
    app.on_key(code(KeyCode::Enter));
    let s = render(&mut app, 140, 40);
    assert!(s.contains("QLoRA"), "{s}");
    assert!(s.contains("--set train.max_steps=5"), "{s}");
    // An invalid value is refused with the config's own message and the old value kept.
    app.on_key(code(KeyCode::Up)); // learning rate
    app.on_key(code(KeyCode::Enter));
    for _ in 0..10 {
        app.on_key(code(KeyCode::Backspace));
    }
    app.on_key(key('-'));
    app.on_key(key('1'));
    app.on_key(code(KeyCode::Enter));
    assert!(
        app.message.as_deref().unwrap_or("").contains("train.lr"),
        "{:?}",
        app.message
    );
    let actions = app.on_key(key('l'));
    match actions.as_slice() {
        [Action::Launch(req)] => {
            assert_eq!(req.preset.file_name().unwrap(), "qlora.toml");
            assert_eq!(req.overrides, vec!["train.max_steps=5".to_string()]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn several_marked_presets_launch_together() {
    let mut app = app_with_presets();
    app.on_key(key(' '));
    app.on_key(code(KeyCode::Down));
    app.on_key(code(KeyCode::Down));
    app.on_key(key(' '));
    let s = render(&mut app, 140, 40);
    assert_eq!(s.matches("[x]").count(), 2, "{s}");
    let actions = app.on_key(code(KeyCode::Enter));
    assert_eq!(actions.len(), 2);
    assert!(actions.iter().all(|a| matches!(a, Action::Launch(_))));
}

// ---------------------------------------------------------------- Runs

#[test]
fn runs_tab_empty_points_to_presets() {
    let mut app = empty_app();
    app.tab = Tab::Runs;
    let s = render(&mut app, 120, 36);
    assert!(s.contains("no runs yet"), "{s}");
    assert!(s.contains("Presets tab"), "{s}");
}

#[test]
fn runs_tab_running_shows_progress_eta_and_four_charts() {
    let mut app = empty_app();
    app.runs
        .upsert(running_run(Path::new("/r/20260101-100000-lora"), 4, 10));
    app.tab = Tab::Runs;
    let s = render(&mut app, 140, 42);
    assert!(s.contains("20260101-100000-lora"), "{s}");
    assert!(s.contains("running"), "{s}");
    assert!(s.contains("pid 4242"), "{s}");
    assert!(s.contains("step 4/10"), "{s}");
    assert!(s.contains("40%"), "{s}");
    assert!(s.contains("ETA 2m 30s"), "6 steps left at 25 s/step:\n{s}");
    for title in ["Loss", "Tokens/s", "Iterations/s", "Memory"] {
        assert!(s.contains(title), "{title}:\n{s}");
    }
    assert!(
        s.contains("no GPU: showing RAM"),
        "memory panel labels its source:\n{s}"
    );
    assert!(s.contains("process RAM (RSS)"), "{s}");
    assert!(
        s.contains("predicted 900.0 MiB"),
        "predicted peak line in the legend:\n{s}"
    );
    assert!(
        s.contains("train") && s.contains("eval"),
        "loss legend:\n{s}"
    );
    assert!(s.contains("2.44M trainable"), "{s}");
    assert!(braille_cells(&s) > 50, "charts are drawn:\n{s}");
    assert!(s.contains("(1 live)"), "the tab bar counts live runs:\n{s}");
}

#[test]
fn runs_tab_with_a_gpu_labels_nvml_memory_and_device_total() {
    let mut app = App::new(
        GpuState::Available("NVIDIA H100".into()),
        PathBuf::from("/x"),
        Vec::new(),
    );
    let mut r = running_run(Path::new("/r/20260101-100000-qlora"), 4, 10);
    r.memory = (0..10)
        .map(|i| MemoryPoint {
            secs: i as f64,
            bytes: (1 + i) << 30,
            kind: MemoryKind::GpuProcess,
            peak: None,
            capacity: Some(80 << 30),
            device_used: Some((5 + i) << 30),
        })
        .collect();
    let start = r.start.as_mut().unwrap();
    (start.device, start.dtype) = ("cuda:0".into(), "bf16".into());
    app.runs.upsert(r);
    app.tab = Tab::Runs;
    let s = render(&mut app, 140, 42);
    assert!(s.contains("GPU: NVIDIA H100"), "{s}");
    assert!(
        s.contains("cuda:0 · bf16"),
        "where the run computes and in what:\n{s}"
    );
    assert!(s.contains("GPU memory, this run (NVML)"), "{s}");
    assert!(s.contains("of 80.00 GiB"), "the device total:\n{s}");
    assert!(
        s.contains("GPU used 14.00 GiB"),
        "the device's used memory:\n{s}"
    );
    assert!(s.contains("capacity 80.00 GiB"), "the capacity line:\n{s}");
    assert!(!s.contains("no GPU"), "{s}");
}

#[test]
fn runs_tab_finished_and_failed() {
    let mut app = empty_app();
    app.runs
        .upsert(finished_run(Path::new("/r/20260101-090000-baseline"), 10));
    app.runs
        .upsert(failed_run(Path::new("/r/20260101-100000-qlora")));
    app.tab = Tab::Runs;
    app.runs.selected = Some("20260101-100000-qlora".into());
    let s = render(&mut app, 140, 42);
    assert!(s.contains("failed: killed by SIGKILL"), "{s}");
    assert!(s.contains("done"), "the finished run in the list:\n{s}");
    app.on_key(code(KeyCode::Down));
    let s = render(&mut app, 140, 42);
    assert!(s.contains("step 10/10"), "{s}");
    assert!(s.contains("100%"), "{s}");
    assert!(!s.contains("ETA"), "no ETA once done:\n{s}");
    assert!(s.contains("done"), "{s}");
    assert!(braille_cells(&s) > 50, "{s}");
}

#[test]
fn runs_tab_queued_and_supervisor_events_drive_the_state() {
    let mut app = empty_app();
    app.tab = Tab::Runs;
    let dir = PathBuf::from("/r/20260101-110000-lora");
    app.on_supervisor(SupervisorEvent::Queued {
        id: "20260101-110000-lora".into(),
        dir: dir.clone(),
        device: "cpu".into(),
        config: None,
    });
    let s = render(&mut app, 120, 36);
    assert!(s.contains("queued"), "{s}");
    assert!(s.contains("waiting for its device"), "{s}");
    app.on_supervisor(SupervisorEvent::Started {
        id: "20260101-110000-lora".into(),
        pid: 77,
    });
    app.on_supervisor(SupervisorEvent::Event {
        id: "20260101-110000-lora".into(),
        line: line(1.0, start(5)),
    });
    app.on_supervisor(SupervisorEvent::Event {
        id: "20260101-110000-lora".into(),
        line: line(2.0, step(1, 5)),
    });
    let s = render(&mut app, 120, 36);
    assert!(s.contains("running") && s.contains("step 1/5"), "{s}");
    // Stop goes to the supervisor.
    assert_eq!(
        app.on_key(key('s')),
        vec![Action::Stop("20260101-110000-lora".into())]
    );
    app.on_supervisor(SupervisorEvent::Finished {
        id: "20260101-110000-lora".into(),
        status: RunStatus::Stopped,
    });
    let s = render(&mut app, 120, 36);
    assert!(s.contains("stopped"), "{s}");
    assert_eq!(app.live_runs(), 0);
}

// ---------------------------------------------------------------- Compare

#[test]
fn compare_tab_empty_explains_how_to_choose() {
    let mut app = empty_app();
    app.tab = Tab::Compare;
    let s = render(&mut app, 120, 36);
    assert!(s.contains("no runs chosen"), "{s}");
}

#[test]
fn compare_tab_table_and_overlaid_chart() {
    let mut app = empty_app();
    app.runs
        .upsert(finished_run(Path::new("/r/20260101-090000-baseline"), 10));
    let mut lora = finished_run(Path::new("/r/20260101-100000-lora"), 8);
    if let Some(s) = lora.start.as_mut() {
        s.technique = "QLoRA".into();
    }
    app.runs.upsert(lora);
    app.runs
        .upsert(failed_run(Path::new("/r/20260101-110000-x")));
    app.tab = Tab::Compare;
    app.on_key(code(KeyCode::Down)); // skip the failed run (newest first)
    app.on_key(key(' '));
    app.on_key(code(KeyCode::Down));
    app.on_key(key(' '));
    assert_eq!(app.compare.chosen_runs(&app.runs.records).len(), 2);
    let s = render(&mut app, 150, 40);
    for h in [
        "technique",
        "trainable",
        "peak mem",
        "tok/s",
        "train loss",
        "eval loss",
        "wall time",
    ] {
        assert!(s.contains(h), "{h}:\n{s}");
    }
    assert!(s.contains("QLoRA") && s.contains("LoRA"), "{s}");
    assert!(s.contains("2.44M"), "{s}");
    assert!(s.contains("880.0 MiB"), "peak memory of a run:\n{s}");
    assert!(
        s.contains("2.0000"),
        "final train loss of the 10-step run:\n{s}"
    );
    assert!(s.contains("4m 10s"), "wall time of the 10-step run:\n{s}");
    assert!(braille_cells(&s) > 50, "overlay chart:\n{s}");
    assert!(s.contains("train loss"), "{s}");
    // Switch the overlaid metric to memory.
    app.on_key(code(KeyCode::Right));
    app.on_key(code(KeyCode::Right));
    app.on_key(code(KeyCode::Right));
    let s = render(&mut app, 150, 40);
    assert!(s.contains("seconds"), "memory is over time:\n{s}");
    assert!(braille_cells(&s) > 20, "{s}");
}

// ---------------------------------------------------------------- Inference

#[test]
fn inference_tab_empty_offers_the_base_model_and_sampling() {
    let mut app = app_with_presets();
    app.tab = Tab::Infer;
    let s = render(&mut app, 120, 36);
    assert!(s.contains("base smollm2"), "{s}");
    assert!(s.contains("nothing asked yet"), "{s}");
    for f in ["temperature", "top-p", "top-k", "max new tokens"] {
        assert!(s.contains(f), "{f}:\n{s}");
    }
}

#[test]
fn inference_tab_streams_an_answer_and_keeps_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("20260101-090000-lora");
    std::fs::create_dir_all(dir.join("adapter")).unwrap();
    let mut app = app_with_presets();
    app.runs.upsert(finished_run(&dir, 4));
    app.tab = Tab::Infer;
    let s = render(&mut app, 120, 36);
    assert!(
        s.contains("run 20260101-090000-lora"),
        "a finished run is a target:\n{s}"
    );
    // Pick the run, type, send.
    let targets = app.targets().language_models();
    let i = targets.iter().position(|t| t.adapter.is_some()).unwrap();
    app.infer.selected = i;
    app.on_key(code(KeyCode::Enter));
    for c in "What is LoRA?".chars() {
        app.on_key(key(c));
    }
    let actions = app.on_key(code(KeyCode::Enter));
    let job = match actions.as_slice() {
        [Action::Generate(job)] => (**job).clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(job.target.adapter.as_deref(), Some(dir.as_path()));
    assert_eq!(chat_messages(&job).last().unwrap().content, "What is LoRA?");
    for piece in ["Low", "-rank", " adaptation"] {
        app.on_infer(InferEvent::Token {
            job: job.id,
            text: piece.into(),
        });
    }
    let s = render(&mut app, 120, 36);
    assert!(s.contains("What is LoRA?"), "{s}");
    assert!(
        s.contains("Low-rank adaptation"),
        "streamed text so far:\n{s}"
    );
    assert!(s.contains("streaming") && s.contains("3 tokens"), "{s}");
    app.on_infer(InferEvent::Done {
        job: job.id,
        generated: 3,
        tokens_per_sec: Some(9.5),
        stopped: true,
        cancelled: false,
    });
    let s = render(&mut app, 120, 36);
    assert!(s.contains("9.5 tokens/s"), "{s}");
    assert!(!s.contains("streaming"), "{s}");
    let h = &app.infer.histories[&job.target.key];
    assert_eq!(
        h,
        &vec![
            Turn {
                role: Role::User,
                text: "What is LoRA?".into()
            },
            Turn {
                role: Role::Assistant,
                text: "Low-rank adaptation".into()
            }
        ]
    );
    // A second question carries the conversation.
    for c in "More?".chars() {
        app.on_key(key(c));
    }
    match app.on_key(code(KeyCode::Enter)).as_slice() {
        [Action::Generate(job)] => assert_eq!(chat_messages(job).len(), 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_prompt_cursor_moves_and_edits_at_its_place_in_japanese_too() {
    let mut app = app_with_presets();
    app.tab = Tab::Infer;
    app.on_key(code(KeyCode::Enter));
    for c in "東京の天気".chars() {
        app.on_key(key(c));
    }
    // Back over 天気, type は between の and 天; Delete removes 天, Backspace は again
    // then retypes it; Home/End jump to either end.
    for k in [KeyCode::Left, KeyCode::Left] {
        app.on_key(code(k));
    }
    app.on_key(key('は'));
    assert_eq!(app.infer.input.text(), "東京のは天気");
    // A wide character fills two cells; the test backend writes the second as a space.
    let s = render(&mut app, 120, 36).replace(' ', "");
    assert!(
        s.contains("東京のは▏天気"),
        "the cursor is drawn where it is:\n{s}"
    );
    app.on_key(code(KeyCode::Delete));
    assert_eq!(app.infer.input.text(), "東京のは気");
    app.on_key(code(KeyCode::Home));
    app.on_key(key('?'));
    app.on_key(code(KeyCode::End));
    app.on_key(code(KeyCode::Backspace));
    app.on_key(code(KeyCode::Right));
    app.on_key(key('は'));
    assert_eq!(app.infer.input.text(), "?東京のはは");
    // ? q and digits typed into the prompt are text, wherever the cursor is.
    assert_eq!(app.tab, Tab::Infer);
    assert!(!app.show_help);
    match app.on_key(code(KeyCode::Enter)).as_slice() {
        [Action::Generate(job)] => {
            assert_eq!(chat_messages(job).last().unwrap().content, "?東京のはは")
        }
        other => panic!("{other:?}"),
    }
}

fn chat_messages(job: &InferJob) -> &[ChatMessage] {
    match &job.request {
        InferRequest::Chat { messages } => messages,
        other => panic!("not a chat job: {other:?}"),
    }
}

fn sts_run(dir: &Path) -> RunRecord {
    let mut r = finished_run(dir, 4);
    let cfg = RunConfig::load(&repo("presets").join("sts-baseline.toml"), &[]).unwrap();
    assert_eq!(cfg.task, TaskKind::Sts);
    r.config = Some(cfg);
    r.apply(&line(
        6000.0,
        TrainEvent::Eval {
            step: 4,
            loss: 0.045,
            tokens: 900,
            metrics: [("pearson".into(), 0.72), ("spearman".into(), 0.7449)].into(),
            best: true,
        },
    ));
    std::fs::create_dir_all(dir.join("best")).unwrap();
    r
}

fn hit(rank: usize, source: &str, score: f32, text: &str) -> Hit {
    Hit {
        rank,
        id: rank - 1,
        source: source.into(),
        score,
        text: text.into(),
    }
}

#[test]
fn inference_search_and_rag_modes_retrieve_then_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let sts_dir = tmp.path().join("20260101-100000-sts-baseline");
    let lm_dir = tmp.path().join("20260101-090000-lora");
    std::fs::create_dir_all(lm_dir.join("adapter")).unwrap();
    let mut app = app_with_presets();
    app.runs.upsert(finished_run(&lm_dir, 4));
    app.runs.upsert(sts_run(&sts_dir));
    // The STS run is an encoder, not a chat model.
    assert!(app
        .targets()
        .language_models()
        .iter()
        .all(|t| !t.key.contains("sts")));
    // `i` on the STS run opens the Inference tab in search mode with it selected.
    app.tab = Tab::Runs;
    app.runs.selected = Some("20260101-100000-sts-baseline".into());
    let s = render(&mut app, 140, 40);
    assert!(
        s.contains("spearman 0.745"),
        "the STS run's headline metric:\n{s}"
    );
    app.compare
        .chosen
        .insert("20260101-100000-sts-baseline".into());
    app.tab = Tab::Compare;
    let s = render(&mut app, 160, 40);
    assert!(
        s.contains("eval metric") && s.contains("spearman 0.745"),
        "{s}"
    );
    app.tab = Tab::Runs;
    app.on_key(key('i'));
    assert_eq!(app.tab, Tab::Infer);
    assert_eq!(app.infer.mode, InferMode::Search);
    let s = render(&mut app, 140, 40);
    assert!(s.contains("search mode"), "{s}");
    assert!(s.contains("base minilm"), "{s}");
    assert!(s.contains("run 20260101-100000-sts-baseline"), "{s}");
    // A query becomes a search job over the documents folder with the STS run's encoder.
    app.on_key(code(KeyCode::Enter));
    for c in "When does the library close?".chars() {
        app.on_key(key(c));
    }
    let job = match app.on_key(code(KeyCode::Enter)).as_slice() {
        [Action::Generate(job)] => (**job).clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(job.target.model, sts_dir.display().to_string());
    match &job.request {
        InferRequest::Search { query, docs, k } => {
            assert_eq!(query, "When does the library close?");
            assert_eq!(docs, Path::new("data/docs"));
            assert_eq!(*k, 3);
        }
        other => panic!("{other:?}"),
    }
    app.on_infer(InferEvent::Hits {
        job: job.id,
        hits: vec![
            hit(1, "library.md", 0.83, "The library closes at 8 p.m."),
            hit(2, "museum.md", 0.41, "The museum opens at ten."),
        ],
        searched: 40,
    });
    app.on_infer(InferEvent::Done {
        job: job.id,
        generated: 0,
        tokens_per_sec: None,
        stopped: true,
        cancelled: false,
    });
    let s = render(&mut app, 140, 40);
    assert!(s.contains("nearest chunks"), "{s}");
    assert!(s.contains("[1] library.md · 0.830"), "{s}");
    assert!(s.contains("The library closes at 8 p.m."), "{s}");
    assert!(s.contains("searched in"), "{s}");
    // RAG: the LM list again, retrieval with the encoder chosen in search mode.
    app.on_key(code(KeyCode::Esc));
    app.on_key(key('m'));
    assert_eq!(app.infer.mode, InferMode::Rag);
    let lm = app
        .targets()
        .language_models()
        .iter()
        .position(|t| t.adapter.is_some())
        .unwrap();
    app.infer.selected = lm;
    app.on_key(code(KeyCode::Enter));
    for c in "When does it close?".chars() {
        app.on_key(key(c));
    }
    let job = match app.on_key(code(KeyCode::Enter)).as_slice() {
        [Action::Generate(job)] => (**job).clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(job.target.adapter.as_deref(), Some(lm_dir.as_path()));
    match &job.request {
        InferRequest::Rag {
            question, encoder, ..
        } => {
            assert_eq!(question, "When does it close?");
            assert_eq!(encoder, &sts_dir.display().to_string());
        }
        other => panic!("{other:?}"),
    }
    app.on_infer(InferEvent::Hits {
        job: job.id,
        hits: vec![hit(1, "library.md", 0.79, "The library closes at 8 p.m.")],
        searched: 40,
    });
    for piece in ["At ", "8 p.m."] {
        app.on_infer(InferEvent::Token {
            job: job.id,
            text: piece.into(),
        });
    }
    let s = render(&mut app, 140, 40);
    assert!(s.contains("RAG mode"), "{s}");
    assert!(s.contains("retrieved context"), "{s}");
    assert!(s.contains("At 8 p.m."), "{s}");
    let h = app.infer.histories.values().find(|h| h.len() == 3).unwrap();
    assert_eq!(
        h.iter().map(|t| t.role).collect::<Vec<_>>(),
        [Role::User, Role::Context, Role::Assistant]
    );
    app.on_infer(InferEvent::Done {
        job: job.id,
        generated: 3,
        tokens_per_sec: Some(7.0),
        stopped: true,
        cancelled: false,
    });
    // The chat history of the same model is separate.
    app.on_key(code(KeyCode::Esc));
    app.on_key(key('m'));
    assert_eq!(app.infer.mode, InferMode::Chat);
    let s = render(&mut app, 140, 40);
    assert!(!s.contains("At 8 p.m."), "{s}");
}

#[test]
fn inference_settings_reject_a_missing_documents_folder() {
    let mut app = app_with_presets();
    app.tab = Tab::Infer;
    app.on_key(key('s'));
    for _ in 0..7 {
        app.on_key(code(KeyCode::Down));
    }
    app.on_key(code(KeyCode::Enter));
    for _ in 0.."data/docs".len() {
        app.on_key(code(KeyCode::Backspace));
    }
    for c in "/no/such/folder".chars() {
        app.on_key(key(c));
    }
    app.on_key(code(KeyCode::Enter));
    assert_eq!(app.infer.docs, "data/docs");
    assert!(
        app.infer.status.contains("is not a folder"),
        "{}",
        app.infer.status
    );
}

#[test]
fn a_cancelled_answer_shows_its_real_speed_or_none() {
    let mut app = app_with_presets();
    app.tab = Tab::Infer;
    app.on_key(code(KeyCode::Enter));
    let ask = |app: &mut App| {
        app.on_key(key('h'));
        match app.on_key(code(KeyCode::Enter)).as_slice() {
            [Action::Generate(job)] => job.id,
            other => panic!("{other:?}"),
        }
    };
    let job = ask(&mut app);
    app.on_infer(InferEvent::Done {
        job,
        generated: 3,
        tokens_per_sec: Some(12.5),
        stopped: false,
        cancelled: true,
    });
    let s = render(&mut app, 120, 36);
    assert!(s.contains("3 tokens · 12.5 tokens/s · cancelled"), "{s}");
    let job = ask(&mut app);
    app.on_infer(InferEvent::Done {
        job,
        generated: 0,
        tokens_per_sec: None,
        stopped: false,
        cancelled: true,
    });
    let s = render(&mut app, 120, 36);
    assert!(s.contains("0 tokens · cancelled"), "{s}");
    assert!(!s.contains("tokens/s"), "no speed without a token:\n{s}");
}

#[test]
fn inference_failure_is_shown() {
    let mut app = app_with_presets();
    app.tab = Tab::Infer;
    app.on_key(code(KeyCode::Enter));
    app.on_key(key('h'));
    let id = match app.on_key(code(KeyCode::Enter)).as_slice() {
        [Action::Generate(job)] => job.id,
        other => panic!("{other:?}"),
    };
    app.on_infer(InferEvent::Failed {
        job: id,
        error: "model `smollm2` is not in the cache".into(),
    });
    let s = render(&mut app, 120, 36);
    assert!(
        s.contains("error: model `smollm2` is not in the cache"),
        "{s}"
    );
}

// ---------------------------------------------------------------- Frame

#[test]
fn help_overlay_tabs_and_quit() {
    let mut app = empty_app();
    app.on_key(key('?'));
    let s = render(&mut app, 120, 36);
    assert!(s.contains("keys"), "{s}");
    assert!(s.contains("Presets · Runs · Compare · Inference"), "{s}");
    app.on_key(code(KeyCode::Esc));
    assert!(!app.show_help);
    app.on_key(key('3'));
    assert_eq!(app.tab, Tab::Compare);
    app.on_key(code(KeyCode::Tab));
    assert_eq!(app.tab, Tab::Infer);
    app.on_key(code(KeyCode::BackTab));
    assert_eq!(app.tab, Tab::Compare);
    // No live run: q quits at once.
    assert_eq!(app.on_key(key('q')), vec![Action::Quit]);
}

#[test]
fn an_error_in_the_footer_goes_with_a_tab_change_or_the_next_action() {
    let mut app = app_with_presets();
    let failed = |app: &mut App| {
        app.on_supervisor(SupervisorEvent::LaunchFailed {
            preset: PathBuf::from("presets/broken.toml"),
            error: "lora.r: expected an integer".into(),
        })
    };
    failed(&mut app);
    let s = render(&mut app, 140, 36);
    assert!(s.contains("cannot launch presets/broken.toml"), "{s}");
    // Another tab: the error was about the launch, not about this tab.
    app.on_key(key('4'));
    let s = render(&mut app, 140, 36);
    assert!(
        !s.contains("cannot launch"),
        "stale error on the Inference tab:\n{s}"
    );
    // A click on a tab does the same; clicking the tab already shown keeps the message.
    failed(&mut app);
    render(&mut app, 140, 36);
    let (y, x0, _, _) = *app.tab_hitboxes.iter().find(|h| h.3 == Tab::Infer).unwrap();
    let click = |x: u16| crossterm::event::MouseEvent {
        kind: crossterm::event::MouseEventKind::Down(crossterm::event::MouseButton::Left),
        column: x,
        row: y,
        modifiers: KeyModifiers::NONE,
    };
    app.on_mouse(click(x0));
    assert!(app.message.is_some(), "still on the same tab");
    // Keys that do nothing yet (entering the prompt, typing) keep it; sending the prompt
    // is the next action, and the error goes.
    app.on_key(code(KeyCode::Enter));
    app.on_key(key('h'));
    assert!(app.message.is_some());
    let job = match app.on_key(code(KeyCode::Enter)).as_slice() {
        [Action::Generate(job)] => job.id,
        other => panic!("{other:?}"),
    };
    let s = render(&mut app, 140, 36);
    assert!(!s.contains("cannot launch"), "{s}");
    // An error is replaced by the feedback of the next action that has some.
    app.on_infer(InferEvent::Failed {
        job,
        error: "no model".into(),
    });
    app.on_key(code(KeyCode::Esc));
    app.on_key(key('1'));
    failed(&mut app);
    app.on_key(key('l'));
    let m = app.message.clone().unwrap_or_default();
    assert!(m.starts_with("launched 1 run"), "{m}");
}

#[test]
fn quitting_with_live_runs_asks_first() {
    let mut app = empty_app();
    app.runs
        .upsert(running_run(Path::new("/r/20260101-100000-lora"), 2, 10));
    assert!(app.on_key(key('q')).is_empty());
    assert!(app.confirm_quit);
    let s = render(&mut app, 120, 36);
    assert!(s.contains("1 run is still live"), "{s}");
    // Anything but y stays.
    assert!(app.on_key(key('n')).is_empty());
    assert!(!app.should_quit);
    app.on_key(key('q'));
    assert_eq!(app.on_key(key('y')), vec![Action::StopAll, Action::Quit]);
    assert!(app.should_quit);
}

#[test]
fn a_small_terminal_says_so_and_every_size_draws() {
    let mut app = app_with_presets();
    app.runs
        .upsert(running_run(Path::new("/r/20260101-100000-lora"), 4, 10));
    let s = render(&mut app, 50, 12);
    assert!(s.contains("terminal too small"), "{s}");
    assert!(s.contains("50×12"), "{s}");
    // Resizing never breaks the layout: every tab draws at many sizes without panicking.
    for tab in Tab::ALL {
        app.tab = tab;
        for (w, h) in [
            (70, 20),
            (71, 21),
            (80, 24),
            (100, 30),
            (160, 50),
            (250, 70),
        ] {
            let s = render(&mut app, w, h);
            assert!(s.contains(tab.title()), "{tab:?} at {w}×{h}:\n{s}");
        }
    }
}

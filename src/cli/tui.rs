//! `ftlab` with no arguments: the dashboard's event loop.
//!
//! Three sources feed one channel: the terminal (a thread blocked on crossterm's `read`),
//! the supervisor (tokio tasks watching the training workers) and the inference thread.
//! The loop applies each message to the `App` and redraws — at most 10 times a second, and
//! only when something changed (plus once a second while runs are live, for elapsed/ETA).
//! Idle, it sleeps on the channel: the dashboard costs next to no CPU while runs train.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{self, Event};

use crate::locations::Locations;
use crate::runs::supervisor::{Supervisor, SupervisorEvent, SupervisorOptions};
use crate::telemetry::GpuProbe;
use crate::tui::infer_worker::{self, InferEvent};
use crate::tui::presets::all_presets;
use crate::tui::{draw, Action, App, GpuState};

/// Shortest time between two frames.
const FRAME: Duration = Duration::from_millis(100);
/// Redraw period while something changes with time alone (live runs, streaming).
const TICK: Duration = Duration::from_millis(1000);
/// How long quitting waits for stopped workers to save their checkpoint.
const STOP_GRACE: Duration = Duration::from_secs(20);

enum Msg {
    Term(Event),
    Sup(SupervisorEvent),
    Infer(InferEvent),
    /// A model's licence notice (Gemma's terms), shown in the footer.
    Notice(String),
}

/// The dashboard; its Inference tab loads models on `device`.
pub fn run(device: crate::config::DeviceChoice) -> Result<()> {
    device.check_available()?;
    // Presets of ./presets, the user's and the built-in ones; runs where `Locations` says.
    let paths = Locations::from_env();
    let (gpu_state, probe) = match GpuProbe::for_cuda_ordinal(0) {
        Ok(p) => (GpuState::Available(p.name().to_string()), Some(Arc::new(p))),
        Err(e) => (GpuState::Unavailable(e.reason.clone()), None),
    };
    let mut app = App::new(gpu_state, paths.runs_root.clone(), all_presets(&paths));
    if let Some(n) = std::env::var("FTLAB_MAX_CONCURRENT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        app.runs.max_concurrent = n.max(1);
    }
    app.runs.load_history();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ftlab-supervisor")
        .enable_all()
        .build()
        .context("starting the supervisor runtime")?;
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut opts = SupervisorOptions::new(
        std::env::current_exe().context("finding the ftlab executable for the workers")?,
        &paths.runs_root,
    );
    opts.max_concurrent_per_device = app.runs.max_concurrent;
    opts.gpu = probe.map(|p| p as Arc<dyn crate::telemetry::GpuMemory>);
    let sup = {
        let tx = tx.clone();
        Supervisor::start(opts, rt.handle(), move |ev| {
            let _ = tx.send(Msg::Sup(ev));
        })
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let jobs = {
        let tx = tx.clone();
        infer_worker::spawn(device, cancel.clone(), move |ev| {
            let _ = tx.send(Msg::Infer(ev));
        })
    };
    {
        // A model fetched from the dashboard shows its licence notice in the footer, not
        // on the terminal the dashboard draws on.
        let tx = tx.clone();
        crate::hub::licence::redirect_notices(move |n| {
            tx.send(Msg::Notice(n)).map_err(|e| match e.0 {
                Msg::Notice(n) => n,
                _ => String::new(),
            })
        });
    }
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("ftlab-input".into())
            .spawn(move || {
                while let Ok(ev) = event::read() {
                    if tx.send(Msg::Term(ev)).is_err() {
                        break;
                    }
                }
            })
            .context("starting the input thread")?;
    }
    drop(tx);

    let mut terminal = ratatui::init();
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
    let result = event_loop(&mut terminal, &mut app, &rx, &sup, &jobs, &cancel);
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
    ratatui::restore();
    // Runs still live were asked to stop (the quit confirmation did); give them time to save.
    let live: Vec<String> = app
        .runs
        .records
        .iter()
        .filter(|r| r.status.is_live())
        .map(|r| r.id.clone())
        .collect();
    if !live.is_empty() {
        eprintln!(
            "stopping {} run(s); each saves a checkpoint (up to {} s)…",
            live.len(),
            STOP_GRACE.as_secs()
        );
        if !app.should_quit {
            // Left through an error: the quit confirmation did not ask them to stop yet.
            sup.stop_all();
        }
        let deadline = Instant::now() + STOP_GRACE;
        while app.live_runs() > 0 && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Msg::Sup(ev)) => app.on_supervisor(ev),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    // Dropping the runtime kills any worker that did not stop in time (kill-on-drop).
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    rx: &mpsc::Receiver<Msg>,
    sup: &Supervisor,
    jobs: &mpsc::Sender<infer_worker::InferJob>,
    cancel: &AtomicBool,
) -> Result<()> {
    let mut dirty = true;
    let mut last_draw = Instant::now() - FRAME;
    let mut last_tick = Instant::now();
    loop {
        if dirty && last_draw.elapsed() >= FRAME {
            terminal.draw(|f| draw(f, app))?;
            last_draw = Instant::now();
            last_tick = last_draw;
            dirty = false;
        }
        let timeout = if dirty {
            FRAME.saturating_sub(last_draw.elapsed())
        } else if app.animating() {
            TICK.saturating_sub(last_tick.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        let first = match rx.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => {
                if app.animating() && last_tick.elapsed() >= TICK {
                    dirty = true;
                }
                None
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // Take everything waiting, so that a burst of events costs one frame.
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            dirty = true;
            let actions = match msg {
                Msg::Term(Event::Key(k)) => app.on_key(k),
                Msg::Term(Event::Mouse(m)) => {
                    app.on_mouse(m);
                    Vec::new()
                }
                Msg::Term(_) => Vec::new(), // resize and focus: just redraw
                Msg::Sup(ev) => {
                    app.on_supervisor(ev);
                    Vec::new()
                }
                Msg::Infer(ev) => {
                    app.on_infer(ev);
                    Vec::new()
                }
                Msg::Notice(n) => {
                    app.message = Some(n);
                    Vec::new()
                }
            };
            for a in actions {
                match a {
                    Action::Launch(req) => sup.launch(req),
                    Action::Stop(id) => sup.stop(&id),
                    Action::StopAll => sup.stop_all(),
                    Action::SetMaxConcurrent(n) => sup.set_max_concurrent(n),
                    Action::Generate(job) => {
                        if jobs.send(*job).is_err() {
                            app.infer.on_worker_gone();
                        }
                    }
                    Action::CancelGenerate => cancel.store(true, Ordering::SeqCst),
                    Action::Quit => {}
                }
            }
            if app.should_quit {
                return Ok(());
            }
        }
    }
}

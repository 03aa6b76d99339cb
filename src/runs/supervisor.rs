//! Runs training workers as child processes and watches them.
//!
//! Each run is `ftlab train PRESET --run-dir DIR --events` — the same code path as a
//! headless run — in its own process, so its memory is its own, and a crash or an OOM kill
//! takes down that run and nothing else. One tokio task per run reads the worker's JSON-lines
//! events from stdout, keeps the tail of its stderr (the failure reason when it dies without
//! saying why), and samples its memory: NVML per-process for runs on a GPU, `/proc/<pid>`
//! VmRSS/VmHWM otherwise. Runs on the same device queue (concurrent runs distort each other's
//! speed and memory) unless `max_concurrent_per_device` allows more.
//!
//! Everything is reported through a sink callback as [`SupervisorEvent`]s; the dashboard turns
//! them into state, the tests collect them.
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

pub use super::exit::failure_reason;
use super::exit::{self, WorkerEnd};
use super::layout::RunDir;
use super::registry::{
    MemoryKind, MemoryPoint, RunStatus, SupervisorRecord, MEMORY_FILE, SUPERVISOR_FILE, WORKER_LOG,
};
use crate::config::{DeviceChoice, RunConfig};
use crate::telemetry::{self, GpuMemory, MemorySample};
use crate::train::events::{EventLine, TrainEvent};

/// How many stderr lines are kept for a failure's reason.
const TAIL_LINES: usize = 40;

/// A run to start: a preset and its `--set` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRequest {
    pub preset: PathBuf,
    pub overrides: Vec<String>,
}

/// What the supervisor reports. `id` is the run directory's name.
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorEvent {
    /// The run directory exists and the run waits for its device.
    Queued {
        id: String,
        dir: PathBuf,
        device: String,
        config: Option<Box<RunConfig>>,
    },
    /// The worker process started.
    Started { id: String, pid: u32 },
    /// One event line from the worker.
    Event { id: String, line: EventLine },
    /// A memory reading of the worker.
    Memory { id: String, point: MemoryPoint },
    /// A line of the worker's stderr (progress text, warnings, the error).
    Log { id: String, line: String },
    /// The worker exited (or a queued run was cancelled): final status with the reason.
    Finished { id: String, status: RunStatus },
    /// The run could not even be set up (no run directory could be made).
    LaunchFailed { preset: PathBuf, error: String },
}

impl SupervisorEvent {
    pub fn run_id(&self) -> Option<&str> {
        match self {
            SupervisorEvent::Queued { id, .. }
            | SupervisorEvent::Started { id, .. }
            | SupervisorEvent::Event { id, .. }
            | SupervisorEvent::Memory { id, .. }
            | SupervisorEvent::Log { id, .. }
            | SupervisorEvent::Finished { id, .. } => Some(id),
            SupervisorEvent::LaunchFailed { .. } => None,
        }
    }
}

#[derive(Debug)]
enum Command {
    Launch(LaunchRequest),
    Stop(String),
    StopAll,
    SetMaxConcurrent(usize),
}

#[derive(Clone)]
pub struct SupervisorOptions {
    /// The ftlab binary that runs `train` (the dashboard's own executable).
    pub exe: PathBuf,
    /// Where run directories are made.
    pub runs_root: PathBuf,
    /// Working directory of the workers (relative data paths in presets resolve from it).
    pub workdir: Option<PathBuf>,
    /// How many runs may train at once on one device (1 = queue).
    pub max_concurrent_per_device: usize,
    /// Memory sampling period.
    pub sample_every: Duration,
    /// GPU memory readings (NVML) for runs on a GPU; `None` on machines without one.
    pub gpu: Option<Arc<dyn GpuMemory>>,
}

impl SupervisorOptions {
    pub fn new(exe: impl Into<PathBuf>, runs_root: impl Into<PathBuf>) -> Self {
        Self {
            exe: exe.into(),
            runs_root: runs_root.into(),
            workdir: None,
            max_concurrent_per_device: 1,
            sample_every: Duration::from_millis(1000),
            gpu: None,
        }
    }
}

pub type Sink = Arc<dyn Fn(SupervisorEvent) + Send + Sync>;

/// The handle the UI holds: commands go in, events come out through the sink.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Command>,
}

impl Supervisor {
    /// Starts the supervisor's task on `rt`. Dropping every handle stops accepting commands;
    /// workers still running are killed when the runtime shuts down (kill-on-drop).
    pub fn start(
        opts: SupervisorOptions,
        rt: &tokio::runtime::Handle,
        sink: impl Fn(SupervisorEvent) + Send + Sync + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: Sink = Arc::new(sink);
        rt.spawn(supervise(opts, rx, sink));
        Self { tx }
    }

    pub fn launch(&self, req: LaunchRequest) {
        let _ = self.tx.send(Command::Launch(req));
    }

    /// Stops a run: a queued one is cancelled; a running worker gets SIGINT (it saves a
    /// checkpoint and its result, then exits); a second stop kills it.
    pub fn stop(&self, id: &str) {
        let _ = self.tx.send(Command::Stop(id.to_string()));
    }

    /// Cancels every queued run and asks every worker to stop.
    pub fn stop_all(&self) {
        let _ = self.tx.send(Command::StopAll);
    }

    pub fn set_max_concurrent(&self, n: usize) {
        let _ = self.tx.send(Command::SetMaxConcurrent(n.max(1)));
    }
}

struct Pending {
    id: String,
    dir: PathBuf,
    device: String,
    req: LaunchRequest,
}

struct Live {
    device: String,
    stop: mpsc::UnboundedSender<()>,
}

async fn supervise(
    mut opts: SupervisorOptions,
    mut rx: mpsc::UnboundedReceiver<Command>,
    sink: Sink,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut live: HashMap<String, Live> = HashMap::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Launch(req)) => {
                    if let Some(p) = enqueue(&opts, req, &sink) {
                        queue.push_back(p);
                    }
                }
                Some(Command::Stop(id)) => {
                    if let Some(pos) = queue.iter().position(|p| p.id == id) {
                        if let Some(p) = queue.remove(pos) {
                            cancel(&p, &sink);
                        }
                    } else if let Some(l) = live.get(&id) {
                        let _ = l.stop.send(());
                    }
                }
                Some(Command::StopAll) => {
                    for p in queue.drain(..) {
                        cancel(&p, &sink);
                    }
                    for l in live.values() {
                        let _ = l.stop.send(());
                    }
                }
                Some(Command::SetMaxConcurrent(n)) => opts.max_concurrent_per_device = n,
            },
            Some(id) = done_rx.recv() => {
                live.remove(&id);
            }
        }
        // Start what fits, in launch order per device.
        let mut i = 0;
        while i < queue.len() {
            let busy = live
                .values()
                .filter(|l| l.device == queue[i].device)
                .count();
            if busy < opts.max_concurrent_per_device {
                let Some(p) = queue.remove(i) else { break };
                let (stop_tx, stop_rx) = mpsc::unbounded_channel();
                live.insert(
                    p.id.clone(),
                    Live {
                        device: p.device.clone(),
                        stop: stop_tx,
                    },
                );
                let done = done_tx.clone();
                let opts = opts.clone();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let id = p.id.clone();
                    run_worker(&opts, p, stop_rx, &sink).await;
                    let _ = done.send(id);
                });
            } else {
                i += 1;
            }
        }
    }
    // Commands closed: ask the workers to stop; kill-on-drop does the rest at shutdown.
    for l in live.values() {
        let _ = l.stop.send(());
    }
}

fn enqueue(opts: &SupervisorOptions, req: LaunchRequest, sink: &Sink) -> Option<Pending> {
    // The config is read here only to name the run and find its device; a bad config still
    // becomes a run, which the worker then fails with its own message.
    let cfg = RunConfig::load(&req.preset, &req.overrides).ok();
    let name = cfg.as_ref().map(|c| c.name.clone()).unwrap_or_else(|| {
        req.preset
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into())
    });
    let device = cfg
        .as_ref()
        .map(|c| c.model.device)
        .unwrap_or_default()
        .queue_key();
    let run = match RunDir::create_unique(&opts.runs_root, &name) {
        Ok(r) => r,
        Err(e) => {
            sink(SupervisorEvent::LaunchFailed {
                preset: req.preset.clone(),
                error: format!("{e:#}"),
            });
            return None;
        }
    };
    let record = SupervisorRecord {
        preset: Some(absolute(&req.preset)),
        overrides: req.overrides.clone(),
        device: device.clone(),
        outcome: None,
    };
    write_record(&run.root, &record);
    let id = run.id();
    sink(SupervisorEvent::Queued {
        id: id.clone(),
        dir: run.root.clone(),
        device: device.clone(),
        config: cfg.map(Box::new),
    });
    Some(Pending {
        id,
        dir: run.root,
        device,
        req,
    })
}

fn cancel(p: &Pending, sink: &Sink) {
    finish_record(&p.dir, &RunStatus::Stopped);
    sink(SupervisorEvent::Finished {
        id: p.id.clone(),
        status: RunStatus::Stopped,
    });
}

fn absolute(p: &Path) -> PathBuf {
    if crate::builtin::is_builtin(p) {
        // `builtin:presets/NAME.toml` names the same preset from every directory.
        return p.to_path_buf();
    }
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn write_record(dir: &Path, rec: &SupervisorRecord) {
    if let Ok(text) = serde_json::to_string_pretty(rec) {
        let _ = std::fs::write(dir.join(SUPERVISOR_FILE), text);
    }
}

fn finish_record(dir: &Path, status: &RunStatus) {
    let mut rec: SupervisorRecord = std::fs::read_to_string(dir.join(SUPERVISOR_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    rec.outcome = Some(status.clone());
    write_record(dir, &rec);
}

/// Sends a signal by name to a process (the `kill` utility keeps this crate free of libc).
fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The GPU readings to take for a run on `device` (`cuda:N`, or a queue key): `gpu` (the
/// dashboard's probe, of `cuda:0`) for `cuda:0`, a probe of its own for another GPU of
/// the machine; none for a run on the CPU, whose memory is its RAM even on a machine with
/// a GPU, nor where NVML is missing.
fn gpu_for_device(gpu: Option<&Arc<dyn GpuMemory>>, device: &str) -> Option<Arc<dyn GpuMemory>> {
    let gpu = gpu?;
    let ordinal = device.parse::<DeviceChoice>().ok()?.cuda_ordinal()?;
    if ordinal == 0 {
        return Some(gpu.clone());
    }
    let probe = crate::telemetry::GpuProbe::for_cuda_ordinal(ordinal).ok()?;
    Some(Arc::new(probe))
}

fn memory_point(sample: &MemorySample, secs: f64) -> Option<MemoryPoint> {
    match sample {
        MemorySample::Gpu {
            used,
            total,
            process,
        } => Some(MemoryPoint {
            secs,
            bytes: process.unwrap_or(*used),
            kind: if process.is_some() {
                MemoryKind::GpuProcess
            } else {
                MemoryKind::GpuDevice
            },
            peak: None,
            capacity: Some(*total),
            device_used: Some(*used),
        }),
        MemorySample::Ram { rss, peak } => Some(MemoryPoint {
            secs,
            bytes: *rss,
            kind: MemoryKind::Ram,
            peak: Some(*peak),
            capacity: None,
            device_used: None,
        }),
        MemorySample::Unavailable(_) => None,
    }
}

/// The worker's arguments for a new run.
fn fresh_args(p: &Pending) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        p.req.preset.display().to_string(),
        "--run-dir".into(),
        p.dir.display().to_string(),
        "--events".into(),
    ];
    for o in &p.req.overrides {
        args.push("--set".into());
        args.push(o.clone());
    }
    args
}

/// Runs the run's worker; a worker that dies for memory is relaunched from the last
/// checkpoint with half the micro-batch (`runs::exit`), recorded as a `batch` event, until
/// the run ends or the micro-batch cannot shrink.
async fn run_worker(
    opts: &SupervisorOptions,
    p: Pending,
    mut stop_rx: mpsc::UnboundedReceiver<()>,
    sink: &Sink,
) {
    let finish = |status: RunStatus| {
        finish_record(&p.dir, &status);
        sink(SupervisorEvent::Finished {
            id: p.id.clone(),
            status,
        });
    };
    let mut args = fresh_args(&p);
    loop {
        let kills_before = crate::telemetry::available::oom_kill_count();
        let end = match run_attempt(opts, &p, &args, &mut stop_rx, sink).await {
            Ok(end) => end,
            Err(e) => return finish(RunStatus::Failed(e)),
        };
        let kills = (kills_before, crate::telemetry::available::oom_kill_count());
        let Some(death) = exit::memory_death(&end, kills) else {
            return finish(exit::outcome(&end));
        };
        match exit::halve(&p.dir) {
            Ok(h) => {
                let event = h.event(&death);
                if let Ok(line) = exit::append_event(&p.dir, event) {
                    sink(SupervisorEvent::Event {
                        id: p.id.clone(),
                        line,
                    });
                }
                args = h.worker_args(&p.dir);
            }
            // `auto_batch = false` fails as before; otherwise say why it stops here.
            Err(exit::NoRelaunch::Off) => return finish(exit::outcome(&end)),
            Err(exit::NoRelaunch::Cannot(why)) => {
                return finish(RunStatus::Failed(format!("{death}; not relaunched: {why}")))
            }
        }
    }
}

/// One worker process: spawned with `args`, its events, stderr and memory relayed until it
/// exits. `Err` when it cannot be started or waited for.
async fn run_attempt(
    opts: &SupervisorOptions,
    p: &Pending,
    args: &[String],
    stop_rx: &mut mpsc::UnboundedReceiver<()>,
    sink: &Sink,
) -> Result<WorkerEnd, String> {
    let id = p.id.clone();
    let mut cmd = tokio::process::Command::new(&opts.exe);
    cmd.args(args);
    if let Some(w) = &opts.workdir {
        cmd.current_dir(w);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: keystrokes and terminal signals of the dashboard are not its.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the worker {}: {e}", opts.exe.display()))?;
    let pid = child.id().unwrap_or(0);
    sink(SupervisorEvent::Started {
        id: id.clone(),
        pid,
    });
    let started = Instant::now();
    // GPU memory for a run on the GPU: its queue says so before it starts; its start event
    // says where it really computes (`auto` on a machine without a usable GPU is the CPU).
    let mut gpu = gpu_for_device(opts.gpu.as_ref(), &p.device);
    // Appended: a relaunched worker's log follows the one before.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.dir.join(WORKER_LOG))
        .ok();
    let mut mem_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.dir.join(MEMORY_FILE))
        .ok();
    let mut stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
    let mut stderr = child.stderr.take().map(|s| BufReader::new(s).lines());
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut tick = tokio::time::interval(opts.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_event: Option<TrainEvent> = None;
    let mut stops = 0usize;
    while stdout.is_some() || stderr.is_some() {
        tokio::select! {
            line = async { stdout.as_mut().unwrap().next_line().await }, if stdout.is_some() => {
                match line {
                    Ok(Some(l)) => {
                        if l.trim().is_empty() {
                            continue;
                        }
                        match EventLine::parse(&l) {
                            Ok(ev) => {
                                if let TrainEvent::Start { device, .. } = &ev.event {
                                    if !device.is_empty() {
                                        gpu = gpu_for_device(opts.gpu.as_ref(), device);
                                    }
                                }
                                if matches!(ev.event, TrainEvent::Done { .. } | TrainEvent::Error { .. }) {
                                    last_event = Some(ev.event.clone());
                                }
                                sink(SupervisorEvent::Event { id: id.clone(), line: ev });
                            }
                            // Not an event: a stray print. Keep it with the log.
                            Err(_) => push_tail(&mut tail, &mut log, l, &id, sink),
                        }
                    }
                    _ => stdout = None,
                }
            }
            line = async { stderr.as_mut().unwrap().next_line().await }, if stderr.is_some() => {
                match line {
                    Ok(Some(l)) => push_tail(&mut tail, &mut log, l, &id, sink),
                    _ => stderr = None,
                }
            }
            _ = tick.tick() => {
                let sample = telemetry::sample(Some(pid), gpu.as_deref());
                if let Some(point) = memory_point(&sample, started.elapsed().as_secs_f64()) {
                    if let Some(f) = mem_file.as_mut() {
                        if let Ok(s) = serde_json::to_string(&point) {
                            let _ = writeln!(f, "{s}");
                        }
                    }
                    sink(SupervisorEvent::Memory { id: id.clone(), point });
                }
            }
            Some(()) = stop_rx.recv() => {
                stops += 1;
                if stops == 1 {
                    signal(pid, "INT");
                } else {
                    let _ = child.start_kill();
                }
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the worker: {e}"))?;
    Ok(WorkerEnd {
        status,
        last_event,
        stops,
        tail: tail.into_iter().collect(),
    })
}

fn push_tail(
    tail: &mut VecDeque<String>,
    log: &mut Option<std::fs::File>,
    line: String,
    id: &str,
    sink: &Sink,
) {
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "{line}");
    }
    tail.push_back(line.clone());
    while tail.len() > TAIL_LINES {
        tail.pop_front();
    }
    sink(SupervisorEvent::Log {
        id: id.to_string(),
        line,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceChoice;
    use crate::telemetry::GpuUnavailable;

    /// A stand-in for NVML: one process listed with its usage, or a failing device.
    struct FakeGpu {
        pid: u32,
        process: u64,
        used: u64,
        total: u64,
        broken: bool,
    }

    impl GpuMemory for FakeGpu {
        fn device_memory(&self) -> Result<(u64, u64), GpuUnavailable> {
            if self.broken {
                return Err(GpuUnavailable::new("GPU is lost"));
            }
            Ok((self.used, self.total))
        }
        fn process_memory(&self, pid: u32) -> Option<u64> {
            (pid == self.pid).then_some(self.process)
        }
    }

    fn fake(pid: u32, broken: bool) -> Arc<dyn GpuMemory> {
        Arc::new(FakeGpu {
            pid,
            process: 3 << 30,
            used: 5 << 30,
            total: 24 << 30,
            broken,
        })
    }

    /// What the Runs tab's memory chart gets for a run: VRAM of the run's process with the
    /// device's capacity for a run on the GPU; the device's used memory where NVML does
    /// not list the process; RAM for a run on the CPU, and when the GPU stops answering.
    #[test]
    fn gpu_runs_are_sampled_as_vram_and_cpu_runs_as_ram() {
        let me = std::process::id();
        let gpu = fake(me, false);
        assert!(gpu_for_device(Some(&gpu), "cpu").is_none());
        assert!(gpu_for_device(None, "cuda:0").is_none());
        assert!(gpu_for_device(Some(&gpu), "cuda").is_some());
        // Another GPU gets a probe of its own, which a machine without NVML cannot make.
        if crate::telemetry::GpuProbe::for_cuda_ordinal(3).is_err() {
            assert!(gpu_for_device(Some(&gpu), "cuda:3").is_none());
        }
        let on_gpu = gpu_for_device(Some(&gpu), "cuda:0").expect("a GPU run is sampled on the GPU");
        let point = |g: Option<&Arc<dyn GpuMemory>>| {
            memory_point(&telemetry::sample(Some(me), g.map(|g| g.as_ref())), 1.0).unwrap()
        };
        let p = point(Some(&on_gpu));
        assert_eq!(p.kind, MemoryKind::GpuProcess);
        assert_eq!((p.bytes, p.capacity), (3 << 30, Some(24 << 30)));
        assert_eq!(p.device_used, Some(5 << 30));

        let elsewhere = fake(me + 1, false);
        let p = point(Some(&elsewhere));
        assert_eq!(p.kind, MemoryKind::GpuDevice);
        assert_eq!((p.bytes, p.capacity), (5 << 30, Some(24 << 30)));

        for g in [None, Some(fake(me, true))] {
            let p = point(g.as_ref());
            assert_eq!(p.kind, MemoryKind::Ram);
            assert!(p.bytes > 0 && p.capacity.is_none());
        }
    }

    #[test]
    fn devices_are_normalised() {
        let device_key = |d: &str| d.parse::<DeviceChoice>().unwrap().queue_key();
        assert_eq!(device_key("CPU"), "cpu");
        assert_eq!(device_key("cuda"), "cuda:0");
        assert_eq!(device_key("cuda:1"), "cuda:1");
    }
}

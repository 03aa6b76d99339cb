//! `ftlab bench`: a few training steps of each technique on the same model, batch and
//! sequence length, each in its own process so that its peak memory is its own.
//!
//! The parent runs `ftlab bench --worker PRESET ...` per technique and prints a table; a
//! worker loads the model (then resets the high-water mark, so the peak is the training
//! peak), runs one warm-up step and `--steps` timed steps on packed rows of exactly
//! `--seq-len` tokens, and prints one JSON line.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::config::{OptimizerKind, RunConfig};
use crate::train::optim::{clip_grad_norm, AdamW, AdamW8bit, AdamWConfig, Optimizer};
use crate::train::setup;
use crate::train::sft_task;
use crate::train::step::{forward_backward, Checkpointing};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Presets to compare, names or files (default: the four technique presets).
    pub presets: Vec<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Extra overrides for every preset (e.g. --set model.spec=PATH).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the results as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: run one preset in this process.
    #[arg(long, hide = true)]
    pub worker: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub preset: String,
    pub technique: String,
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub step_secs: f64,
    pub tokens_per_sec: f64,
    pub load_peak_bytes: u64,
    pub train_peak_bytes: u64,
    pub predicted_peak_bytes: Option<u64>,
    pub trainable_params: usize,
    pub total_params: usize,
    /// Where it computed (`cpu`, `cuda:N`) and so what the peaks measure: process RAM
    /// (VmHWM) on the CPU, the process's GPU memory (NVML, sampled) on a GPU.
    #[serde(default)]
    pub device: String,
    /// Whether the generic path was forced on the CPU (`FTLAB_KERNELS=generic`).
    #[serde(default)]
    pub generic_kernels: bool,
    /// CPU threads of the worker (`--threads`, default every core).
    #[serde(default)]
    pub threads: usize,
}

impl BenchResult {
    /// `VRAM` or `RAM`: what the peak columns measure.
    pub fn memory_kind(&self) -> &'static str {
        if self.device.starts_with("cuda") {
            "VRAM"
        } else {
            "RAM"
        }
    }
}

/// The high-water mark of the memory a bench worker computes in: VmHWM on the CPU, the
/// process's NVML usage on a GPU.
enum Peak {
    Ram,
    Gpu(crate::telemetry::gpu_peak::GpuPeak),
}

impl Peak {
    fn for_device(device: &candle_core::Device) -> Result<Self> {
        if device.is_cpu() {
            return Ok(Self::Ram);
        }
        let ordinal = match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
            _ => 0,
        };
        let probe = crate::telemetry::GpuProbe::for_cuda_ordinal(ordinal)
            .map_err(|e| anyhow::anyhow!("measuring GPU memory: {e}"))?;
        Ok(Self::Gpu(crate::telemetry::gpu_peak::GpuPeak::start(
            std::sync::Arc::new(probe),
            std::process::id(),
        )))
    }

    fn peak(&self) -> u64 {
        match self {
            Self::Ram => crate::telemetry::memory::peak_rss_bytes(None).unwrap_or(0),
            Self::Gpu(g) => g.peak(),
        }
    }

    fn reset(&self) {
        match self {
            Self::Ram => {
                crate::telemetry::memory::reset_peak().ok();
            }
            Self::Gpu(g) => g.reset(),
        }
    }
}

fn overrides(args: &BenchArgs) -> Vec<String> {
    let mut o = vec![
        format!("train.batch_size={}", args.batch_size),
        "train.grad_accum=1".to_string(),
        format!("data.max_seq_len={}", args.seq_len),
        "data.packing=true".to_string(),
        "data.eval=\"\"".to_string(),
    ];
    o.extend(args.overrides.iter().cloned());
    o
}

fn worker(args: &BenchArgs, preset: &std::path::Path) -> Result<BenchResult> {
    let mut cfg = RunConfig::load(preset, &overrides(args))?;
    cfg.data.eval = None;
    let device = cfg.model.device.resolve()?;
    let peak = Peak::for_device(&device)?;
    let (lm, mut tm) = setup::prepare(&cfg, &device)?;
    // Train mode, as in a real run (LoRA dropout is active).
    tm.model.set_training(true);
    let (train, _) = sft_task::build(
        &cfg.data,
        &lm,
        preset.parent().unwrap_or(std::path::Path::new(".")),
    )?;
    drop(lm);
    // The step alone (packed rows of `seq_len`; the load peak is measured apart).
    let predicted =
        Some(crate::plan::plan(&setup::plan_input(&cfg, tm.model.config(), None)).total);
    let batches = train.batches(0, args.batch_size, cfg.train.seed)?;
    if batches.len() < args.steps + 1 {
        bail!(
            "{}: not enough data for {} steps",
            preset.display(),
            args.steps + 1
        );
    }
    let load_peak = peak.peak();
    peak.reset();
    let vars: Vec<Var> = tm.params.iter().map(|(_, v)| v.clone()).collect();
    let mut opt: Box<dyn Optimizer> = match cfg.train.optimizer {
        OptimizerKind::Adamw => Box::new(AdamW::new(vars, AdamWConfig::default())?),
        OptimizerKind::Adamw8bit => {
            Box::new(AdamW8bit::new(vars, AdamWConfig::default(), 256, 4096)?)
        }
    };
    let mut times = Vec::new();
    for (i, batch) in batches.iter().take(args.steps + 1).enumerate() {
        let t0 = Instant::now();
        let mut accum: Vec<Option<Tensor>> = vec![None; tm.params.len()];
        forward_backward(
            &tm.model,
            &tm.params,
            batch,
            Checkpointing::of(&cfg.model),
            None,
            &mut accum,
        )?;
        let (_, scale) = clip_grad_norm(&accum, 1.0)?;
        opt.step(&accum, 1e-5, scale)?;
        drop(accum);
        device.synchronize()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let step_secs = times.iter().sum::<f64>() / times.len() as f64;
    Ok(BenchResult {
        preset: preset.display().to_string(),
        technique: cfg.technique().to_string(),
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        step_secs,
        tokens_per_sec: (args.batch_size * args.seq_len) as f64 / step_secs,
        load_peak_bytes: load_peak,
        train_peak_bytes: peak.peak(),
        predicted_peak_bytes: predicted,
        trainable_params: tm.params.iter().map(|(_, v)| v.elem_count()).sum(),
        total_params: tm.total_params,
        device: crate::config::device_name(&device),
        generic_kernels: crate::model::generic::generic_kernels(&device),
        threads: candle_core::utils::get_num_threads(),
    })
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1u64 << 20) as f64)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let presets = if args.presets.is_empty() {
        ["baseline", "grad-ckpt", "lora", "qlora"]
            .iter()
            .map(|p| crate::builtin::repo_or_builtin(&format!("presets/{p}.toml")))
            .collect()
    } else {
        let loc = crate::locations::Locations::from_env();
        let named: Result<Vec<PathBuf>> =
            args.presets.iter().map(|p| loc.resolve_preset(p)).collect();
        named?
    };
    if args.worker {
        let r = worker(&args, &presets[0])?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the ftlab binary")?;
    let mut results = Vec::new();
    for p in &presets {
        eprintln!("bench: {} ...", p.display());
        let mut cmd = Command::new(&exe);
        cmd.arg("bench")
            .arg("--worker")
            .arg(p)
            .arg("--steps")
            .arg(args.steps.to_string())
            .arg("--batch-size")
            .arg(args.batch_size.to_string())
            .arg("--seq-len")
            .arg(args.seq_len.to_string());
        for o in &args.overrides {
            cmd.arg("--set").arg(o);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running the bench worker for {}", p.display()))?;
        if !out.status.success() {
            bail!(
                "{}: bench worker failed: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let r: BenchResult = serde_json::from_str(line.lines().last().unwrap_or_default())
            .with_context(|| format!("{}: unreadable bench result: {line}", p.display()))?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        }
        results.push(r);
    }
    if !args.json {
        let first = results.first();
        println!(
            "batch {} × seq {}, {} timed steps after 1 warm-up, each technique in its own process, on {} ({} CPU threads){}; peaks are {}",
            args.batch_size,
            args.seq_len,
            args.steps,
            first.map_or("?", |r| r.device.as_str()),
            first.map_or(0, |r| r.threads),
            if first.is_some_and(|r| r.generic_kernels && r.device == "cpu") {
                " (generic kernels)"
            } else {
                ""
            },
            first.map_or("RAM", |r| r.memory_kind()),
        );
        println!(
            "{:<34} {:>8} {:>9} {:>15} {:>15} {:>15} {:>12}",
            "technique",
            "step s",
            "tokens/s",
            "train peak MiB",
            "predicted MiB",
            "load peak MiB",
            "trainable"
        );
        for r in &results {
            println!(
                "{:<34} {:>8.2} {:>9.1} {:>15} {:>15} {:>15} {:>12}",
                r.technique,
                r.step_secs,
                r.tokens_per_sec,
                mib(r.train_peak_bytes),
                r.predicted_peak_bytes
                    .map(mib)
                    .unwrap_or_else(|| "-".into()),
                mib(r.load_peak_bytes),
                r.trainable_params
            );
        }
    }
    Ok(())
}

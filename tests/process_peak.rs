//! The whole-process memory prediction against the measured peak, for every shipped
//! causal-LM preset: `ftlab train PRESET` as shipped (model, technique, batch, gradient
//! accumulation, data, evaluation set) but two optimiser steps long, evaluating and saving
//! a checkpoint at step 2, so that loading, the steps, evaluation and checkpoint saving are
//! all inside the measured process. The prediction is the one the run itself reports (its
//! start event), which must also equal the library's for the same config; the measurement
//! is the child's peak resident set (`wait4`'s `ru_maxrss`, what `/usr/bin/time -f %M`
//! prints). Each must be within 10 %, the margin the auto batch keeps.
//!
//! With `group_by_length` (every shipped preset) the longest batch comes first, so the
//! two-step run meets the data's longest rows; the plan walks the same batches.
//!
//! Runs the real SmolLM2 and Gemma 3 models (about 4 minutes on 2 cores).
use std::path::Path;
use std::process::{Command, Stdio};

use ftlab::config::{RunConfig, TaskKind};
use ftlab::train::events::{EventLine, TrainEvent};
use ftlab::train::setup::{arch_of, plan_data, predicted_process_peak};

const STEPS: [&str; 5] = [
    "train.max_steps=2",
    "train.eval_every=2",
    "train.save_every=2",
    "train.eval_on_start=true",
    // The micro-batch stays the preset's (not the machine's choice), so the library's
    // prediction below is for the same config.
    "train.auto_batch=false",
];

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Runs `ftlab train PRESET` with `overrides`; returns (predicted bytes from its start
/// event, peak RSS bytes of the process).
fn run(preset: &str, dir: &Path, overrides: &[String]) -> (u64, u64) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ftlab"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["train", preset, "--events", "--run-dir"])
        .arg(dir);
    for o in overrides {
        c.args(["--set", o]);
    }
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftlab");
    let pid = child.id() as libc::pid_t;
    // Read the output before waiting, so that a full pipe cannot block the child.
    let out = child.wait_with_output_keep_pid();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (see `wait_with_output_keep_pid`).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{preset}: ftlab train failed:\n{}",
        out.1
    );
    let predicted = out
        .0
        .lines()
        .filter_map(|l| serde_json::from_str::<EventLine>(l).ok())
        .find_map(|l| match l.event {
            TrainEvent::Start {
                predicted_peak_bytes,
                ..
            } => predicted_peak_bytes,
            _ => None,
        })
        .unwrap_or_else(|| panic!("{preset}: no predicted peak in the start event:\n{}", out.0));
    (predicted, usage.ru_maxrss as u64 * 1024)
}

/// `wait_with_output` without reaping: reads stdout and stderr to the end (the child has
/// then closed them, normally by exiting) and leaves the child for `wait4`.
trait KeepPid {
    fn wait_with_output_keep_pid(self) -> (String, String);
}

impl KeepPid for std::process::Child {
    fn wait_with_output_keep_pid(mut self) -> (String, String) {
        use std::io::Read;
        let mut err_pipe = self.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            err_pipe.read_to_string(&mut s).ok();
            s
        });
        let mut out = String::new();
        self.stdout.take().unwrap().read_to_string(&mut out).ok();
        let err = reader.join().unwrap();
        // Dropping a Child neither kills nor reaps it.
        drop(self);
        (out, err)
    }
}

#[test]
fn every_shipped_preset_peaks_within_10_percent_of_its_prediction() {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
    let mut names: Vec<String> = std::fs::read_dir(&presets)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    let overrides: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        let file = presets.join(format!("{name}.toml"));
        let cfg = RunConfig::load(&file, &overrides).unwrap();
        if cfg.task != TaskKind::Sft {
            continue; // STS runs have no memory plan (ftlab plan says so).
        }
        let data = plan_data(&cfg, &presets).unwrap();
        let expected = predicted_process_peak(&cfg, &arch_of(&cfg).unwrap(), Some(&data)).unwrap();
        let (predicted, measured) = run(name, &tmp.path().join(name), &overrides);
        assert_eq!(
            predicted, expected,
            "{name}: the run's own prediction differs from the plan of its config"
        );
        let err = (predicted as f64 - measured as f64) / measured as f64;
        let line = format!(
            "{name:<18} predicted {:>7.0} MiB  measured {:>7.0} MiB  {:+.1} %",
            mib(predicted),
            mib(measured),
            err * 100.0
        );
        eprintln!("{line}");
        if err.abs() > 0.10 {
            failures.push(line.clone());
        }
        report.push(line);
    }
    assert!(
        report.len() >= 6,
        "expected the six causal-LM presets: {report:?}"
    );
    assert!(failures.is_empty(), "beyond 10 %:\n{}", failures.join("\n"));
}

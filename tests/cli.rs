//! The binary on bad input: a clear message naming the file and the problem, exit code 1,
//! never a panic.
mod common;

use std::process::Command;

fn ftlab(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(args)
        .output()
        .expect("run ftlab");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "ftlab panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn non_utf8_prompt_and_text_files_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("prompt.txt");
    std::fs::write(&bad, b"first line\nsecond \xff line\n").unwrap();
    let (code, err) = ftlab(&["generate", "--prompt-file", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("prompt.txt:2:") && err.contains("UTF-8"),
        "{err}"
    );
    let (code, err) = ftlab(&["perplexity", "--file", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("prompt.txt:2:"), "{err}");
}

#[test]
fn malformed_presets_and_overrides_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "name = \"x\"\n[model]\nspec = \"smollm2\"\n[data]\ntrain = \"t.jsonl\"\n[train]\nlr = 1e-4\nbatch_sise = 2\n").unwrap();
    let (code, err) = ftlab(&[
        "train",
        p.to_str().unwrap(),
        "--run-dir",
        dir.path().join("run").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml") && err.contains("line 8") && err.contains("batch_sise"),
        "{err}"
    );
    let (code, err) = ftlab(&[
        "train",
        "presets/lora.toml",
        "--set",
        "lora.r",
        "--run-dir",
        dir.path().join("run2").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("expected key=value"), "{err}");
    let (code, err) = ftlab(&["plan", "presets/lora.toml", "--set", "lora.dropout=2"]);
    assert_eq!(code, 1);
    assert!(err.contains("lora.dropout"), "{err}");
}

#[test]
fn malformed_training_data_is_reported_before_training_with_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"response\": \"b\"}\n{\"instruction\": \"a\"\n{\"instruction\": \"c\", \"response\": \"d\"}\n{\"instruction\": 3, \"response\": \"d\"}\n",
    )
    .unwrap();
    let preset = dir.path().join("p.toml");
    std::fs::write(&preset, format!("name = \"x\"\n[model]\nspec = \"smollm2\"\n[data]\ntrain = \"{}\"\n[train]\nlr = 1e-4\nmax_steps = 1\n", data.display())).unwrap();
    let (code, err) = ftlab(&[
        "train",
        preset.to_str().unwrap(),
        "--run-dir",
        dir.path().join("run").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("sft.jsonl:2") && err.contains("sft.jsonl:4"),
        "{err}"
    );
    assert!(
        !dir.path().join("run").exists(),
        "bad data must leave no run directory behind"
    );
}

#[test]
fn unknown_models_and_unreachable_hub_fail_fast_and_clearly() {
    let (code, err) = ftlab(&["generate", "--model", "no-such-model", "--prompt", "hi"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("smollm2"),
        "the error lists the known models: {err}"
    );
    let (code, err) = ftlab(&["generate", "--model", "hf:nobody/nothing", "--prompt", "hi"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Hugging Face Hub") || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn a_negative_max_grad_norm_is_a_config_error() {
    let (code, err) = ftlab(&[
        "plan",
        "presets/lora.toml",
        "--set",
        "train.max_grad_norm=-1",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("train.max_grad_norm") && err.contains("0 turns clipping off"),
        "{err}"
    );
}

#[test]
fn merge_refuses_to_write_into_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for out in [run.clone(), run.join("merged"), run.join("x/../merged")] {
        let (code, err) = ftlab(&[
            "merge",
            run.to_str().unwrap(),
            "--model",
            "smollm2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 1);
        assert!(err.contains("is inside"), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(&run).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn a_reader_that_goes_away_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["presets", "list"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .current_dir(home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ftlab");
    // `ftlab presets list | head -0`: the reader closes before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "ftlab panicked: {stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// A binary built without CUDA asked for a GPU: refused at once, before any model or data
/// loads (the model named does not even exist), with the command that builds one; nothing
/// is written. (In a CUDA build the same calls fail for want of the named model instead.)
#[test]
fn a_cpu_build_refuses_cuda_with_the_build_command_before_loading_anything() {
    if ftlab::config::cuda_built() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let missing = dir.path().join("no-such-model.gguf");
    let spec = format!("model.spec={}", missing.display());
    let (code, err) = ftlab(&[
        "train",
        "lora",
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        "model.device=cuda",
        "--set",
        &spec,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("built without CUDA")
            && err.contains("cargo install --path . --features cuda"),
        "{err}"
    );
    assert!(
        !err.contains("no-such-model"),
        "refused before loading: {err}"
    );
    assert!(!run.exists(), "nothing is written");
    for cmd in [
        &["generate", "--prompt", "hi"][..],
        &["perplexity", "--file", "README.md"],
        &["embed", "a", "b"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--device", "cuda:1", "--model", missing.to_str().unwrap()]);
        let (code, err) = ftlab(&args);
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(err.contains("built without CUDA"), "{cmd:?}: {err}");
    }
    // The dashboard (its Inference tab's device) refuses before it takes the terminal.
    let (code, err) = ftlab(&["--device", "cuda"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("built without CUDA"), "{err}");
    let (code, err) = ftlab(&["generate", "--prompt", "hi", "--device", "tpu"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("auto, cpu, cuda or cuda:N"), "{err}");
}

/// `--threads N` (and FTLAB_THREADS) sets the CPU threads of a command and of the workers
/// it starts: a bench worker reports 1 with `--threads 1` and every core without it; 0 or a
/// word is refused.
#[test]
fn threads_limit_the_cpu_threads_of_the_workers_too() {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let data = common::small_sft(root.path(), 16);
    let preset = common::preset(root.path(), &model, &data, "");
    let bench = |threads: Option<&str>, env: Option<&str>| -> serde_json::Value {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftlab"));
        if let Some(t) = threads {
            cmd.args(["--threads", t]);
        }
        if let Some(e) = env {
            cmd.env("FTLAB_THREADS", e);
        } else {
            cmd.env_remove("FTLAB_THREADS");
        }
        let out = cmd
            .env_remove("RAYON_NUM_THREADS")
            .args(["bench", preset.to_str().unwrap(), "--steps", "1"])
            .args(["--seq-len", "128", "--json", "--set", "model.device=cpu"])
            .output()
            .unwrap();
        common::assert_success(&out);
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        serde_json::from_str(&line).unwrap()
    };
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(bench(None, None)["threads"], cores);
    assert_eq!(bench(Some("1"), None)["threads"], 1);
    assert_eq!(bench(None, Some("1"))["threads"], 1);
    let (code, err) = ftlab(&["--threads", "0", "plan", "lora"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 1"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .env("FTLAB_THREADS", "many")
        .args(["plan", "lora"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("FTLAB_THREADS=many"), "{err}");
}

/// `ftlab check-kernels` (what a GPU machine runs first) on the CPU: the generic
/// definitions and the dequantisation kernel's body agree with the CPU kernels.
#[test]
fn check_kernels_on_the_cpu_agrees_with_the_cpu_kernels() {
    let out = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["check-kernels", "--device", "cpu", "--json"])
        .output()
        .unwrap();
    common::assert_success(&out);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 13, "{rows:?}");
    for r in &rows {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["device"], "cpu", "{r}");
    }
    for check in [
        "4-bit dequantisation kernel",
        "attention: y, dq, dk, dv",
        "RMSNorm: y, dL/dx, dL/dw",
        "SwiGLU: y, dL/dgate, dL/dup",
    ] {
        assert!(rows.iter().any(|r| r["check"] == check), "{check}");
    }
}

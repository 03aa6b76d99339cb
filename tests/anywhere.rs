//! ftlab outside its repository: the binary started from an empty directory, with HOME and
//! the XDG folders pointed at temporaries, finds its built-in presets and data, trains one,
//! keeps the run in the user's data folder, and the dashboard shows both.
mod common;
use common::render;
use std::path::{Path, PathBuf};
use std::process::Command;

use ftlab::builtin;
use ftlab::locations::Locations;
use ftlab::tui::presets::all_presets;
use ftlab::tui::{App, GpuState, Tab};

/// A fresh "machine": an empty working directory and empty home, config, data and cache.
struct Machine {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Machine {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["cwd", "home", "config", "data", "cache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Self { _tmp: tmp, root }
    }

    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", self.root.join("home")),
            ("XDG_CONFIG_HOME", self.root.join("config")),
            ("XDG_DATA_HOME", self.root.join("data")),
            ("XDG_CACHE_HOME", self.root.join("cache")),
        ]
    }

    /// Runs ftlab in the empty working directory; returns (success, stdout, stderr).
    fn ftlab(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftlab"));
        cmd.args(args)
            .current_dir(self.root.join("cwd"))
            .env_remove("FTLAB_RUNS_DIR")
            .env_remove("FTLAB_CACHE_DIR");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run ftlab");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "ftlab panicked: {stderr}");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    }

    /// Where ftlab looks, as the binary in this machine's working directory sees it.
    fn locations(&self) -> Locations {
        let env = self.env();
        let lookup = move |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.display().to_string())
        };
        Locations::from_lookup(lookup, &self.root.join("cwd"))
    }

    fn runs_dir(&self) -> PathBuf {
        self.root.join("data/ftlab/runs")
    }
}

const PRESETS: [&str; 7] = [
    "baseline",
    "grad-ckpt",
    "lora",
    "qlora",
    "sts-baseline",
    "sts-grad-ckpt",
    "sts-lora",
];

#[test]
fn builtin_presets_are_listed_from_an_empty_directory() {
    let m = Machine::new();
    for args in [&["train", "--list"][..], &["presets", "list"]] {
        let (ok, out, err) = m.ftlab(args);
        assert!(ok, "{err}");
        for p in PRESETS {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("{p} ")) && l.contains("built-in")),
                "{p}: {out}"
            );
        }
        assert!(out.contains(&m.runs_dir().display().to_string()), "{out}");
    }
}

#[test]
fn export_writes_an_editable_copy_that_then_wins_and_is_not_overwritten() {
    let m = Machine::new();
    let (ok, out, err) = m.ftlab(&["presets", "export", "qlora"]);
    assert!(ok, "{err}");
    let file = m.root.join("config/ftlab/presets/qlora.toml");
    assert_eq!(out.trim(), file.display().to_string());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(common::repo("presets/qlora.toml")).unwrap()
    );
    std::fs::write(&file, "edited").unwrap();
    let (ok, _, err) = m.ftlab(&["presets", "export", "qlora"]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "edited");
    let (ok, out, _) = m.ftlab(&["presets", "list"]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with("qlora ")).unwrap();
    assert!(line.contains("user") && line.contains("hides"), "{out}");
    let (ok, _, err) = m.ftlab(&["presets", "export", "qlora", "--force"]);
    assert!(ok, "{err}");
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "edited");
    let (ok, _, err) = m.ftlab(&["presets", "export", "nope"]);
    assert!(!ok && err.contains("sts-lora"), "{err}");
}

#[test]
fn a_builtin_preset_trains_by_name_into_the_data_dir_and_the_dashboard_shows_it() {
    let m = Machine::new();
    let model = common::tiny_model(&m.root);
    let spec = format!("model.spec={}", model.display());
    let (ok, _, err) = m.ftlab(&[
        "train",
        "lora",
        "--set",
        &spec,
        "--set",
        "train.max_steps=1",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.grad_accum=1",
        "--set",
        "data.limit=8",
        "--set",
        "data.eval_limit=4",
    ]);
    assert!(ok, "{err}");
    let runs: Vec<PathBuf> = std::fs::read_dir(m.runs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let config = std::fs::read_to_string(runs[0].join("config.toml")).unwrap();
    assert!(config.contains("builtin:sft/train.jsonl"), "{config}");
    assert!(runs[0].join("summary.json").exists());
    assert!(
        std::fs::read_dir(m.root.join("cwd"))
            .unwrap()
            .next()
            .is_none(),
        "nothing is written into the working directory"
    );

    // The dashboard started there: the built-in presets, and the run in its history.
    let loc = m.locations();
    assert_eq!(loc.runs_root, m.runs_dir());
    let no_gpu = GpuState::Unavailable("none".into());
    let mut app = App::new(no_gpu, loc.runs_root.clone(), all_presets(&loc));
    app.runs.load_history();
    let screen = render(&mut app, 140, 40);
    for p in ["baseline", "lora", "qlora", "sts-lora"] {
        assert!(screen.contains(p), "{p}: {screen}");
    }
    assert!(screen.contains("(built-in)"), "{screen}");
    assert!(screen.contains("ftlab presets export baseline"), "{screen}");
    app.tab = Tab::Runs;
    let screen = render(&mut app, 140, 40);
    let id = runs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(screen.contains(&id[..id.len().min(20)]), "{id}: {screen}");
}

/// The embedded presets and datasets are the files of the repository, byte for byte: the
/// same set of files, the same contents.
#[test]
fn embedded_files_equal_the_repository_files() {
    let mut on_disk: Vec<(String, Vec<u8>)> = Vec::new();
    for (folder, prefix) in [
        ("presets", "presets"),
        ("data/sft", "sft"),
        ("data/sts", "sts"),
        ("data/docs", "docs"),
    ] {
        for e in std::fs::read_dir(common::repo(folder)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                let name = p.file_name().unwrap().to_string_lossy();
                on_disk.push((format!("{prefix}/{name}"), std::fs::read(&p).unwrap()));
            }
        }
    }
    on_disk.sort();
    let embedded: Vec<(String, Vec<u8>)> = builtin::files()
        .iter()
        .map(|(k, b)| (k.to_string(), b.to_vec()))
        .collect();
    let keys = |v: &[(String, Vec<u8>)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&embedded), keys(&on_disk));
    assert!(embedded == on_disk, "an embedded file differs from data/");
    // The built-in documents folder reads as data/docs does.
    let docs = ftlab::infer::corpus::load_documents(Path::new("builtin:docs")).unwrap();
    let disk = ftlab::infer::corpus::load_documents(&common::repo("data/docs")).unwrap();
    assert_eq!(docs, disk);
}

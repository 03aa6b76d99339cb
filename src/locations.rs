//! Where ftlab finds presets and keeps runs, wherever it is started.
//!
//! Presets, nearest first: `./presets` (a checkout, or a project of the user's), then the
//! user's folder (`$XDG_CONFIG_HOME/ftlab/presets`, else `~/.config/ftlab/presets`), then the
//! built-in ones compiled into the binary. A preset of either folder with the file name of a
//! built-in one hides it: that is how a user edits a built-in preset (`ftlab presets export`).
//!
//! Runs: `$FTLAB_RUNS_DIR`; else `./runs` when ftlab is started in its own checkout or where
//! `./runs` already holds ftlab runs (today's place, so the history stays where it is); else
//! `$XDG_DATA_HOME/ftlab/runs` (else `~/.local/share/ftlab/runs`). A `runs/` folder alone is
//! no sign: TensorBoard writes one by default.
//!
//! Everything is computed from an environment lookup and a working directory given
//! explicitly, so that tests need not change the process's environment.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::builtin;
use crate::runs::layout::RunDir;

/// Where a preset comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetSource {
    /// `presets/` of the working directory.
    Project,
    /// The user's own directory (~/.config/ftlab/presets).
    User,
    /// Compiled into the binary.
    BuiltIn,
}

impl PresetSource {
    /// How the dashboard and `ftlab presets list` name it.
    pub fn label(self) -> &'static str {
        match self {
            PresetSource::Project => "./presets",
            PresetSource::User => "user",
            PresetSource::BuiltIn => "built-in",
        }
    }
}

/// One preset file and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetFile {
    /// The file name without `.toml` (what `ftlab train NAME` matches).
    pub name: String,
    /// A file on disk, or `builtin:presets/NAME.toml`.
    pub path: PathBuf,
    pub source: PresetSource,
    /// A built-in preset of the same name that this one hides.
    pub hides_builtin: bool,
}

/// The folders ftlab reads and writes, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// `./presets`.
    pub project_presets: PathBuf,
    /// The user's preset folder (`None` without HOME or XDG_CONFIG_HOME).
    pub user_presets: Option<PathBuf>,
    /// Where new runs go and the dashboard's history is read from.
    pub runs_root: PathBuf,
}

impl Locations {
    /// From the process's environment, relative to the working directory.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok(), Path::new(""))
    }

    /// From an environment lookup and a working directory (`""` keeps paths relative).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>, cwd: &Path) -> Self {
        let set = |k: &str| env(k).filter(|v| !v.is_empty());
        let absolute = |k: &str| set(k).map(PathBuf::from).filter(|p| p.is_absolute());
        let home = set("HOME").map(PathBuf::from);
        let user_presets = absolute("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .map(|d| d.join("ftlab").join("presets"));
        let local_runs = cwd.join("runs");
        let runs_root = match set("FTLAB_RUNS_DIR") {
            Some(d) => PathBuf::from(d),
            None if is_checkout(cwd) || holds_runs(&local_runs) => local_runs,
            None => absolute("XDG_DATA_HOME")
                .or_else(|| home.as_ref().map(|h| h.join(".local").join("share")))
                .map(|d| d.join("ftlab").join("runs"))
                .unwrap_or(local_runs),
        };
        Self {
            project_presets: cwd.join("presets"),
            user_presets,
            runs_root,
        }
    }

    /// The preset folders on disk, nearest first.
    pub fn preset_dirs(&self) -> Vec<(PathBuf, PresetSource)> {
        let mut dirs = vec![(self.project_presets.clone(), PresetSource::Project)];
        if let Some(u) = &self.user_presets {
            dirs.push((u.clone(), PresetSource::User));
        }
        dirs
    }

    /// Every preset: those of `./presets`, then the user's, each sorted by file name, then
    /// the built-in ones that no file of those folders hides.
    pub fn presets(&self) -> Vec<PresetFile> {
        let builtin = builtin::presets();
        let mut out: Vec<PresetFile> = Vec::new();
        for (dir, source) in self.preset_dirs() {
            for path in toml_files(&dir) {
                let name = stem(&path);
                out.push(PresetFile {
                    hides_builtin: builtin.iter().any(|(n, _)| *n == name),
                    name,
                    path,
                    source,
                });
            }
        }
        for (name, path) in builtin {
            if !out.iter().any(|p| p.name == name) {
                out.push(PresetFile {
                    name,
                    path,
                    source: PresetSource::BuiltIn,
                    hides_builtin: false,
                });
            }
        }
        out
    }

    /// The preset named `name` (a file name without `.toml`), nearest first.
    pub fn find_preset(&self, name: &str) -> Option<PresetFile> {
        self.presets().into_iter().find(|p| p.name == name)
    }

    /// What `ftlab train ARG` trains: a path (an existing file, a `builtin:` path, anything
    /// with a folder in it) as given, else a preset found by name (`qlora`, `qlora.toml`).
    pub fn resolve_preset(&self, arg: &Path) -> Result<PathBuf> {
        if builtin::is_builtin(arg) || arg.is_file() || arg.components().count() != 1 {
            // A missing file is reported by the config loader, as it always was.
            return Ok(arg.to_path_buf());
        }
        let text = arg.to_string_lossy();
        let name = text.strip_suffix(".toml").unwrap_or(&text);
        if let Some(p) = self.find_preset(name) {
            return Ok(p.path);
        }
        let known: Vec<String> = self.presets().into_iter().map(|p| p.name).collect();
        bail!(
            "no preset `{name}`: not a file, and not one of {} (see `ftlab presets list`)",
            known.join(", ")
        )
    }
}

/// Whether `dir` is a checkout of ftlab itself (its Cargo.toml names the package `ftlab`).
fn is_checkout(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
        return false;
    };
    toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| {
            t.get("package")?
                .get("name")?
                .as_str()
                .map(|n| n == "ftlab")
        })
        .unwrap_or(false)
}

/// Whether `dir` holds at least one ftlab run.
fn holds_runs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| RunDir::new(e.path()).is_run())
}

/// The `*.toml` files of `dir`, sorted by name (none when it does not exist).
pub fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn runs_go_to_the_data_dir_outside_a_checkout_and_to_runs_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let cwd = tmp.path().join("somewhere");
        std::fs::create_dir_all(cwd.join("runs/tensorboard-thing")).unwrap();
        let vars = [("HOME", home.display().to_string())];
        let l = Locations::from_lookup(env(&vars), &cwd);
        assert_eq!(l.runs_root, home.join(".local/share/ftlab/runs"));
        assert_eq!(l.user_presets, Some(home.join(".config/ftlab/presets")));

        let vars = [
            ("HOME", home.display().to_string()),
            (
                "XDG_DATA_HOME",
                tmp.path().join("data").display().to_string(),
            ),
            ("XDG_CONFIG_HOME", "relative/is/ignored".to_string()),
        ];
        let l = Locations::from_lookup(env(&vars), &cwd);
        assert_eq!(l.runs_root, tmp.path().join("data/ftlab/runs"));
        assert_eq!(l.user_presets, Some(home.join(".config/ftlab/presets")));

        // ./runs that already holds an ftlab run keeps being used.
        std::fs::write(cwd.join("runs/tensorboard-thing/config.toml"), "").unwrap();
        let l = Locations::from_lookup(env(&vars), &cwd);
        assert_eq!(l.runs_root, cwd.join("runs"));

        // A checkout of ftlab uses ./runs even before the first run.
        let l = Locations::from_lookup(env(&vars), Path::new(env!("CARGO_MANIFEST_DIR")));
        assert_eq!(
            l.runs_root,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("runs")
        );

        let vars = [
            ("HOME", home.display().to_string()),
            ("FTLAB_RUNS_DIR", "/x/runs".to_string()),
        ];
        let l = Locations::from_lookup(env(&vars), Path::new(env!("CARGO_MANIFEST_DIR")));
        assert_eq!(l.runs_root, Path::new("/x/runs"));
    }

    #[test]
    fn a_users_preset_hides_the_builtin_one_of_the_same_name() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("cfg");
        std::fs::create_dir_all(cfg.join("ftlab/presets")).unwrap();
        std::fs::write(cfg.join("ftlab/presets/qlora.toml"), "").unwrap();
        std::fs::write(cfg.join("ftlab/presets/mine.toml"), "").unwrap();
        let vars = [("XDG_CONFIG_HOME", cfg.display().to_string())];
        let l = Locations::from_lookup(env(&vars), tmp.path());
        let all = l.presets();
        let qlora: Vec<_> = all.iter().filter(|p| p.name == "qlora").collect();
        assert_eq!(qlora.len(), 1);
        assert_eq!(qlora[0].source, PresetSource::User);
        assert!(qlora[0].hides_builtin);
        let lora = l.find_preset("lora").unwrap();
        assert_eq!(lora.source, PresetSource::BuiltIn);
        assert_eq!(lora.path, Path::new("builtin:presets/lora.toml"));
        assert_eq!(
            l.resolve_preset(Path::new("qlora")).unwrap(),
            cfg.join("ftlab/presets/qlora.toml")
        );
        assert_eq!(
            l.resolve_preset(Path::new("sts-lora.toml")).unwrap(),
            Path::new("builtin:presets/sts-lora.toml")
        );
        let err = l
            .resolve_preset(Path::new("qlroa"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("qlroa") && err.contains("mine"), "{err}");
        assert_eq!(
            l.resolve_preset(Path::new("no/such.toml")).unwrap(),
            Path::new("no/such.toml")
        );
    }
}

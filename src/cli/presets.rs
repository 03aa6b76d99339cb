//! `ftlab presets list` (also `ftlab train --list`) and `ftlab presets export NAME`: the
//! presets a name can choose from, and a built-in one copied out to be edited.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::builtin;
use crate::config::RunConfig;
use crate::locations::{Locations, PresetSource};

#[derive(clap::Subcommand, Debug)]
pub enum PresetsCmd {
    /// The presets of ./presets, of the user's folder and the built-in ones, nearest first.
    List,
    /// Write a built-in preset as an editable TOML file into the user's preset folder; it then
    /// hides the built-in one of its name.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The built-in preset, e.g. qlora.
    pub name: String,
    /// Folder to write into (default: $XDG_CONFIG_HOME/ftlab/presets or ~/.config/ftlab/presets).
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// Replace a file of the same name.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: PresetsCmd) -> Result<()> {
    match cmd {
        PresetsCmd::List => list(),
        PresetsCmd::Export(args) => export(&args),
    }
}

/// Prints one line per preset: name, where it comes from, description (or its config error).
pub fn list() -> Result<()> {
    let loc = Locations::from_env();
    let presets = loc.presets();
    let width = presets
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  {:<9}  DESCRIPTION", "NAME", "FROM");
    for p in &presets {
        let about = match RunConfig::load(&p.path, &[]) {
            Ok(c) => c.description,
            Err(e) => format!("config error: {e:#}"),
        };
        let mut from = String::new();
        if p.source != PresetSource::BuiltIn {
            from = format!("  [{}]", p.path.display());
        }
        if p.hides_builtin {
            let same = builtin::file(&format!("presets/{}.toml", p.name))
                .is_some_and(|b| std::fs::read(&p.path).is_ok_and(|f| f == b));
            from.push_str(if same {
                " (same as the built-in one)"
            } else {
                " (hides the built-in one)"
            });
        }
        println!("{:<width$}  {:<9}  {about}{from}", p.name, p.source.label());
    }
    let user = loc
        .user_presets
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "(none: set HOME or XDG_CONFIG_HOME)".into());
    println!(
        "\nuser presets: {user}\nruns:         {}",
        loc.runs_root.display()
    );
    Ok(())
}

fn export(args: &ExportArgs) -> Result<()> {
    let name = args.name.strip_suffix(".toml").unwrap_or(&args.name);
    let key = format!("presets/{name}.toml");
    let Some(text) = builtin::file(&key) else {
        let known: Vec<String> = builtin::presets().into_iter().map(|(n, _)| n).collect();
        bail!(
            "no built-in preset `{name}` (built-in: {})",
            known.join(", ")
        );
    };
    let dir = match &args.to {
        Some(d) => d.clone(),
        None => Locations::from_env()
            .user_presets
            .context("no user preset folder: set HOME or XDG_CONFIG_HOME, or pass --to")?,
    };
    let path = dir.join(format!("{name}.toml"));
    if path.exists() && !args.force {
        bail!(
            "{}: already exists; pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    println!("{}", path.display());
    eprintln!("wrote the built-in preset `{name}`; edit it, then `ftlab train {name}` uses it");
    Ok(())
}

//! A preset on disk: the file as written, the `--set` overrides made in the Presets tab,
//! and what a launch would run (with its predicted memory).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::RunConfig;
pub use crate::locations::PresetSource;
use crate::locations::{Locations, PresetFile};
use crate::tui::predict;
use crate::tui::widgets::format;

/// The fields of a preset that can be edited before launch, and their `--set` keys.
pub const EDIT_FIELDS: [(&str, &str); 5] = [
    ("batch size", "train.batch_size"),
    ("sequence length", "data.max_seq_len"),
    ("LoRA rank", "lora.r"),
    ("learning rate", "train.lr"),
    ("steps", "train.max_steps"),
];

#[derive(Debug, Clone)]
pub struct PresetEntry {
    pub path: PathBuf,
    pub source: PresetSource,
    /// The preset as written.
    pub base: Result<RunConfig, String>,
    /// `--set` overrides the user made here, by key.
    pub overrides: BTreeMap<String, String>,
    /// The preset with the overrides applied (what a launch would run).
    pub effective: Result<RunConfig, String>,
    pub predicted_peak: Option<u64>,
}

impl PresetEntry {
    pub fn load(path: &Path, source: PresetSource) -> Self {
        let base = RunConfig::load(path, &[]).map_err(|e| format!("{e:#}"));
        let mut e = Self {
            path: path.to_path_buf(),
            source,
            effective: base.clone(),
            base,
            overrides: BTreeMap::new(),
            predicted_peak: None,
        };
        e.refresh();
        e
    }

    pub fn name(&self) -> String {
        match &self.base {
            Ok(c) => c.name.clone(),
            Err(_) => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    pub fn override_list(&self) -> Vec<String> {
        self.overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// Re-resolves the config after an edit, and the predicted memory with it.
    pub fn refresh(&mut self) {
        self.effective = if self.overrides.is_empty() {
            self.base.clone()
        } else {
            RunConfig::load(&self.path, &self.override_list()).map_err(|e| format!("{e:#}"))
        };
        self.predicted_peak = self
            .effective
            .as_ref()
            .ok()
            .and_then(predict::predicted_peak_bytes);
    }

    /// Sets field `key` to `value` as a `--set` override, and says how that went: a value
    /// the config refuses is not kept (the old one stays, so the preset stays launchable),
    /// and a value equal to the preset's own is no override at all.
    pub fn set_override(&mut self, key: &str, value: &str) -> String {
        let original = self.overrides.remove(key);
        let unchanged = self.field_value(key).as_deref() == Some(value);
        if !unchanged {
            self.overrides.insert(key.to_string(), value.to_string());
        }
        self.refresh();
        if let Err(err) = &self.effective {
            let refused = format!("{key}={value}: {err}");
            self.overrides.remove(key);
            if let Some(o) = original {
                self.overrides.insert(key.to_string(), o);
            }
            self.refresh();
            refused
        } else if unchanged {
            format!("{key} unchanged")
        } else {
            format!("--set {key}={value}")
        }
    }

    /// The current value of an editable field as text; `None` where it does not apply.
    pub fn field_value(&self, key: &str) -> Option<String> {
        if let Some(v) = self.overrides.get(key) {
            return Some(v.clone());
        }
        let c = self.effective.as_ref().or(self.base.as_ref()).ok()?;
        Some(match key {
            "train.batch_size" => c.train.batch_size.to_string(),
            "data.max_seq_len" => c.data.max_seq_len.to_string(),
            "lora.r" => c.lora.as_ref()?.r.to_string(),
            "train.lr" => format::sci(c.train.lr),
            "train.max_steps" => c.train.max_steps.to_string(),
            _ => return None,
        })
    }
}

/// Every preset the dashboard offers: `./presets`, the user's, then the built-in ones not
/// hidden by a file of the same name (see `crate::locations`).
pub fn all_presets(locations: &Locations) -> Vec<PresetEntry> {
    locations
        .presets()
        .iter()
        .map(|PresetFile { path, source, .. }| PresetEntry::load(path, *source))
        .collect()
}

/// Reads every `*.toml` of the given directories, sorted by file name within each.
pub fn discover_presets(dirs: &[(PathBuf, PresetSource)]) -> Vec<PresetEntry> {
    let mut out = Vec::new();
    for (dir, source) in dirs {
        let files = crate::locations::toml_files(dir);
        out.extend(files.iter().map(|f| PresetEntry::load(f, *source)));
    }
    out
}

/// The user's own preset directory: `$XDG_CONFIG_HOME/ftlab/presets` or
/// `~/.config/ftlab/presets`.
pub fn user_preset_dir() -> Option<PathBuf> {
    Locations::from_env().user_presets
}

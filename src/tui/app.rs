//! The dashboard's state and its key handling. Nothing here draws or does I/O beyond reading
//! preset files: keys become [`Action`]s that the event loop sends to the supervisor or the
//! inference thread, and their reports come back through [`App::on_supervisor`] and
//! [`App::on_infer`]. Drawing (in `ui` and the tab modules) only reads this state.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind};

pub use super::infer_state::{
    InferFocus, InferMode, InferState, Role, Streaming, Turn, SAMPLING_FIELDS,
};
use super::infer_worker::InferJob;
use super::predict;
use crate::config::RunConfig;
use crate::runs::registry::{Registry, RunRecord, RunStatus};
use crate::runs::supervisor::{LaunchRequest, SupervisorEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Presets,
    Runs,
    Compare,
    Infer,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Presets, Tab::Runs, Tab::Compare, Tab::Infer];

    pub fn title(&self) -> &'static str {
        match self {
            Tab::Presets => "Presets",
            Tab::Runs => "Runs",
            Tab::Compare => "Compare",
            Tab::Infer => "Inference",
        }
    }

    pub fn index(&self) -> usize {
        Tab::ALL.iter().position(|t| t == self).unwrap_or(0)
    }
}

/// What the event loop must do on the app's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Launch(LaunchRequest),
    Stop(String),
    StopAll,
    SetMaxConcurrent(usize),
    Generate(Box<InferJob>),
    CancelGenerate,
    Quit,
}

/// Whether GPU telemetry is available (NVML), as the header and memory panels say it.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuState {
    Available(String),
    /// The reason NVML could not be used; the UI shows "no GPU: showing RAM".
    Unavailable(String),
}

impl GpuState {
    pub fn is_available(&self) -> bool {
        matches!(self, GpuState::Available(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetSource {
    /// `presets/` of the working directory.
    Project,
    /// The user's own directory (~/.config/ftlab/presets).
    User,
}

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
            "train.lr" => super::widgets::format::sci(c.train.lr),
            "train.max_steps" => c.train.max_steps.to_string(),
            _ => return None,
        })
    }
}

/// Reads every `*.toml` of the given directories, sorted by file name within each.
pub fn discover_presets(dirs: &[(PathBuf, PresetSource)]) -> Vec<PresetEntry> {
    let mut out = Vec::new();
    for (dir, source) in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        out.extend(files.iter().map(|f| PresetEntry::load(f, *source)));
    }
    out
}

/// The user's own preset directory: `$XDG_CONFIG_HOME/ftlab/presets` or
/// `~/.config/ftlab/presets`.
pub fn user_preset_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ftlab").join("presets"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresetFocus {
    List,
    /// Choosing a field to edit.
    Fields(usize),
    /// Typing a new value for a field.
    Editing {
        field: usize,
        buffer: String,
    },
}

#[derive(Debug, Clone)]
pub struct PresetsState {
    pub entries: Vec<PresetEntry>,
    pub selected: usize,
    /// Presets ticked for a launch of several.
    pub marked: BTreeSet<usize>,
    pub focus: PresetFocus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareMetric {
    TrainLoss,
    EvalLoss,
    TokensPerSec,
    Memory,
}

impl CompareMetric {
    pub const ALL: [CompareMetric; 4] = [
        CompareMetric::TrainLoss,
        CompareMetric::EvalLoss,
        CompareMetric::TokensPerSec,
        CompareMetric::Memory,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            CompareMetric::TrainLoss => "train loss",
            CompareMetric::EvalLoss => "eval loss",
            CompareMetric::TokensPerSec => "tokens/s",
            CompareMetric::Memory => "memory",
        }
    }

    fn step(self, d: isize) -> Self {
        let i = CompareMetric::ALL
            .iter()
            .position(|m| *m == self)
            .unwrap_or(0) as isize;
        CompareMetric::ALL[(i + d).rem_euclid(4) as usize]
    }
}

pub struct App {
    pub tab: Tab,
    pub show_help: bool,
    pub confirm_quit: bool,
    pub should_quit: bool,
    pub gpu: GpuState,
    pub runs_root: PathBuf,
    /// Runs on one device at a time (1 = queue).
    pub max_concurrent: usize,
    pub presets: PresetsState,
    /// Every run, oldest first.
    pub runs: Vec<RunRecord>,
    /// Selected run in the Runs tab (by id, so that new runs do not move the selection).
    pub selected_run: Option<String>,
    /// Predicted peak per run id (from its config, for runs whose worker did not report one).
    pub predictions: HashMap<String, Option<u64>>,
    pub compare_chosen: BTreeSet<String>,
    pub compare_cursor: usize,
    pub compare_metric: CompareMetric,
    pub infer: InferState,
    /// A line of feedback in the footer.
    pub message: Option<String>,
    /// Where the tab titles were last drawn (for mouse clicks).
    pub tab_hitboxes: Vec<(u16, u16, u16, Tab)>,
}

impl App {
    pub fn new(gpu: GpuState, runs_root: PathBuf, presets: Vec<PresetEntry>) -> Self {
        Self {
            tab: Tab::Presets,
            show_help: false,
            confirm_quit: false,
            should_quit: false,
            gpu,
            runs_root,
            max_concurrent: 1,
            presets: PresetsState {
                entries: presets,
                selected: 0,
                marked: BTreeSet::new(),
                focus: PresetFocus::List,
            },
            runs: Vec::new(),
            selected_run: None,
            predictions: HashMap::new(),
            compare_chosen: BTreeSet::new(),
            compare_cursor: 0,
            compare_metric: CompareMetric::TrainLoss,
            infer: InferState::default(),
            message: None,
            tab_hitboxes: Vec::new(),
        }
    }

    /// Loads the run history from the registry (runs/ survives restarts).
    pub fn load_history(&mut self) {
        let reg = Registry::new(&self.runs_root);
        let live: HashMap<String, RunRecord> = self
            .runs
            .drain(..)
            .filter(|r| r.status.is_live())
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut runs: Vec<RunRecord> = reg
            .scan()
            .into_iter()
            .map(|r| live.get(&r.id).cloned().unwrap_or(r))
            .collect();
        for (id, r) in live {
            if !runs.iter().any(|x| x.id == id) {
                runs.push(r);
            }
        }
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        for r in &runs {
            self.predict(r);
        }
        self.runs = runs;
        if self.selected_run.is_none() {
            self.selected_run = self.runs.last().map(|r| r.id.clone());
        }
    }

    /// Adds or replaces a run (used by tests and by the registry path).
    pub fn upsert_run(&mut self, rec: RunRecord) {
        self.predict(&rec);
        match self.runs.iter_mut().find(|r| r.id == rec.id) {
            Some(r) => *r = rec,
            None => {
                self.runs.push(rec);
                self.runs.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
        if self.selected_run.is_none() {
            self.selected_run = self.runs.last().map(|r| r.id.clone());
        }
    }

    fn predict(&mut self, r: &RunRecord) {
        if !self.predictions.contains_key(&r.id) {
            let p = r.config.as_ref().and_then(predict::predicted_peak_bytes);
            self.predictions.insert(r.id.clone(), p);
        }
    }

    /// Predicted peak of a run: the worker's own prediction, else the hook's.
    pub fn predicted_peak(&self, r: &RunRecord) -> Option<u64> {
        r.predicted_peak()
            .or_else(|| self.predictions.get(&r.id).copied().flatten())
    }

    pub fn live_runs(&self) -> usize {
        self.runs.iter().filter(|r| r.status.is_live()).count()
    }

    /// Runs in the order the lists show them: newest first.
    pub fn runs_newest_first(&self) -> Vec<&RunRecord> {
        self.runs.iter().rev().collect()
    }

    pub fn selected_run(&self) -> Option<&RunRecord> {
        let id = self.selected_run.as_ref()?;
        self.runs.iter().find(|r| &r.id == id)
    }

    fn run_mut(&mut self, id: &str) -> Option<&mut RunRecord> {
        self.runs.iter_mut().find(|r| r.id == id)
    }

    /// Whether the screen changes with time alone (elapsed/ETA of live runs, streaming).
    pub fn animating(&self) -> bool {
        self.live_runs() > 0 || self.infer.streaming.is_some()
    }

    // ----- reports from the supervisor and the inference thread -----

    pub fn on_supervisor(&mut self, ev: SupervisorEvent) {
        match ev {
            SupervisorEvent::Queued {
                id,
                dir,
                device,
                config,
            } => {
                let mut rec = RunRecord::new(&dir);
                rec.config = config.map(|c| *c);
                rec.status = RunStatus::Queued;
                rec.supervisor = Some(crate::runs::registry::SupervisorRecord {
                    device,
                    ..Default::default()
                });
                self.upsert_run(rec);
                // Follow the first of a batch of launches, not the last.
                if !self.selected_run().is_some_and(|r| r.status.is_live()) {
                    self.selected_run = Some(id);
                }
            }
            SupervisorEvent::Started { id, pid } => {
                if let Some(r) = self.run_mut(&id) {
                    r.pid = Some(pid);
                    r.status = RunStatus::Running;
                    if r.config.is_none() {
                        r.config = RunRecord::read_config(&r.dir);
                    }
                }
            }
            SupervisorEvent::Event { id, line } => {
                if let Some(r) = self.run_mut(&id) {
                    if r.config.is_none() {
                        r.config = RunRecord::read_config(&r.dir);
                    }
                    r.apply(&line);
                }
            }
            SupervisorEvent::Memory { id, point } => {
                if let Some(r) = self.run_mut(&id) {
                    r.push_memory(point);
                }
            }
            SupervisorEvent::Log { id, line } => {
                if let Some(r) = self.run_mut(&id) {
                    r.log_tail.push(line);
                    let n = r.log_tail.len();
                    if n > 40 {
                        r.log_tail.drain(..n - 40);
                    }
                }
            }
            SupervisorEvent::Finished { id, status } => {
                if let Some(r) = self.run_mut(&id) {
                    r.pid = None;
                    r.status = status.clone();
                }
                self.message = Some(format!("run {id}: {}", status.describe()));
            }
            SupervisorEvent::LaunchFailed { preset, error } => {
                self.message = Some(format!("cannot launch {}: {error}", preset.display()));
            }
        }
    }

    // ----- keys -----

    /// Whether keys currently go into a text field (then q, digits and ? are text).
    pub fn typing(&self) -> bool {
        matches!(self.presets.focus, PresetFocus::Editing { .. }) && self.tab == Tab::Presets
            || self.tab == Tab::Infer
                && matches!(
                    self.infer.focus,
                    InferFocus::Prompt | InferFocus::EditingSampling { .. }
                )
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Action> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if self.confirm_quit {
            return match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.should_quit = true;
                    vec![Action::StopAll, Action::Quit]
                }
                _ => {
                    self.confirm_quit = false;
                    Vec::new()
                }
            };
        }
        if self.show_help {
            if matches!(
                key.code,
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter
            ) {
                self.show_help = false;
            }
            return Vec::new();
        }
        if ctrl_c {
            return self.ask_quit();
        }
        if !self.typing() {
            match key.code {
                KeyCode::Char('?') => {
                    self.show_help = true;
                    return Vec::new();
                }
                KeyCode::Char('q') => return self.ask_quit(),
                KeyCode::Tab => {
                    self.tab = Tab::ALL[(self.tab.index() + 1) % 4];
                    return Vec::new();
                }
                KeyCode::BackTab => {
                    self.tab = Tab::ALL[(self.tab.index() + 3) % 4];
                    return Vec::new();
                }
                KeyCode::Char(c @ '1'..='4') => {
                    self.tab = Tab::ALL[c as usize - '1' as usize];
                    return Vec::new();
                }
                _ => {}
            }
        }
        match self.tab {
            Tab::Presets => self.key_presets(key),
            Tab::Runs => self.key_runs(key),
            Tab::Compare => self.key_compare(key),
            Tab::Infer => self.key_infer(key),
        }
    }

    fn ask_quit(&mut self) -> Vec<Action> {
        if self.live_runs() > 0 {
            self.confirm_quit = true;
            Vec::new()
        } else {
            self.should_quit = true;
            vec![Action::Quit]
        }
    }

    pub fn on_mouse(&mut self, m: MouseEvent) {
        match m.kind {
            MouseEventKind::Down(_) => {
                if let Some((_, _, _, tab)) = self
                    .tab_hitboxes
                    .iter()
                    .find(|(y, x0, x1, _)| m.row == *y && m.column >= *x0 && m.column < *x1)
                {
                    self.tab = *tab;
                }
            }
            MouseEventKind::ScrollDown => self.move_selection(1),
            MouseEventKind::ScrollUp => self.move_selection(-1),
            _ => {}
        }
    }

    fn move_selection(&mut self, d: isize) {
        match self.tab {
            Tab::Presets => {
                self.presets.selected = step(self.presets.selected, d, self.presets.entries.len())
            }
            Tab::Runs => self.move_run(d),
            Tab::Compare => self.compare_cursor = step(self.compare_cursor, d, self.runs.len()),
            Tab::Infer => {
                self.infer.selected = step(self.infer.selected, d, self.infer_targets().len())
            }
        }
    }

    fn key_presets(&mut self, key: KeyEvent) -> Vec<Action> {
        let n = self.presets.entries.len();
        match self.presets.focus.clone() {
            PresetFocus::List => match key.code {
                KeyCode::Up | KeyCode::Char('k') => {
                    self.presets.selected = step(self.presets.selected, -1, n)
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.presets.selected = step(self.presets.selected, 1, n)
                }
                KeyCode::Char(' ') if n > 0 => {
                    let i = self.presets.selected;
                    if !self.presets.marked.remove(&i) {
                        self.presets.marked.insert(i);
                    }
                }
                KeyCode::Char('e') | KeyCode::Right if n > 0 => {
                    self.presets.focus = PresetFocus::Fields(0)
                }
                KeyCode::Char('r') if n > 0 => {
                    let e = &mut self.presets.entries[self.presets.selected];
                    e.overrides.clear();
                    e.refresh();
                    self.message = Some(format!("{}: edits reset", e.name()));
                }
                KeyCode::Enter | KeyCode::Char('l') if n > 0 => return self.launch(),
                _ => {}
            },
            PresetFocus::Fields(f) => match key.code {
                KeyCode::Up | KeyCode::Char('k') => {
                    self.presets.focus = PresetFocus::Fields(step(f, -1, EDIT_FIELDS.len()))
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    self.presets.focus = PresetFocus::Fields(step(f, 1, EDIT_FIELDS.len()))
                }
                KeyCode::Esc | KeyCode::Left => self.presets.focus = PresetFocus::List,
                KeyCode::Enter | KeyCode::Char('e') => {
                    let e = &self.presets.entries[self.presets.selected];
                    match e.field_value(EDIT_FIELDS[f].1) {
                        Some(v) => {
                            self.presets.focus = PresetFocus::Editing {
                                field: f,
                                buffer: v,
                            }
                        }
                        None => {
                            self.message =
                                Some(format!("{} applies to LoRA presets only", EDIT_FIELDS[f].0))
                        }
                    }
                }
                KeyCode::Char('l') => return self.launch(),
                _ => {}
            },
            PresetFocus::Editing { field, mut buffer } => match key.code {
                KeyCode::Esc => self.presets.focus = PresetFocus::Fields(field),
                KeyCode::Enter => {
                    let value = buffer.trim().to_string();
                    let e = &mut self.presets.entries[self.presets.selected];
                    let key = EDIT_FIELDS[field].1.to_string();
                    let original = e.overrides.remove(&key);
                    let unchanged = e.field_value(&key).as_deref() == Some(value.as_str());
                    if !unchanged {
                        e.overrides.insert(key.clone(), value.clone());
                    }
                    e.refresh();
                    if let Err(err) = &e.effective {
                        // Keep the preset launchable: reject the value, keep the old one.
                        self.message = Some(format!("{key}={value}: {err}"));
                        e.overrides.remove(&key);
                        if let Some(o) = original {
                            e.overrides.insert(key, o);
                        }
                        e.refresh();
                    } else {
                        self.message = Some(if unchanged {
                            format!("{key} unchanged")
                        } else {
                            format!("--set {key}={value}")
                        });
                    }
                    self.presets.focus = PresetFocus::Fields(field);
                }
                KeyCode::Backspace => {
                    buffer.pop();
                    self.presets.focus = PresetFocus::Editing { field, buffer };
                }
                KeyCode::Char(c) if !c.is_control() => {
                    buffer.push(c);
                    self.presets.focus = PresetFocus::Editing { field, buffer };
                }
                _ => {}
            },
        }
        Vec::new()
    }

    fn launch(&mut self) -> Vec<Action> {
        let picks: Vec<usize> = if self.presets.marked.is_empty() {
            vec![self.presets.selected]
        } else {
            self.presets.marked.iter().copied().collect()
        };
        let actions: Vec<Action> = picks
            .iter()
            .filter_map(|&i| self.presets.entries.get(i))
            .map(|e| {
                Action::Launch(LaunchRequest {
                    preset: e.path.clone(),
                    overrides: e.override_list(),
                })
            })
            .collect();
        self.presets.marked.clear();
        self.message = Some(format!(
            "launched {} run{} (they queue per device; see the Runs tab, 2)",
            actions.len(),
            if actions.len() == 1 { "" } else { "s" }
        ));
        actions
    }

    fn move_run(&mut self, d: isize) {
        let list = self.runs_newest_first();
        if list.is_empty() {
            return;
        }
        let cur = self
            .selected_run
            .as_ref()
            .and_then(|id| list.iter().position(|r| &r.id == id))
            .unwrap_or(0);
        let next = step(cur, d, list.len());
        self.selected_run = Some(list[next].id.clone());
    }

    fn key_runs(&mut self, key: KeyEvent) -> Vec<Action> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_run(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_run(1),
            KeyCode::Char('s') | KeyCode::Delete => {
                if let Some(r) = self.selected_run() {
                    if r.status.is_live() {
                        let id = r.id.clone();
                        self.message = Some(format!(
                            "stopping {id} (it saves a checkpoint; press s again to kill it)"
                        ));
                        return vec![Action::Stop(id)];
                    }
                    self.message = Some(format!("{} is not running", r.id));
                }
            }
            KeyCode::Char('c') | KeyCode::Char(' ') => {
                if let Some(id) = self.selected_run.clone() {
                    if !self.compare_chosen.remove(&id) {
                        self.compare_chosen.insert(id.clone());
                        self.message = Some(format!("{id} added to Compare (3)"));
                    } else {
                        self.message = Some(format!("{id} removed from Compare"));
                    }
                }
            }
            KeyCode::Char('+') | KeyCode::Char('=') => {
                self.max_concurrent = (self.max_concurrent + 1).min(8);
                self.message = Some(format!(
                    "up to {} runs at once per device",
                    self.max_concurrent
                ));
                return vec![Action::SetMaxConcurrent(self.max_concurrent)];
            }
            KeyCode::Char('-') => {
                self.max_concurrent = self.max_concurrent.saturating_sub(1).max(1);
                self.message = Some(format!(
                    "up to {} runs at once per device",
                    self.max_concurrent
                ));
                return vec![Action::SetMaxConcurrent(self.max_concurrent)];
            }
            KeyCode::Char('R') => {
                self.load_history();
                self.message = Some(format!(
                    "{} runs in {}",
                    self.runs.len(),
                    self.runs_root.display()
                ));
            }
            KeyCode::Char('i') => {
                if let Some(r) = self.selected_run().cloned() {
                    if self.open_in_inference(&r) {
                        self.tab = Tab::Infer;
                    } else {
                        self.message = Some("this run has no result to load yet".into());
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn key_compare(&mut self, key: KeyEvent) -> Vec<Action> {
        let n = self.runs.len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.compare_cursor = step(self.compare_cursor, -1, n)
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.compare_cursor = step(self.compare_cursor, 1, n)
            }
            KeyCode::Char(' ') | KeyCode::Enter | KeyCode::Char('c') => {
                if let Some(r) = self.runs_newest_first().get(self.compare_cursor) {
                    let id = r.id.clone();
                    if !self.compare_chosen.remove(&id) {
                        self.compare_chosen.insert(id);
                    }
                }
            }
            KeyCode::Char('a') => {
                if self.compare_chosen.len() == n {
                    self.compare_chosen.clear();
                } else {
                    self.compare_chosen = self.runs.iter().map(|r| r.id.clone()).collect();
                }
            }
            KeyCode::Char('m') | KeyCode::Right | KeyCode::Char('l') => {
                self.compare_metric = self.compare_metric.step(1)
            }
            KeyCode::Left | KeyCode::Char('h') => {
                self.compare_metric = self.compare_metric.step(-1)
            }
            _ => {}
        }
        Vec::new()
    }

    /// The chosen runs, oldest first.
    pub fn compared_runs(&self) -> Vec<&RunRecord> {
        self.runs
            .iter()
            .filter(|r| self.compare_chosen.contains(&r.id))
            .collect()
    }
}

pub(super) fn step(cur: usize, d: isize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (cur as isize + d).clamp(0, n as isize - 1) as usize
}

/// A model spec short enough for a list: the file or directory name of a path.
pub fn short_spec(spec: &str) -> String {
    if spec.contains('/') && !spec.starts_with("hf:") {
        Path::new(spec)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    }
}

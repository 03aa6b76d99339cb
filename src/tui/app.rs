//! The dashboard's global state and the dispatch of keys. Each tab owns its state and its
//! keys (`presets`, `runs`, `compare`, `infer`); the app keeps what is truly global — the
//! active tab, the help overlay, quitting, the GPU line and the footer's message — and
//! applies the [`Effect`]s that tabs return. Nothing here draws or does I/O beyond reading
//! preset files and the run history: the [`Action`]s it returns are for the event loop
//! (`cli::tui`), and the reports of the supervisor and of the inference thread come back
//! through [`App::on_supervisor`] and [`App::on_infer`].
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind};

use super::action::{Action, Effect};
use super::compare::CompareState;
use super::infer::{InferState, Targets};
use super::infer_worker::InferEvent;
use super::presets::{PresetEntry, PresetsState};
use super::runs::RunsState;
use crate::runs::supervisor::SupervisorEvent;

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

pub struct App {
    pub tab: Tab,
    pub show_help: bool,
    pub confirm_quit: bool,
    pub should_quit: bool,
    pub gpu: GpuState,
    pub presets: PresetsState,
    pub runs: RunsState,
    pub compare: CompareState,
    pub infer: InferState,
    /// A line of feedback in the footer, about the last thing done or reported. It goes
    /// when the user moves to another tab or does something else (see [`App::apply`]), so
    /// an error never outlives the moment it was about.
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
            presets: PresetsState::new(presets),
            runs: RunsState::new(runs_root),
            compare: CompareState::default(),
            infer: InferState::default(),
            message: None,
            tab_hitboxes: Vec::new(),
        }
    }

    /// The models the Inference tab offers (from the presets and the runs).
    pub fn targets(&self) -> Targets<'_> {
        Targets::new(&self.presets.entries, &self.runs.records)
    }

    pub fn live_runs(&self) -> usize {
        self.runs.live()
    }

    /// Whether the screen changes with time alone (elapsed/ETA of live runs, streaming).
    pub fn animating(&self) -> bool {
        self.live_runs() > 0 || self.infer.streaming.is_some()
    }

    // ----- reports from the supervisor and the inference thread -----

    pub fn on_supervisor(&mut self, ev: SupervisorEvent) {
        if let Some(m) = self.runs.on_supervisor(ev) {
            self.message = Some(m);
        }
    }

    pub fn on_infer(&mut self, ev: InferEvent) {
        self.infer.on_report(ev);
    }

    // ----- keys -----

    /// Whether keys currently go into a text field (then q, digits and ? are text).
    pub fn typing(&self) -> bool {
        match self.tab {
            Tab::Presets => self.presets.typing(),
            Tab::Infer => self.infer.typing(),
            Tab::Runs | Tab::Compare => false,
        }
    }

    /// The keys the footer offers: the active tab's, then the global ones.
    pub fn key_hints(&self) -> Vec<(&'static str, &'static str)> {
        let mut k = match self.tab {
            Tab::Presets => self.presets.key_hints(),
            Tab::Runs => self.runs.key_hints(),
            Tab::Compare => self.compare.key_hints(),
            Tab::Infer => self.infer.key_hints(),
        };
        if !self.typing() {
            k.extend([("1-4/tab", "tabs"), ("?", "help"), ("q", "quit")]);
        }
        k
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
                    self.show_tab(Tab::ALL[(self.tab.index() + 1) % 4]);
                    return Vec::new();
                }
                KeyCode::BackTab => {
                    self.show_tab(Tab::ALL[(self.tab.index() + 3) % 4]);
                    return Vec::new();
                }
                KeyCode::Char(c @ '1'..='4') => {
                    self.show_tab(Tab::ALL[c as usize - '1' as usize]);
                    return Vec::new();
                }
                _ => {}
            }
        }
        let effects = match self.tab {
            Tab::Presets => self.presets.on_key(key),
            Tab::Runs => self.runs.on_key(key),
            Tab::Compare => self.compare.on_key(key, &self.runs.records),
            Tab::Infer => {
                let models = Targets::new(&self.presets.entries, &self.runs.records);
                self.infer.on_key(key, &models)
            }
        };
        self.apply(effects)
    }

    /// Applies what a tab asked for; returns the commands among it for the event loop.
    /// Whatever a key did replaces the footer's message: the old one (an error, say) is
    /// about something earlier, and a new one comes with the effects when there is one.
    fn apply(&mut self, effects: Vec<Effect>) -> Vec<Action> {
        if !effects.is_empty() {
            self.message = None;
        }
        let mut actions = Vec::new();
        for e in effects {
            match e {
                Effect::Send(a) => actions.push(a),
                Effect::Say(m) => self.message = Some(m),
                Effect::ToggleCompare(id) => {
                    self.message = Some(if self.compare.toggle(&id) {
                        format!("{id} added to Compare (3)")
                    } else {
                        format!("{id} removed from Compare")
                    });
                }
                Effect::OpenInInference(id) => {
                    let models = Targets::new(&self.presets.entries, &self.runs.records);
                    let opened = self
                        .runs
                        .get(&id)
                        .is_some_and(|r| self.infer.open_run(r, &models));
                    if opened {
                        self.show_tab(Tab::Infer);
                    } else {
                        self.message = Some("this run has no result to load yet".into());
                    }
                }
            }
        }
        actions
    }

    /// Shows `tab`. The footer's message was about the tab being left: it goes with it.
    pub fn show_tab(&mut self, tab: Tab) {
        if tab != self.tab {
            self.message = None;
        }
        self.tab = tab;
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
                    self.show_tab(*tab);
                }
            }
            MouseEventKind::ScrollDown => self.scroll(1),
            MouseEventKind::ScrollUp => self.scroll(-1),
            _ => {}
        }
    }

    /// The mouse wheel moves the active tab's selection.
    fn scroll(&mut self, d: isize) {
        match self.tab {
            Tab::Presets => self.presets.scroll(d),
            Tab::Runs => self.runs.move_selection(d),
            Tab::Compare => self.compare.move_cursor(d, self.runs.records.len()),
            Tab::Infer => {
                let models = Targets::new(&self.presets.entries, &self.runs.records);
                self.infer.scroll(d, &models)
            }
        }
    }
}

//! Runs tab: every run, live and past (the history in `runs/` survives restarts), the one
//! selected, and how many may run at once per device. The supervisor's reports update the
//! records here; the Compare and Inference tabs read them.
//!
//! This file is the tab's state and keys; `view` draws the tab.
mod view;

use std::collections::HashMap;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent};

pub use view::draw;

use super::action::{Action, Effect};
use super::predict;
use super::widgets::step;
use crate::runs::registry::{Registry, RunRecord, RunStatus};
use crate::runs::supervisor::SupervisorEvent;

pub struct RunsState {
    /// The runs directory (the history).
    pub root: PathBuf,
    /// Every run, oldest first.
    pub records: Vec<RunRecord>,
    /// The selected run (by id, so that new runs do not move the selection).
    pub selected: Option<String>,
    /// Runs on one device at a time (1 = queue).
    pub max_concurrent: usize,
    /// Predicted peak per run id (from its config, for runs whose worker did not report one).
    predictions: HashMap<String, Option<u64>>,
}

impl RunsState {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            records: Vec::new(),
            selected: None,
            max_concurrent: 1,
            predictions: HashMap::new(),
        }
    }

    /// Loads the run history from the registry (runs/ survives restarts).
    pub fn load_history(&mut self) {
        let reg = Registry::new(&self.root);
        let live: HashMap<String, RunRecord> = self
            .records
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
        self.records = runs;
        if self.selected.is_none() {
            self.selected = self.records.last().map(|r| r.id.clone());
        }
    }

    /// Adds or replaces a run (used by tests and by the registry path).
    pub fn upsert(&mut self, rec: RunRecord) {
        self.predict(&rec);
        match self.records.iter_mut().find(|r| r.id == rec.id) {
            Some(r) => *r = rec,
            None => {
                self.records.push(rec);
                self.records.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
        if self.selected.is_none() {
            self.selected = self.records.last().map(|r| r.id.clone());
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

    pub fn live(&self) -> usize {
        self.records.iter().filter(|r| r.status.is_live()).count()
    }

    /// Runs in the order the lists show them: newest first.
    pub fn newest_first(&self) -> Vec<&RunRecord> {
        self.records.iter().rev().collect()
    }

    pub fn selected_run(&self) -> Option<&RunRecord> {
        let id = self.selected.as_ref()?;
        self.records.iter().find(|r| &r.id == id)
    }

    pub fn get(&self, id: &str) -> Option<&RunRecord> {
        self.records.iter().find(|r| r.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut RunRecord> {
        self.records.iter_mut().find(|r| r.id == id)
    }

    /// Moves the selection by `d` rows of the list (newest first).
    pub fn move_selection(&mut self, d: isize) {
        let list = self.newest_first();
        if list.is_empty() {
            return;
        }
        let cur = self
            .selected
            .as_ref()
            .and_then(|id| list.iter().position(|r| &r.id == id))
            .unwrap_or(0);
        let next = step(cur, d, list.len());
        self.selected = Some(list[next].id.clone());
    }

    /// The keys the footer offers.
    pub fn key_hints(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("↑↓", "select"),
            ("s", "stop"),
            ("c", "compare"),
            ("i", "ask it"),
            ("+/-", "parallel runs"),
            ("R", "rescan"),
        ]
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Char('s') | KeyCode::Delete => {
                if let Some(r) = self.selected_run() {
                    if r.status.is_live() {
                        let id = r.id.clone();
                        return vec![
                            Effect::Say(format!(
                                "stopping {id} (it saves a checkpoint; press s again to kill it)"
                            )),
                            Effect::Send(Action::Stop(id)),
                        ];
                    }
                    return vec![Effect::Say(format!("{} is not running", r.id))];
                }
            }
            KeyCode::Char('c') | KeyCode::Char(' ') => {
                if let Some(id) = self.selected.clone() {
                    return vec![Effect::ToggleCompare(id)];
                }
            }
            KeyCode::Char('+') | KeyCode::Char('=') => {
                return self.set_max_concurrent((self.max_concurrent + 1).min(8))
            }
            KeyCode::Char('-') => {
                return self.set_max_concurrent(self.max_concurrent.saturating_sub(1).max(1))
            }
            KeyCode::Char('R') => {
                self.load_history();
                return vec![Effect::Say(format!(
                    "{} runs in {}",
                    self.records.len(),
                    self.root.display()
                ))];
            }
            KeyCode::Char('i') => {
                if let Some(id) = self.selected_run().map(|r| r.id.clone()) {
                    return vec![Effect::OpenInInference(id)];
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn set_max_concurrent(&mut self, n: usize) -> Vec<Effect> {
        self.max_concurrent = n;
        vec![
            Effect::Say(format!("up to {n} runs at once per device")),
            Effect::Send(Action::SetMaxConcurrent(n)),
        ]
    }

    /// Applies a report of the supervisor; returns the line of feedback it calls for.
    pub fn on_supervisor(&mut self, ev: SupervisorEvent) -> Option<String> {
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
                self.upsert(rec);
                // Follow the first of a batch of launches, not the last.
                if !self.selected_run().is_some_and(|r| r.status.is_live()) {
                    self.selected = Some(id);
                }
            }
            SupervisorEvent::Started { id, pid } => {
                if let Some(r) = self.get_mut(&id) {
                    r.pid = Some(pid);
                    r.status = RunStatus::Running;
                    if r.config.is_none() {
                        r.config = RunRecord::read_config(&r.dir);
                    }
                }
            }
            SupervisorEvent::Event { id, line } => {
                if let Some(r) = self.get_mut(&id) {
                    if r.config.is_none() {
                        r.config = RunRecord::read_config(&r.dir);
                    }
                    r.apply(&line);
                }
            }
            SupervisorEvent::Memory { id, point } => {
                if let Some(r) = self.get_mut(&id) {
                    r.push_memory(point);
                }
            }
            SupervisorEvent::Log { id, line } => {
                if let Some(r) = self.get_mut(&id) {
                    r.log_tail.push(line);
                    let n = r.log_tail.len();
                    if n > 40 {
                        r.log_tail.drain(..n - 40);
                    }
                }
            }
            SupervisorEvent::Finished { id, status } => {
                if let Some(r) = self.get_mut(&id) {
                    r.pid = None;
                    r.status = status.clone();
                }
                return Some(format!("run {id}: {}", status.describe()));
            }
            SupervisorEvent::LaunchFailed { preset, error } => {
                return Some(format!("cannot launch {}: {error}", preset.display()));
            }
        }
        None
    }
}

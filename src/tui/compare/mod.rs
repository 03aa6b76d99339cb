//! Compare tab: chosen runs side by side — a table of what each technique cost and achieved,
//! and one metric of all of them overlaid in one chart.
//!
//! This file is the tab's state and keys; `view` draws the tab.
mod view;

use std::collections::BTreeSet;

use crossterm::event::{KeyCode, KeyEvent};

pub use view::{draw, row_values, HEADERS};

use super::action::Effect;
use super::widgets::step;
use crate::runs::registry::RunRecord;

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

/// The runs chosen for comparison (by id), the picker's cursor and the overlaid metric. The
/// runs themselves are the Runs tab's records, passed in.
#[derive(Debug, Clone)]
pub struct CompareState {
    pub chosen: BTreeSet<String>,
    /// Row of the picker, which lists the runs newest first.
    pub cursor: usize,
    pub metric: CompareMetric,
}

impl Default for CompareState {
    fn default() -> Self {
        Self {
            chosen: BTreeSet::new(),
            cursor: 0,
            metric: CompareMetric::TrainLoss,
        }
    }
}

impl CompareState {
    /// Chooses run `id`, or un-chooses it; true when it is chosen now.
    pub fn toggle(&mut self, id: &str) -> bool {
        if self.chosen.remove(id) {
            return false;
        }
        self.chosen.insert(id.to_string());
        true
    }

    /// The chosen runs of `runs`, oldest first.
    pub fn chosen_runs<'a>(&self, runs: &'a [RunRecord]) -> Vec<&'a RunRecord> {
        runs.iter()
            .filter(|r| self.chosen.contains(&r.id))
            .collect()
    }

    /// The keys the footer offers.
    pub fn key_hints(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("↑↓", "select"),
            ("space", "choose"),
            ("a", "all"),
            ("←→", "metric"),
        ]
    }

    /// Moves the picker's cursor by `d` rows in a list of `n` runs.
    pub fn move_cursor(&mut self, d: isize, n: usize) {
        self.cursor = step(self.cursor, d, n);
    }

    /// Keys of the tab, over `runs` (every run, oldest first).
    pub fn on_key(&mut self, key: KeyEvent, runs: &[RunRecord]) -> Vec<Effect> {
        let n = runs.len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_cursor(-1, n),
            KeyCode::Down | KeyCode::Char('j') => self.move_cursor(1, n),
            KeyCode::Char(' ') | KeyCode::Enter | KeyCode::Char('c') => {
                // The picker lists the runs newest first.
                if let Some(r) = runs.iter().rev().nth(self.cursor) {
                    self.toggle(&r.id);
                }
            }
            KeyCode::Char('a') => {
                if self.chosen.len() == n {
                    self.chosen.clear();
                } else {
                    self.chosen = runs.iter().map(|r| r.id.clone()).collect();
                }
            }
            KeyCode::Char('m') | KeyCode::Right | KeyCode::Char('l') => {
                self.metric = self.metric.step(1)
            }
            KeyCode::Left | KeyCode::Char('h') => self.metric = self.metric.step(-1),
            _ => {}
        }
        Vec::new()
    }
}

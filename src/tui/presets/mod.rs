//! Presets tab: the presets of `presets/` and of the user's own directory; the common fields
//! are editable before launch (as `--set` overrides), and one or several can be launched.
//!
//! This file is the tab's state and keys; `entry` is one preset file and its overrides,
//! `view` draws the tab.
mod entry;
mod view;

use std::collections::BTreeSet;

use crossterm::event::{KeyCode, KeyEvent};

pub use entry::{
    all_presets, discover_presets, user_preset_dir, PresetEntry, PresetSource, EDIT_FIELDS,
};
pub use view::draw;

use super::action::{Action, Effect};
use super::widgets::step;
use super::widgets::text_field::{Finished, TextField, EDITING_HINTS};
use crate::runs::supervisor::LaunchRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresetFocus {
    List,
    /// Choosing a field to edit.
    Fields(usize),
    /// Typing a new value for a field.
    Editing {
        field: usize,
        value: TextField,
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

impl PresetsState {
    pub fn new(entries: Vec<PresetEntry>) -> Self {
        Self {
            entries,
            selected: 0,
            marked: BTreeSet::new(),
            focus: PresetFocus::List,
        }
    }

    /// Whether keys go into a text field.
    pub fn typing(&self) -> bool {
        matches!(self.focus, PresetFocus::Editing { .. })
    }

    /// The keys the footer offers in the current focus.
    pub fn key_hints(&self) -> Vec<(&'static str, &'static str)> {
        match self.focus {
            PresetFocus::List => vec![
                ("↑↓", "select"),
                ("space", "mark"),
                ("e", "edit"),
                ("enter", "launch"),
                ("r", "reset edits"),
            ],
            PresetFocus::Fields(_) => vec![
                ("↑↓", "field"),
                ("enter", "change"),
                ("l", "launch"),
                ("esc", "back"),
            ],
            PresetFocus::Editing { .. } => EDITING_HINTS.to_vec(),
        }
    }

    /// The mouse wheel moves the selected preset, whatever has the keys.
    pub fn scroll(&mut self, d: isize) {
        self.selected = step(self.selected, d, self.entries.len());
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match &mut self.focus {
            PresetFocus::List => self.key_list(key),
            PresetFocus::Fields(f) => {
                let f = *f;
                self.key_fields(f, key)
            }
            PresetFocus::Editing { field, value } => {
                let field = *field;
                let Some(done) = value.on_key(&key) else {
                    return Vec::new();
                };
                self.focus = PresetFocus::Fields(field);
                match done {
                    Finished::Entered(v) => {
                        let said =
                            self.entries[self.selected].set_override(EDIT_FIELDS[field].1, &v);
                        vec![Effect::Say(said)]
                    }
                    Finished::Cancelled => Vec::new(),
                }
            }
        }
    }

    fn key_list(&mut self, key: KeyEvent) -> Vec<Effect> {
        let n = self.entries.len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.selected = step(self.selected, -1, n),
            KeyCode::Down | KeyCode::Char('j') => self.selected = step(self.selected, 1, n),
            KeyCode::Char(' ') if n > 0 => {
                let i = self.selected;
                if !self.marked.remove(&i) {
                    self.marked.insert(i);
                }
            }
            KeyCode::Char('e') | KeyCode::Right if n > 0 => self.focus = PresetFocus::Fields(0),
            KeyCode::Char('r') if n > 0 => {
                let e = &mut self.entries[self.selected];
                e.overrides.clear();
                e.refresh();
                return vec![Effect::Say(format!("{}: edits reset", e.name()))];
            }
            KeyCode::Enter | KeyCode::Char('l') if n > 0 => return self.launch(),
            _ => {}
        }
        Vec::new()
    }

    fn key_fields(&mut self, f: usize, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.focus = PresetFocus::Fields(step(f, -1, EDIT_FIELDS.len()))
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.focus = PresetFocus::Fields(step(f, 1, EDIT_FIELDS.len()))
            }
            KeyCode::Esc | KeyCode::Left => self.focus = PresetFocus::List,
            KeyCode::Enter | KeyCode::Char('e') => {
                let (label, key) = EDIT_FIELDS[f];
                match self.entries[self.selected].field_value(key) {
                    Some(v) => {
                        self.focus = PresetFocus::Editing {
                            field: f,
                            value: TextField::new(v),
                        }
                    }
                    None => {
                        return vec![Effect::Say(format!("{label} applies to LoRA presets only"))]
                    }
                }
            }
            KeyCode::Char('l') => return self.launch(),
            _ => {}
        }
        Vec::new()
    }

    /// Launches the marked presets, or the selected one when none is marked.
    fn launch(&mut self) -> Vec<Effect> {
        let picks: Vec<usize> = if self.marked.is_empty() {
            vec![self.selected]
        } else {
            self.marked.iter().copied().collect()
        };
        let mut effects: Vec<Effect> = picks
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .map(|e| {
                Effect::Send(Action::Launch(LaunchRequest {
                    preset: e.path.clone(),
                    overrides: e.override_list(),
                }))
            })
            .collect();
        self.marked.clear();
        let n = effects.len();
        effects.push(Effect::Say(format!(
            "launched {n} run{} (they queue per device; see the Runs tab, 2)",
            if n == 1 { "" } else { "s" }
        )));
        effects
    }
}

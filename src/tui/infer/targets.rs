//! The models the Inference tab offers: the base models of the presets and every finished
//! run with a result, as language models (chat, RAG) or sentence encoders (search).
use std::path::PathBuf;

use crate::config::TaskKind;
use crate::runs::registry::RunRecord;
use crate::tui::infer_worker::InferTarget;
use crate::tui::presets::PresetEntry;
use crate::tui::widgets::format::short_spec;

/// Where the targets come from: the presets (base models) and the runs (finished results).
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    presets: &'a [PresetEntry],
    runs: &'a [RunRecord],
}

impl<'a> Targets<'a> {
    pub fn new(presets: &'a [PresetEntry], runs: &'a [RunRecord]) -> Self {
        Self { presets, runs }
    }

    /// The language models: each base LM of the presets, then each finished SFT run with a
    /// result (adapter or weights), newest first.
    pub fn language_models(&self) -> Vec<InferTarget> {
        self.targets_of(TaskKind::Sft, "smollm2", |r| {
            run_target(r, r.model(), Some(r.dir.clone()))
        })
    }

    /// The sentence encoders: each base encoder of the STS presets (MiniLM at least), then
    /// each finished STS run with a result (its best checkpoint), newest first.
    pub fn encoders(&self) -> Vec<InferTarget> {
        self.targets_of(TaskKind::Sts, "minilm", |r| {
            run_target(r, r.dir.display().to_string(), None)
        })
    }

    /// `default_spec` and the other base models of `task`'s presets, then each finished run
    /// of `task` with a result (as `run` makes its target), newest first.
    fn targets_of(
        &self,
        task: TaskKind,
        default_spec: &str,
        run: impl Fn(&RunRecord) -> InferTarget,
    ) -> Vec<InferTarget> {
        let mut specs: Vec<String> = vec![default_spec.into()];
        for e in self.presets {
            if let Ok(c) = &e.base {
                if c.task == task && !specs.contains(&c.model.spec) {
                    specs.push(c.model.spec.clone());
                }
            }
        }
        let mut out: Vec<InferTarget> = specs.into_iter().map(base_target).collect();
        for r in self.runs.iter().rev() {
            if r.status.is_finished_ok() && r.has_result() && run_task(r) == task {
                out.push(run(r));
            }
        }
        out
    }
}

/// The run's task (SFT when its config is unreadable, as for any config without `task`).
pub(super) fn run_task(r: &RunRecord) -> TaskKind {
    r.config.as_ref().map(|c| c.task).unwrap_or_default()
}

fn run_target(r: &RunRecord, model: String, adapter: Option<PathBuf>) -> InferTarget {
    InferTarget {
        key: format!("run:{}", r.id),
        label: format!("run {}", r.id),
        model,
        adapter,
    }
}

fn base_target(spec: String) -> InferTarget {
    InferTarget {
        key: format!("base:{spec}"),
        label: format!("base {}", short_spec(&spec)),
        model: spec,
        adapter: None,
    }
}

//! Draws the Presets tab: the list, and for the selected preset its technique, model, key
//! hyper-parameters, predicted memory and the fields editable before launch.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::{PresetEntry, PresetFocus, PresetSource, PresetsState, EDIT_FIELDS};
use crate::config::{QuantKind, RunConfig};
use crate::tui::widgets::format::{self, short_spec};
use crate::tui::widgets::{panel, SELECTED};

pub fn draw(f: &mut Frame, p: &PresetsState, area: Rect) {
    if p.entries.is_empty() {
        let dirs = super::user_preset_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "~/.config/ftlab/presets".into());
        f.render_widget(
            Paragraph::new(vec![
                Line::from("no presets found".bold()),
                Line::from(""),
                Line::from(format!(
                    "ftlab looks for *.toml presets in ./presets and in {dirs}, next to its built-in ones."
                )),
                Line::from("Add a preset there (`ftlab presets export qlora` writes an example)."),
            ])
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Presets ")),
            area,
        );
        return;
    }
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(32), Constraint::Percentage(68)]).areas(area);
    let items: Vec<ListItem> = p
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mark = if p.marked.contains(&i) {
                "[x] "
            } else {
                "[ ] "
            };
            let tech = match &e.effective {
                Ok(c) => c.technique_label(),
                Err(_) => "config error".into(),
            };
            let mut spans = vec![
                Span::styled(mark, Style::default().fg(Color::Yellow)),
                Span::styled(e.name(), Style::default().bold()),
            ];
            match e.source {
                PresetSource::User => {
                    spans.push(Span::styled(" (user)", Style::default().fg(Color::Blue)))
                }
                PresetSource::BuiltIn => spans.push(Span::styled(
                    " (built-in)",
                    Style::default().fg(Color::DarkGray),
                )),
                PresetSource::Project => {}
            }
            if !e.overrides.is_empty() {
                spans.push(Span::styled(" *", Style::default().fg(Color::Yellow)));
            }
            let color = if e.effective.is_ok() {
                Color::Gray
            } else {
                Color::Red
            };
            ListItem::new(vec![
                Line::from(spans),
                Line::from(Span::styled(
                    format!("    {tech}"),
                    Style::default().fg(color),
                )),
            ])
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(p.selected));
    let focused = matches!(p.focus, PresetFocus::List);
    f.render_stateful_widget(
        List::new(items)
            .block(panel(format!(" Presets ({}) ", p.entries.len()), focused))
            .highlight_style(SELECTED),
        left,
        &mut state,
    );
    if let Some(e) = p.entries.get(p.selected) {
        draw_detail(f, p, e, right);
    }
}

fn kv(k: &str, v: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{k:<16}"), Style::default().fg(Color::Gray)),
        Span::raw(v.into()),
    ])
}

/// Where the preset came from: its file and folder, or how to edit a built-in one.
fn file_line(e: &PresetEntry) -> Line<'static> {
    match e.source {
        PresetSource::BuiltIn => kv(
            "file",
            format!(
                "built-in (`ftlab presets export {}` copies it to edit)",
                e.path.file_stem().unwrap_or_default().to_string_lossy()
            ),
        ),
        s => kv("file", format!("{} ({})", e.path.display(), s.label())),
    }
}

fn model_line(c: &RunConfig) -> String {
    let mut s = short_spec(&c.model.spec);
    let mut notes = Vec::new();
    match c.model.quant {
        QuantKind::Nf4 => notes.push("NF4 base".to_string()),
        QuantKind::Fp4 => notes.push("FP4 base".to_string()),
        QuantKind::None => {}
    }
    if c.model.quant != QuantKind::None && c.model.double_quant {
        notes.push("double quant".into());
    }
    if c.model.gradient_checkpointing {
        notes.push(if c.model.selective_checkpointing {
            "selective checkpointing".into()
        } else {
            "grad checkpointing".into()
        });
    }
    // What `auto` means with this binary: the GPU of a CUDA build (bf16 for a frozen
    // base), else the CPU in f32.
    let gpu = c.model.device.may_be_gpu();
    notes.push(format!(
        "{} on {}",
        c.compute_dtype_on_gpu(gpu).as_str(),
        c.model.device.queue_key()
    ));
    s.push_str(&format!(" ({})", notes.join(", ")));
    s
}

fn draw_detail(f: &mut Frame, p: &PresetsState, e: &PresetEntry, area: Rect) {
    let editing = !matches!(p.focus, PresetFocus::List);
    let mut lines: Vec<Line> = Vec::new();
    match &e.effective {
        Ok(c) => {
            lines.push(Line::from(vec![
                Span::styled(c.name.clone(), Style::default().bold().fg(Color::Cyan)),
                Span::raw(" — "),
                Span::styled(c.technique_label(), Style::default().bold()),
            ]));
            if !c.description.is_empty() {
                lines.push(Line::from(c.description.clone().dark_gray()));
            }
            lines.push(Line::from(""));
            lines.push(file_line(e));
            lines.push(kv("model", model_line(c)));
            if let Some(l) = &c.lora {
                lines.push(kv(
                    "LoRA",
                    format!(
                        "r {} · alpha {} · dropout {} · targets {}",
                        l.r,
                        l.alpha,
                        l.dropout,
                        match &l.target_modules {
                            crate::adapt::peft::TargetModules::Preset(p) => p.clone(),
                            crate::adapt::peft::TargetModules::Names(n) => n.join(", "),
                        }
                    ),
                ));
            }
            let t = &c.train;
            lines.push(kv(
                "batch",
                format!(
                    "{} × {} accumulation = {} sequences/step of ≤ {} tokens",
                    t.batch_size,
                    t.grad_accum,
                    t.batch_size * t.grad_accum,
                    c.data.max_seq_len
                ),
            ));
            lines.push(kv(
                "optimiser",
                format!(
                    "{:?} · lr {} · {:?} schedule, warmup {}",
                    t.optimizer,
                    format::sci(t.lr),
                    t.schedule,
                    t.warmup_steps
                )
                .to_lowercase(),
            ));
            lines.push(kv(
                "steps",
                if t.max_steps > 0 {
                    format!(
                        "{} (eval every {}, save every {})",
                        t.max_steps, t.eval_every, t.save_every
                    )
                } else {
                    format!("{} epoch(s)", t.epochs)
                },
            ));
            lines.push(kv("data", c.data.train.display().to_string()));
            lines.push(Line::from(vec![
                Span::styled(
                    format!("{:<16}", "predicted peak"),
                    Style::default().fg(Color::Gray),
                ),
                match e.predicted_peak {
                    Some(b) => {
                        Span::styled(format::bytes(b), Style::default().bold().fg(Color::Green))
                    }
                    None => Span::styled(
                        "— (no memory prediction available)",
                        Style::default().fg(Color::DarkGray),
                    ),
                },
            ]));
        }
        Err(err) => {
            lines.push(Line::from(e.name().bold().red()));
            lines.push(file_line(e));
            lines.push(Line::from(Span::styled(
                format!("config error: {err}"),
                Style::default().fg(Color::Red),
            )));
        }
    }
    let [info, fields] = Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(EDIT_FIELDS.len() as u16 + 4),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(panel(" Preset ", false)),
        info,
    );
    let mut flines = Vec::new();
    for (i, (label, key)) in EDIT_FIELDS.iter().enumerate() {
        let cur = matches!(p.focus, PresetFocus::Fields(j) if j == i)
            || matches!(&p.focus, PresetFocus::Editing { field, .. } if *field == i);
        let value = match &p.focus {
            PresetFocus::Editing { field, value } if *field == i => value.editing_span(),
            _ => match e.field_value(key) {
                Some(v) => Span::styled(
                    v,
                    if e.overrides.contains_key(*key) {
                        Style::default().fg(Color::Yellow).bold()
                    } else {
                        Style::default()
                    },
                ),
                None => Span::styled("— (not LoRA)", Style::default().fg(Color::DarkGray)),
            },
        };
        let pointer = if cur { "▸ " } else { "  " };
        let mut spans = vec![
            Span::styled(pointer, Style::default().fg(Color::Cyan)),
            Span::styled(format!("{label:<16}"), Style::default().fg(Color::Gray)),
            value,
        ];
        if e.overrides.contains_key(*key) {
            spans.push(Span::styled(
                format!("   --set {key}"),
                Style::default().fg(Color::DarkGray),
            ));
        }
        flines.push(Line::from(spans));
    }
    let sets = e.override_list();
    flines.push(Line::from(if sets.is_empty() {
        Span::styled(
            "as written in the preset",
            Style::default().fg(Color::DarkGray),
        )
    } else {
        Span::styled(
            format!("launch with: --set {}", sets.join(" --set ")),
            Style::default().fg(Color::Yellow),
        )
    }));
    f.render_widget(
        Paragraph::new(flines)
            .wrap(Wrap { trim: true })
            .block(panel(
                if editing {
                    " Edit before launch (enter: change, esc: back) "
                } else {
                    " Edit before launch (e) "
                },
                editing,
            )),
        fields,
    );
}

//! Draws the Compare tab: the run picker, the table of the chosen runs and the chart that
//! overlays one metric of them.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::{CompareMetric, CompareState};
use crate::runs::registry::RunRecord;
use crate::tui::widgets::chart::{LineChart, Series, PALETTE};
use crate::tui::widgets::{format, status, table, SELECTED};

pub const HEADERS: [&str; 9] = [
    "run",
    "technique",
    "trainable",
    "peak mem",
    "tok/s",
    "train loss",
    "eval loss",
    "eval metric",
    "wall time",
];

/// Draws the tab for `runs` (every run, oldest first).
pub fn draw(f: &mut Frame, c: &CompareState, runs: &[RunRecord], area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Length(34), Constraint::Min(30)]).areas(area);
    draw_picker(f, c, runs, left);
    let chosen = c.chosen_runs(runs);
    let th = (chosen.len() as u16 + 3).clamp(5, right.height / 2);
    let [top, bottom] = Layout::vertical([Constraint::Length(th), Constraint::Min(5)]).areas(right);
    if chosen.is_empty() {
        f.render_widget(
            Paragraph::new(vec![
                Line::from("no runs chosen".bold()),
                Line::from("Choose runs with space (here) or c (Runs tab); a chooses all."),
            ])
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Comparison ")),
            top,
        );
    } else {
        draw_table(f, &chosen, top);
    }
    draw_chart(f, c.metric, &chosen, bottom);
}

fn draw_picker(f: &mut Frame, c: &CompareState, runs: &[RunRecord], area: Rect) {
    let runs: Vec<&RunRecord> = runs.iter().rev().collect();
    let w = area.width.saturating_sub(8) as usize;
    let items: Vec<ListItem> = runs
        .iter()
        .map(|r| {
            let on = c.chosen.contains(&r.id);
            ListItem::new(Line::from(vec![
                Span::styled(
                    if on { "[x] " } else { "[ ] " },
                    Style::default().fg(Color::Yellow),
                ),
                Span::styled(
                    format!("{} ", status::symbol(&r.status)),
                    Style::default().fg(status::color(&r.status)),
                ),
                Span::raw(format::truncate(&r.id, w)),
            ]))
        })
        .collect();
    let mut state = ListState::default()
        .with_selected((!runs.is_empty()).then_some(c.cursor.min(runs.len().saturating_sub(1))));
    f.render_stateful_widget(
        List::new(items)
            .block(
                Block::bordered()
                    .title(format!(" Choose runs ({}/{}) ", c.chosen.len(), runs.len()))
                    .border_style(Style::default().fg(Color::Cyan)),
            )
            .highlight_style(SELECTED),
        area,
        &mut state,
    );
}

/// The table's cells for one run, as text (also used by tests).
pub fn row_values(r: &RunRecord) -> [String; 9] {
    [
        r.id.clone(),
        r.technique(),
        r.start
            .as_ref()
            .map(|s| format::count(s.trainable_params))
            .unwrap_or_else(|| "—".into()),
        match r.peak_memory() {
            Some(b) => format!("{} {}", format::bytes(b), r.memory_kind_short()),
            None => "—".into(),
        },
        r.mean_tokens_per_sec()
            .map(format::rate)
            .unwrap_or_else(|| "—".into()),
        format::loss(r.final_train_loss()),
        format::loss(r.final_eval_loss()),
        r.headline_metric()
            .map(|(k, v)| format!("{} {v:.3}", if k == "perplexity" { "ppl" } else { k }))
            .unwrap_or_else(|| "—".into()),
        format::opt_duration(r.wall_secs()),
    ]
}

fn draw_table(f: &mut Frame, chosen: &[&RunRecord], area: Rect) {
    let rows: Vec<Vec<Cell>> = chosen
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let vals = row_values(r);
            vals.into_iter()
                .enumerate()
                .map(|(j, v)| {
                    let style = if j == 0 {
                        Style::default().fg(PALETTE[i % PALETTE.len()])
                    } else {
                        Style::default()
                    };
                    Cell::from(v).style(style)
                })
                .collect()
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(17),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(15),
        Constraint::Length(9),
    ];
    f.render_widget(
        table::table(
            &HEADERS,
            rows,
            &widths,
            Block::bordered().title(" Comparison "),
        ),
        area,
    );
}

fn series_of(r: &RunRecord, m: CompareMetric) -> Vec<(f64, f64)> {
    match m {
        CompareMetric::TrainLoss => r.steps.iter().map(|p| (p.step as f64, p.loss)).collect(),
        CompareMetric::EvalLoss => r.evals.iter().map(|(s, l)| (*s as f64, *l)).collect(),
        CompareMetric::TokensPerSec => r
            .steps
            .iter()
            .map(|p| (p.step as f64, p.tokens_per_sec))
            .collect(),
        CompareMetric::Memory => r
            .memory_curve()
            .1
            .iter()
            .map(|(t, b)| (*t, *b as f64))
            .collect(),
    }
}

fn draw_chart(f: &mut Frame, m: CompareMetric, chosen: &[&RunRecord], area: Rect) {
    let tabs: Vec<Span> = CompareMetric::ALL
        .iter()
        .flat_map(|x| {
            let s = if *x == m {
                Span::styled(
                    format!(" {} ", x.label()),
                    Style::default().fg(Color::Black).bg(Color::White).bold(),
                )
            } else {
                Span::styled(format!(" {} ", x.label()), Style::default().fg(Color::Gray))
            };
            [s, Span::raw(" ")]
        })
        .collect();
    let mut title = vec![Span::raw(" Overlay: ")];
    title.extend(tabs);
    title.push(Span::styled("(←→) ", Style::default().fg(Color::DarkGray)));
    let mut chart = LineChart::new(Line::from(title))
        .x_title(if m == CompareMetric::Memory {
            "seconds"
        } else {
            "step"
        })
        .empty("choose runs to overlay their curves");
    if matches!(m, CompareMetric::TokensPerSec | CompareMetric::Memory) {
        chart = chart.from_zero();
    }
    if m == CompareMetric::Memory {
        chart = chart
            .y_fmt(|b| format::bytes(b.max(0.0) as u64))
            .x_fmt(format::duration);
    }
    for (i, r) in chosen.iter().enumerate() {
        chart = chart.series(Series::new(
            format::truncate(&r.id, 28),
            series_of(r, m),
            PALETTE[i % PALETTE.len()],
        ));
    }
    f.render_widget(chart, area);
}

//! Draws the Runs tab: every run, live and past. For the selected one: status (with the
//! reason of a failure), a progress bar with ETA, and live charts of loss, throughput and
//! memory, with the predicted peak drawn next to the measured curve.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use crate::runs::registry::{MemoryPoint, RunRecord, RunStatus};
use crate::telemetry::GpuUnavailable;
use crate::tui::widgets::chart::{HLine, LineChart, Series};
use crate::tui::widgets::format::{self, short_spec};
use crate::tui::widgets::gauge::Progress;
use crate::tui::widgets::{status, SELECTED};
use crate::tui::{App, GpuState};

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Length(36), Constraint::Min(30)]).areas(area);
    draw_list(f, app, left);
    match app.runs.selected_run() {
        Some(r) => draw_run(f, app, r, right),
        None => f.render_widget(
            Paragraph::new(vec![
                Line::from("no runs yet".bold()),
                Line::from(""),
                Line::from("Launch one from the Presets tab (1): select a preset and press enter."),
                Line::from(format!(
                    "Runs are kept in {} and shown again when ftlab restarts.",
                    app.runs.root.display()
                )),
            ])
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Run ")),
            right,
        ),
    }
}

fn draw_list(f: &mut Frame, app: &App, area: Rect) {
    let runs = app.runs.newest_first();
    let width = area.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = runs
        .iter()
        .map(|r| {
            let chosen = if app.compare.chosen.contains(&r.id) {
                "◆"
            } else {
                " "
            };
            let steps = match r.total_steps() {
                Some(t) => format!("{}/{t}", r.current_step()),
                None => format!("{}", r.current_step()),
            };
            ListItem::new(vec![
                Line::from(vec![
                    Span::styled(
                        format!("{} ", status::symbol(&r.status)),
                        Style::default().fg(status::color(&r.status)),
                    ),
                    Span::raw(format::truncate(&r.id, width.saturating_sub(3))),
                    Span::styled(chosen, Style::default().fg(Color::Yellow)),
                ]),
                Line::from(vec![
                    Span::raw("  "),
                    status::badge(&r.status),
                    Span::styled(
                        format::truncate(
                            &format!(" · {steps} · {}", r.technique()),
                            width.saturating_sub(10),
                        ),
                        Style::default().fg(Color::DarkGray),
                    ),
                ]),
            ])
        })
        .collect();
    let sel = app
        .runs
        .selected
        .as_ref()
        .and_then(|id| runs.iter().position(|r| &r.id == id));
    let mut state = ListState::default().with_selected(sel);
    let live = app.runs.live();
    let title = format!(
        " Runs ({}{}) · {} at once ",
        runs.len(),
        if live > 0 {
            format!(", {live} live")
        } else {
            String::new()
        },
        app.runs.max_concurrent
    );
    f.render_stateful_widget(
        List::new(items)
            .block(
                Block::bordered()
                    .title(title)
                    .border_style(Style::default().fg(Color::Cyan)),
            )
            .highlight_style(SELECTED),
        area,
        &mut state,
    );
}

fn header_lines(app: &App, r: &RunRecord) -> Vec<Line<'static>> {
    let mut l1 = vec![
        Span::styled(r.id.clone(), Style::default().bold().fg(Color::Cyan)),
        Span::raw("  "),
        status::badge(&r.status),
    ];
    if let Some(pid) = r.pid {
        l1.push(Span::styled(
            format!("  pid {pid}"),
            Style::default().fg(Color::DarkGray),
        ));
    }
    let mut lines = vec![Line::from(l1)];
    let mut facts = vec![r.technique(), short_spec(&r.model()), r.device()];
    if let Some(dtype) = r.start.as_ref().map(|s| &s.dtype).filter(|d| !d.is_empty()) {
        facts.push(dtype.clone());
    }
    if let Some(s) = &r.start {
        facts.push(format!(
            "{} trainable / {} params",
            format::count(s.trainable_params),
            format::count(s.total_params)
        ));
    }
    lines.push(Line::from(Span::styled(
        facts.join(" · "),
        Style::default().fg(Color::Gray),
    )));
    let last = r.steps.last();
    let mut now = vec![
        format!("loss {}", format::loss(last.map(|p| p.loss))),
        format!("eval {}", format::loss(r.final_eval_loss())),
    ];
    if let Some((name, v)) = r.headline_metric() {
        now.push(format!("{name} {v:.3}"));
    }
    if let Some(p) = last {
        now.push(format!("{} tok/s", format::rate(p.tokens_per_sec)));
        now.push(format!("{} it/s", format::rate(p.its)));
    }
    now.push(format!("peak {}", format::opt_bytes(r.peak_memory())));
    now.push(format!(
        "predicted {}",
        format::opt_bytes(app.runs.predicted_peak(r))
    ));
    lines.push(Line::from(now.join(" · ")));
    if let Some(b) = &r.batch {
        lines.push(Line::from(Span::styled(
            b.line(),
            Style::default().fg(Color::Yellow),
        )));
    }
    match &r.status {
        RunStatus::Failed(reason) => lines.push(Line::from(Span::styled(
            format!("failed: {reason}"),
            Style::default().fg(Color::Red),
        ))),
        RunStatus::Queued => lines.push(Line::from(Span::styled(
            "queued: waiting for its device (runs on one device queue; + allows more at once)",
            Style::default().fg(Color::Yellow),
        ))),
        RunStatus::Running if r.steps.is_empty() => {
            let last = r
                .log_tail
                .last()
                .cloned()
                .unwrap_or_else(|| "starting the worker…".into());
            lines.push(Line::from(Span::styled(
                last,
                Style::default().fg(Color::DarkGray),
            )));
        }
        _ => {}
    }
    lines
}

fn draw_run(f: &mut Frame, app: &App, r: &RunRecord, area: Rect) {
    let header = header_lines(app, r);
    let hh = (header.len() as u16 + 2).min(area.height / 3).max(4);
    let [head, gauge, charts] = Layout::vertical([
        Constraint::Length(hh),
        Constraint::Length(1),
        Constraint::Min(6),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(header).wrap(Wrap { trim: true }).block(
            Block::bordered()
                .title(" Run ")
                .border_style(Style::default().fg(status::color(&r.status))),
        ),
        head,
    );
    f.render_widget(
        Progress {
            step: r.current_step(),
            total: r.total_steps(),
            ratio: r.progress(),
            eta_secs: r.eta_secs(),
            elapsed_secs: r.wall_secs(),
            color: status::color(&r.status),
        },
        gauge,
    );
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(charts);
    let [loss, mem] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let [tps, its] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    let train: Vec<(f64, f64)> = r.steps.iter().map(|p| (p.step as f64, p.loss)).collect();
    let eval: Vec<(f64, f64)> = r.evals.iter().map(|(s, l)| (*s as f64, *l)).collect();
    let mut loss_chart = LineChart::new(" Loss ")
        .x_title("step")
        .empty("loss appears after the first step")
        .series(Series::new("train", train, Color::Cyan));
    if !eval.is_empty() {
        loss_chart = loss_chart.series(Series::new("eval", eval, Color::Yellow));
    }
    f.render_widget(loss_chart, loss);
    draw_memory(f, app, r, mem);
    let tok: Vec<(f64, f64)> = r
        .steps
        .iter()
        .map(|p| (p.step as f64, p.tokens_per_sec))
        .collect();
    let it: Vec<(f64, f64)> = r.steps.iter().map(|p| (p.step as f64, p.its)).collect();
    f.render_widget(
        LineChart::new(" Tokens/s ")
            .x_title("step")
            .from_zero()
            .empty("tokens/s appears after the first step")
            .series(Series::new("tokens/s", tok, Color::Green)),
        tps,
    );
    f.render_widget(
        LineChart::new(" Iterations/s ")
            .x_title("step")
            .from_zero()
            .empty("it/s appears after the first step")
            .series(Series::new("it/s", it, Color::Magenta)),
        its,
    );
}

fn gib(x: f64) -> String {
    format::bytes(x.max(0.0) as u64)
}

fn secs(x: f64) -> String {
    format::duration(x)
}

fn draw_memory(f: &mut Frame, app: &App, r: &RunRecord, area: Rect) {
    let (kind, curve) = r.memory_curve();
    let capacity = r.memory.iter().rev().find_map(|m| m.capacity);
    let title = match (&app.gpu, kind.is_gpu()) {
        (_, true) => format!(
            " {}{} ",
            kind.label(),
            capacity
                .map(|c| format!(" · of {}", format::bytes(c)))
                .unwrap_or_default()
        ),
        (GpuState::Unavailable(_), false) => {
            format!(" Memory — {}: {} ", GpuUnavailable::MESSAGE, kind.label())
        }
        (GpuState::Available(_), false) => format!(" Memory — CPU run: {} ", kind.label()),
    };
    let predicted = app.runs.predicted_peak(r).map(|b| HLine {
        name: format!("predicted {}", format::bytes(b)),
        y: b as f64,
        color: Color::Red,
    });
    let points: Vec<(f64, f64)> = curve.iter().map(|(t, b)| (*t, *b as f64)).collect();
    let name = match curve.last() {
        Some((_, b)) => format!("now {}", format::bytes(*b)),
        None => "measured".into(),
    };
    // One more reading of each memory point, where the source gives it, as a series named
    // with its latest value.
    let series_of = |label: &str, color: Color, pick: fn(&MemoryPoint) -> Option<u64>| {
        let points: Vec<(f64, f64)> = r
            .memory
            .iter()
            .filter(|m| m.kind == kind)
            .filter_map(|m| pick(m).map(|b| (m.secs, b as f64)))
            .collect();
        let last = points.last().map_or(0, |p| p.1 as u64);
        (!points.is_empty())
            .then(|| Series::new(format!("{label} {}", format::bytes(last)), points, color))
    };
    // RSS swings with every allocation; its high-water mark (VmHWM) is the peak so far.
    let peak_series = series_of("peak", Color::Yellow, |m| m.peak);
    // A GPU run: the device's used memory (every process) under its capacity.
    let used_series = series_of("GPU used", Color::DarkGray, |m| m.device_used);
    let capacity_line = capacity.filter(|_| kind.is_gpu()).map(|c| HLine {
        name: format!("capacity {}", format::bytes(c)),
        y: c as f64,
        color: Color::Gray,
    });
    let title_line = Line::from(vec![Span::raw(title)]);
    let mut chart = LineChart::new(title_line);
    if let Some(p) = peak_series {
        chart = chart.series(p);
    }
    if let Some(u) = used_series {
        chart = chart.series(u).hline(capacity_line);
    }
    f.render_widget(
        chart
            .x_title("seconds")
            .y_fmt(gib)
            .x_fmt(secs)
            .from_zero()
            .empty("memory is sampled once a second while the worker runs")
            .hline(predicted)
            .series(Series::new(name, points, Color::LightBlue)),
        area,
    );
}

//! The frame: tab bar, the current tab, a footer of keys, and overlays (help, quit).
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, GpuState, Tab};
use super::widgets::popup::{centered, Popup};
use super::{compare, help, infer, presets, runs};

/// Below this the layout cannot hold its panels; the screen says so instead.
pub const MIN_WIDTH: u16 = 70;
pub const MIN_HEIGHT: u16 = 20;

/// Draws the whole screen from the app state.
pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = Text::from(vec![
            Line::from("terminal too small".bold().red()),
            Line::from(format!(
                "{}×{} — ftlab needs at least {MIN_WIDTH}×{MIN_HEIGHT}",
                area.width, area.height
            )),
            Line::from("enlarge the window, or press q to quit".dark_gray()),
        ]);
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let [top, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(f, app, top);
    match app.tab {
        Tab::Presets => presets::draw(f, &app.presets, body),
        Tab::Runs => runs::draw(f, app, body),
        Tab::Compare => compare::draw(f, &app.compare, &app.runs.records, body),
        Tab::Infer => infer::draw(f, &app.infer, &app.targets(), body),
    }
    draw_footer(f, app, foot);
    if app.show_help {
        let r = centered(area, 76, 30);
        f.render_widget(
            Popup {
                title: "keys — ? or Esc to close",
                body: help::text(),
                border: Color::Cyan,
            },
            r,
        );
    }
    if app.confirm_quit {
        let n = app.live_runs();
        let r = centered(area, 56, 7);
        f.render_widget(
            Popup {
                title: "quit?",
                body: Text::from(vec![
                    Line::from(format!(
                        "{n} run{} still live (running or queued).",
                        if n == 1 { " is" } else { "s are" }
                    )),
                    Line::from("Stop them (each saves a checkpoint) and quit?"),
                    Line::from(""),
                    Line::from(vec![
                        "y".bold().yellow(),
                        Span::raw(" stop and quit    "),
                        "any other key".bold(),
                        Span::raw(" stay"),
                    ]),
                ]),
                border: Color::Yellow,
            },
            r,
        );
    }
}

fn draw_tabs(f: &mut Frame, app: &mut App, area: Rect) {
    let mut spans = vec![Span::styled(
        " ftlab ",
        Style::default().bold().fg(Color::Black).bg(Color::Cyan),
    )];
    let mut x = area.x + 7;
    app.tab_hitboxes.clear();
    for (i, t) in Tab::ALL.iter().enumerate() {
        let mut title = format!(" {} {} ", i + 1, t.title());
        if *t == Tab::Runs {
            let live = app.live_runs();
            if live > 0 {
                title = format!(" {} {} ({live} live) ", i + 1, t.title());
            }
        }
        let w = title.chars().count() as u16;
        app.tab_hitboxes.push((area.y, x, x + w, *t));
        x += w + 1;
        let style = if *t == app.tab {
            Style::default()
                .fg(Color::Black)
                .bg(Color::White)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(Color::Gray)
        };
        spans.push(Span::styled(title, style));
        spans.push(Span::raw(" "));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
    let gpu = match &app.gpu {
        GpuState::Available(name) => {
            Span::styled(format!("GPU: {name} "), Style::default().fg(Color::Green))
        }
        GpuState::Unavailable(_) => Span::styled(
            format!("{} ", crate::telemetry::GpuUnavailable::MESSAGE),
            Style::default().fg(Color::Yellow),
        ),
    };
    let w = gpu.width() as u16;
    if x + w < area.x + area.width {
        let r = Rect {
            x: area.x + area.width - w,
            width: w,
            ..area
        };
        f.render_widget(Paragraph::new(Line::from(gpu)), r);
    }
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = Vec::new();
    for (key, what) in app.key_hints() {
        spans.push(Span::styled(
            format!(" {key}"),
            Style::default().fg(Color::Cyan).bold(),
        ));
        spans.push(Span::styled(
            format!(" {what} "),
            Style::default().fg(Color::Gray),
        ));
    }
    let used: usize = spans.iter().map(|s| s.width()).sum();
    if let Some(m) = &app.message {
        let room = (area.width as usize).saturating_sub(used + 3);
        if room > 8 {
            spans.push(Span::raw(" │ "));
            spans.push(Span::styled(
                super::widgets::format::truncate(m, room),
                Style::default().fg(Color::Yellow),
            ));
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

//! Inference tab: pick the base model or a finished run, type a prompt, and watch the answer
//! stream in with its tokens/s. Sampling settings are editable; each model keeps its own
//! conversation for the session.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use ratatui::Frame;

use super::app::{App, InferFocus, Role, SAMPLING_FIELDS};
use super::widgets::format;

fn border(on: bool) -> Style {
    Style::default().fg(if on { Color::Cyan } else { Color::DarkGray })
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Length(36), Constraint::Min(30)]).areas(area);
    let [tl, sl] = Layout::vertical([
        Constraint::Min(4),
        Constraint::Length(SAMPLING_FIELDS.len() as u16 + 2),
    ])
    .areas(left);
    let targets = app.infer_targets();
    let w = tl.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = targets
        .iter()
        .map(|t| {
            let n = app.infer.histories.get(&t.key).map_or(0, |h| h.len() / 2);
            let mut spans = vec![Span::raw(format::truncate(&t.label, w.saturating_sub(2)))];
            if n > 0 {
                spans.push(Span::styled(
                    format!(" ({n})"),
                    Style::default().fg(Color::DarkGray),
                ));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(
        app.infer.selected.min(targets.len().saturating_sub(1)),
    ));
    f.render_stateful_widget(
        List::new(items)
            .block(
                Block::bordered()
                    .title(" Model ")
                    .border_style(border(app.infer.focus == InferFocus::Targets)),
            )
            .highlight_style(super::widgets::SELECTED),
        tl,
        &mut state,
    );
    let sampling_on = matches!(
        app.infer.focus,
        InferFocus::Sampling(_) | InferFocus::EditingSampling { .. }
    );
    let slines: Vec<Line> = SAMPLING_FIELDS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (cur, val) = match &app.infer.focus {
                InferFocus::EditingSampling { field, buffer } if *field == i => (
                    true,
                    Span::styled(
                        format!("{buffer}▏"),
                        Style::default().fg(Color::Black).bg(Color::Yellow),
                    ),
                ),
                InferFocus::Sampling(j) if *j == i => (true, Span::raw(app.sampling_value(i))),
                _ => (false, Span::raw(app.sampling_value(i))),
            };
            Line::from(vec![
                Span::styled(
                    if cur { "▸ " } else { "  " },
                    Style::default().fg(Color::Cyan),
                ),
                Span::styled(format!("{name:<15}"), Style::default().fg(Color::Gray)),
                val,
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(slines).block(
            Block::bordered()
                .title(" Sampling (s) ")
                .border_style(border(sampling_on)),
        ),
        sl,
    );

    let [chat, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(right);
    let target = targets.get(app.infer.selected);
    let history = target.and_then(|t| app.infer.histories.get(&t.key));
    let width = chat.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    match history {
        Some(h) if !h.is_empty() => {
            for (i, turn) in h.iter().enumerate() {
                let (who, color) = match turn.role {
                    Role::User => ("you", Color::Yellow),
                    Role::Assistant => ("model", Color::Cyan),
                };
                lines.push(Line::from(Span::styled(
                    who,
                    Style::default().fg(color).bold(),
                )));
                let streaming_this = i + 1 == h.len() && app.infer.streaming.is_some();
                let mut text = turn.text.clone();
                if streaming_this {
                    text.push('▌');
                }
                for l in format::wrap(&text, width) {
                    lines.push(Line::from(l));
                }
                lines.push(Line::from(""));
            }
        }
        _ => {
            lines.push(Line::from("no conversation yet".dark_gray()));
            lines.push(Line::from(
                "Press enter to type a prompt; the answer streams in token by token.".dark_gray(),
            ));
        }
    }
    let room = chat.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(room);
    let title = match target {
        Some(t) => format!(" Chat · {} ", t.label),
        None => " Chat ".into(),
    };
    f.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
            .block(Block::bordered().title(title)),
        chat,
    );
    let typing = app.infer.focus == InferFocus::Prompt;
    let shown = {
        let w = input.width.saturating_sub(4) as usize;
        let n = app.infer.input.chars().count();
        let s: String = app.infer.input.chars().skip(n.saturating_sub(w)).collect();
        if typing {
            format!("{s}▏")
        } else {
            s
        }
    };
    f.render_widget(
        Paragraph::new(shown).block(
            Block::bordered()
                .title(if typing {
                    " Prompt (enter sends, esc leaves) "
                } else {
                    " Prompt (enter to type) "
                })
                .border_style(border(typing)),
        ),
        input,
    );
    let mut st = Vec::new();
    if let Some(s) = &app.infer.streaming {
        st.push(Span::styled(
            "streaming ",
            Style::default().fg(Color::Cyan).bold(),
        ));
        st.push(Span::raw(format!("{} tokens", s.tokens)));
        if let Some(tps) = app.streaming_tps() {
            st.push(Span::raw(format!(" · {tps:.1} tokens/s")));
        }
        st.push(Span::raw(" · "));
    }
    st.push(Span::styled(
        app.infer.status.clone(),
        Style::default().fg(Color::Gray),
    ));
    f.render_widget(Paragraph::new(Line::from(st)), status);
}

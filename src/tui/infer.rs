//! Inference tab: pick the base model or a finished run, type a prompt, and watch the answer
//! stream in with its tokens/s. Sampling settings are editable; each model keeps its own
//! conversation for the session.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use ratatui::Frame;

use super::app::{App, InferFocus, InferMode, Role, SAMPLING_FIELDS};
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
    let targets = app.mode_targets();
    let selected = app.mode_selected().min(targets.len().saturating_sub(1));
    let w = tl.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = targets
        .iter()
        .map(|t| {
            let n = app
                .infer
                .histories
                .get(&app.history_key(t))
                .map_or(0, |h| h.iter().filter(|t| t.role == Role::User).count());
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
    let mut state = ListState::default().with_selected(Some(selected));
    let list_title = format!(
        " {} · {} mode (m) ",
        if app.infer.mode == InferMode::Search {
            "Encoder"
        } else {
            "Model"
        },
        app.infer.mode.label()
    );
    f.render_stateful_widget(
        List::new(items)
            .block(
                Block::bordered()
                    .title(list_title)
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
                .title(" Settings (s) ")
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
    let target = targets.get(selected);
    let history = target.and_then(|t| app.infer.histories.get(&app.history_key(t)));
    let width = chat.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    match history {
        Some(h) if !h.is_empty() => {
            for (i, turn) in h.iter().enumerate() {
                let (who, color) = match (turn.role, app.infer.mode) {
                    (Role::User, InferMode::Search) => ("query", Color::Yellow),
                    (Role::User, _) => ("you", Color::Yellow),
                    (Role::Assistant, _) => ("model", Color::Cyan),
                    (Role::Context, InferMode::Search) => ("nearest chunks", Color::Green),
                    (Role::Context, _) => ("retrieved context", Color::Green),
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
            let hint = match app.infer.mode {
                InferMode::Chat => {
                    "Press enter to type a prompt; the answer streams in token by token."
                }
                InferMode::Search => {
                    "Press enter to type a query; the nearest chunks of the documents are listed with their cosine scores."
                }
                InferMode::Rag => {
                    "Press enter to type a question; the retrieved chunks are shown, then the answer streams in."
                }
            };
            lines.push(Line::from("nothing asked yet".dark_gray()));
            lines.push(Line::from(hint.dark_gray()));
            if app.infer.mode != InferMode::Chat {
                lines.push(Line::from(
                    format!(
                        "documents: {} · {} chunks · m switches mode, s edits settings",
                        app.infer.docs, app.infer.top_k
                    )
                    .dark_gray(),
                ));
            }
        }
    }
    let room = chat.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(room);
    let title = match (app.infer.mode, target) {
        (InferMode::Chat, Some(t)) => format!(" Chat · {} ", t.label),
        (InferMode::Search, Some(t)) => format!(" Search {} · {} ", app.infer.docs, t.label),
        (InferMode::Rag, Some(t)) => format!(
            " RAG over {} · {} · retrieval {} ",
            app.infer.docs,
            t.label,
            app.rag_encoder().map_or("?".into(), |e| e.label)
        ),
        (_, None) => " Chat ".into(),
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

//! Draws the Inference tab: the model list, the settings, the conversation (or the retrieved
//! chunks), the prompt and a status line with the live tokens/s.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use ratatui::Frame;

use super::{InferFocus, InferMode, InferState, Role, Targets, SAMPLING_FIELDS};
use crate::tui::widgets::{format, panel, SELECTED};

/// Draws the tab, offering the models `models` lists.
pub fn draw(f: &mut Frame, inf: &InferState, models: &Targets, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Length(36), Constraint::Min(30)]).areas(area);
    let [tl, sl] = Layout::vertical([
        Constraint::Min(4),
        Constraint::Length(SAMPLING_FIELDS.len() as u16 + 2),
    ])
    .areas(left);
    let targets = inf.mode_targets(models);
    let selected = inf.mode_selected().min(targets.len().saturating_sub(1));
    let w = tl.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = targets
        .iter()
        .map(|t| {
            let n = inf
                .histories
                .get(&inf.history_key(t))
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
        if inf.mode == InferMode::Search {
            "Encoder"
        } else {
            "Model"
        },
        inf.mode.label()
    );
    f.render_stateful_widget(
        List::new(items)
            .block(panel(list_title, inf.focus == InferFocus::Targets))
            .highlight_style(SELECTED),
        tl,
        &mut state,
    );
    let sampling_on = matches!(
        inf.focus,
        InferFocus::Sampling(_) | InferFocus::EditingSampling { .. }
    );
    let slines: Vec<Line> = SAMPLING_FIELDS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (cur, val) = match &inf.focus {
                InferFocus::EditingSampling { field, value } if *field == i => {
                    (true, value.editing_span())
                }
                InferFocus::Sampling(j) if *j == i => (true, Span::raw(inf.sampling_value(i))),
                _ => (false, Span::raw(inf.sampling_value(i))),
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
        Paragraph::new(slines).block(panel(" Settings (s) ", sampling_on)),
        sl,
    );

    let [chat, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(right);
    let target = targets.get(selected);
    let history = target.and_then(|t| inf.histories.get(&inf.history_key(t)));
    let width = chat.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    match history {
        Some(h) if !h.is_empty() => {
            for (i, turn) in h.iter().enumerate() {
                let (who, color) = match (turn.role, inf.mode) {
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
                let streaming_this = i + 1 == h.len() && inf.streaming.is_some();
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
            let hint = match inf.mode {
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
            if inf.mode != InferMode::Chat {
                lines.push(Line::from(
                    format!(
                        "documents: {} · {} chunks · m switches mode, s edits settings",
                        inf.docs, inf.top_k
                    )
                    .dark_gray(),
                ));
            }
        }
    }
    let room = chat.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(room);
    let title = match (inf.mode, target) {
        (InferMode::Chat, Some(t)) => format!(" Chat · {} ", t.label),
        (InferMode::Search, Some(t)) => format!(" Search {} · {} ", inf.docs, t.label),
        (InferMode::Rag, Some(t)) => format!(
            " RAG over {} · {} · retrieval {} ",
            inf.docs,
            t.label,
            inf.rag_encoder(models).map_or("?".into(), |e| e.label)
        ),
        (_, None) => " Chat ".into(),
    };
    f.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
            .block(Block::bordered().title(title)),
        chat,
    );
    let typing = inf.focus == InferFocus::Prompt;
    let shown = inf
        .input
        .tail(input.width.saturating_sub(4) as usize, typing);
    f.render_widget(
        Paragraph::new(shown).block(panel(
            if typing {
                " Prompt (enter sends, esc leaves) "
            } else {
                " Prompt (enter to type) "
            },
            typing,
        )),
        input,
    );
    let mut st = Vec::new();
    if let Some(s) = &inf.streaming {
        st.push(Span::styled(
            "streaming ",
            Style::default().fg(Color::Cyan).bold(),
        ));
        st.push(Span::raw(format!("{} tokens", s.tokens)));
        if let Some(tps) = inf.streaming_tps() {
            st.push(Span::raw(format!(" · {tps:.1} tokens/s")));
        }
        st.push(Span::raw(" · "));
    }
    st.push(Span::styled(
        inf.status.clone(),
        Style::default().fg(Color::Gray),
    ));
    f.render_widget(Paragraph::new(Line::from(st)), status);
}

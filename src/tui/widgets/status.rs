//! A run's status as a coloured word.
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;

use crate::runs::registry::RunStatus;

pub fn color(status: &RunStatus) -> Color {
    match status {
        RunStatus::Queued => Color::Yellow,
        RunStatus::Running => Color::Cyan,
        RunStatus::Done(_) => Color::Green,
        RunStatus::Stopped => Color::Magenta,
        RunStatus::Failed(_) => Color::Red,
    }
}

/// A one-character marker for lists.
pub fn symbol(status: &RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "…",
        RunStatus::Running => "▶",
        RunStatus::Done(_) => "✓",
        RunStatus::Stopped => "■",
        RunStatus::Failed(_) => "✗",
    }
}

/// The status word, coloured (bold while running).
pub fn badge(status: &RunStatus) -> Span<'static> {
    let mut style = Style::default().fg(color(status));
    if matches!(status, RunStatus::Running | RunStatus::Failed(_)) {
        style = style.add_modifier(Modifier::BOLD);
    }
    Span::styled(status.word(), style)
}

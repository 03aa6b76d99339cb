//! Small pieces shared by the tabs: one widget per file, each a pure function of the data it
//! is given — except `text_field`, which also keeps the text being typed and edits it on keys.
pub mod chart;
pub mod format;
pub mod gauge;
pub mod popup;
pub mod status;
pub mod table;
pub mod text_field;

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Block;

/// The selected row of a list: a background that keeps the row's own colours readable.
pub const SELECTED: Style = Style::new()
    .bg(Color::Indexed(238))
    .add_modifier(Modifier::BOLD);

/// A bordered panel titled `title`, its border bright while it has the keys, dim otherwise.
pub fn panel<'a>(title: impl Into<Line<'a>>, focused: bool) -> Block<'a> {
    let color = if focused {
        Color::Cyan
    } else {
        Color::DarkGray
    };
    Block::bordered()
        .title(title)
        .border_style(Style::default().fg(color))
}

/// A list selection moved by `d` rows, kept within a list of `n` (0 when it is empty).
pub fn step(cur: usize, d: isize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (cur as isize + d).clamp(0, n as isize - 1) as usize
}

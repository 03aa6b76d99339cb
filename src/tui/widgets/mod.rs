//! Small drawing pieces shared by the tabs: one widget per file, each a pure function of the
//! data it is given.
pub mod chart;
pub mod format;
pub mod gauge;
pub mod popup;
pub mod status;
pub mod table;

use ratatui::style::{Color, Modifier, Style};

/// The selected row of a list: a background that keeps the row's own colours readable.
pub const SELECTED: Style = Style::new()
    .bg(Color::Indexed(238))
    .add_modifier(Modifier::BOLD);

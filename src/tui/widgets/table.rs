//! A plain table with a bold header row and a highlighted row.
use ratatui::layout::Constraint;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, Cell, Row, Table};

pub fn table<'a>(
    headers: &[&'a str],
    rows: Vec<Vec<Cell<'a>>>,
    widths: &[Constraint],
    block: Block<'a>,
) -> Table<'a> {
    let header = Row::new(headers.iter().map(|h| Cell::from(*h)))
        .style(
            Style::default()
                .fg(Color::Gray)
                .add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        )
        .bottom_margin(0);
    Table::new(rows.into_iter().map(Row::new), widths.to_vec())
        .header(header)
        .block(block)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
}

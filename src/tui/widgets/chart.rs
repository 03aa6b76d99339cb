//! A line chart of one or more series, with an optional horizontal reference line (the
//! predicted memory peak) and an empty state that says what it waits for.
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Chart, Dataset, GraphType, LegendPosition, Paragraph, Widget, Wrap,
};

/// One curve.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: Color,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, color: Color) -> Self {
        Self {
            name: name.into(),
            points,
            color,
        }
    }
}

/// A horizontal line across the chart (e.g. predicted peak memory).
#[derive(Debug, Clone)]
pub struct HLine {
    pub name: String,
    pub y: f64,
    pub color: Color,
}

pub struct LineChart<'a> {
    pub title: Line<'a>,
    pub series: Vec<Series>,
    pub hlines: Vec<HLine>,
    pub x_title: &'a str,
    pub y_fmt: fn(f64) -> String,
    pub x_fmt: fn(f64) -> String,
    /// Shown instead of a chart while no series has points.
    pub empty: &'a str,
    /// Start the y axis at zero (memory, throughput) instead of the data's minimum (loss).
    pub y_from_zero: bool,
    pub border_style: Style,
}

fn plain(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

impl<'a> LineChart<'a> {
    pub fn new(title: impl Into<Line<'a>>) -> Self {
        Self {
            title: title.into(),
            series: Vec::new(),
            hlines: Vec::new(),
            x_title: "",
            y_fmt: plain,
            x_fmt: plain,
            empty: "no data yet",
            y_from_zero: false,
            border_style: Style::default(),
        }
    }

    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    pub fn hline(mut self, h: Option<HLine>) -> Self {
        self.hlines.extend(h);
        self
    }

    pub fn x_title(mut self, t: &'a str) -> Self {
        self.x_title = t;
        self
    }

    pub fn y_fmt(mut self, f: fn(f64) -> String) -> Self {
        self.y_fmt = f;
        self
    }

    pub fn x_fmt(mut self, f: fn(f64) -> String) -> Self {
        self.x_fmt = f;
        self
    }

    pub fn empty(mut self, text: &'a str) -> Self {
        self.empty = text;
        self
    }

    pub fn from_zero(mut self) -> Self {
        self.y_from_zero = true;
        self
    }

    pub fn border_style(mut self, s: Style) -> Self {
        self.border_style = s;
        self
    }

    /// (x range, y range) covering every point and reference line, padded a little.
    fn bounds(&self) -> Option<([f64; 2], [f64; 2])> {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        let mut any = false;
        for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            any = true;
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !any {
            return None;
        }
        for h in &self.hlines {
            y0 = y0.min(h.y);
            y1 = y1.max(h.y);
        }
        if self.y_from_zero {
            y0 = y0.min(0.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let span = (y1 - y0).abs();
        let pad = if span > 0.0 {
            span * 0.08
        } else {
            y1.abs().max(1.0) * 0.1
        };
        // Non-negative data (losses, rates, bytes) never gets a negative axis.
        let lo = if self.y_from_zero && y0 >= 0.0 {
            y0
        } else if y0 >= 0.0 {
            (y0 - pad).max(0.0)
        } else {
            y0 - pad
        };
        Some(([x0, x1], [lo, y1 + pad]))
    }
}

impl Widget for LineChart<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered()
            .title(self.title.clone())
            .border_style(self.border_style);
        let Some((xb, yb)) = self.bounds() else {
            Paragraph::new(Line::from(self.empty.dark_gray()))
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: true })
                .block(block)
                .render(area, buf);
            return;
        };
        let hline_pts: Vec<[(f64, f64); 2]> = self
            .hlines
            .iter()
            .map(|h| [(xb[0], h.y), (xb[1], h.y)])
            .collect();
        let mut datasets: Vec<Dataset> = Vec::new();
        for (h, pts) in self.hlines.iter().zip(&hline_pts) {
            datasets.push(
                Dataset::default()
                    .name(h.name.clone())
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::default().fg(h.color))
                    .data(pts),
            );
        }
        for s in &self.series {
            // A single point is drawn as a dot; a line needs two.
            let graph = if s.points.len() > 1 {
                GraphType::Line
            } else {
                GraphType::Scatter
            };
            datasets.push(
                Dataset::default()
                    .name(s.name.clone())
                    .marker(Marker::Braille)
                    .graph_type(graph)
                    .style(Style::default().fg(s.color))
                    .data(&s.points),
            );
        }
        let xl = vec![
            Span::raw((self.x_fmt)(xb[0])),
            Span::raw((self.x_fmt)((xb[0] + xb[1]) / 2.0)),
            Span::raw((self.x_fmt)(xb[1])),
        ];
        let yl = vec![
            Span::raw((self.y_fmt)(yb[0])),
            Span::raw((self.y_fmt)((yb[0] + yb[1]) / 2.0)),
            Span::raw((self.y_fmt)(yb[1])),
        ];
        Chart::new(datasets)
            .block(block)
            .x_axis(
                Axis::default()
                    .title(self.x_title.dark_gray())
                    .bounds(xb)
                    .labels(xl)
                    .style(Style::default().fg(Color::Gray)),
            )
            .y_axis(
                Axis::default()
                    .bounds(yb)
                    .labels(yl)
                    .style(Style::default().fg(Color::Gray)),
            )
            .legend_position(Some(LegendPosition::TopRight))
            .hidden_legend_constraints((Constraint::Percentage(60), Constraint::Percentage(60)))
            .render(area, buf);
    }
}

/// Colours for overlaid runs, distinct on dark and light terminals.
pub const PALETTE: [Color; 8] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::LightRed,
    Color::LightBlue,
    Color::White,
    Color::LightGreen,
];

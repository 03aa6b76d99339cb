//! Progress of a run: a bar with step, percentage and time left.
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::{Gauge, Widget};

use super::format;

pub struct Progress {
    pub step: usize,
    pub total: Option<usize>,
    pub ratio: f64,
    pub eta_secs: Option<f64>,
    pub elapsed_secs: Option<f64>,
    pub color: Color,
}

impl Progress {
    /// "step 12/60 · 20% · ETA 1m 20s"
    pub fn label(&self) -> String {
        let total = self
            .total
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into());
        let mut s = format!("step {}/{total} · {:.0}%", self.step, self.ratio * 100.0);
        if let Some(e) = self.elapsed_secs {
            s.push_str(&format!(" · {} elapsed", format::duration(e)));
        }
        if let Some(eta) = self.eta_secs {
            s.push_str(&format!(" · ETA {}", format::duration(eta)));
        }
        s
    }
}

impl Widget for Progress {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let label = self.label();
        Gauge::default()
            .ratio(self.ratio.clamp(0.0, 1.0))
            .label(label)
            .use_unicode(true)
            .gauge_style(Style::default().fg(self.color).bg(Color::Black))
            .render(area, buf);
    }
}

//! The help overlay's text.
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span, Text};

fn row(key: &'static str, what: &'static str) -> Line<'static> {
    Line::from(vec![
        Span::styled(
            format!("  {key:<12}"),
            Style::default().fg(Color::Cyan).bold(),
        ),
        Span::raw(what),
    ])
}

pub fn text() -> Text<'static> {
    let h = |s: &'static str| Line::from(s.bold().yellow());
    Text::from(vec![
        h("everywhere"),
        row(
            "1 2 3 4",
            "Presets · Runs · Compare · Inference (or Tab / Shift-Tab)",
        ),
        row("?", "this help"),
        row("q, ctrl-c", "quit (asks first while runs are live)"),
        row("mouse", "click a tab; wheel moves the selection"),
        row("← → home end", "move the cursor in the text being typed"),
        h("Presets"),
        row("↑↓ space", "select; mark several for one launch"),
        row(
            "e",
            "edit batch size, sequence length, LoRA rank, lr, steps",
        ),
        row(
            "enter / l",
            "launch the marked presets (or the selected one)",
        ),
        row("r", "reset this preset's edits"),
        h("Runs"),
        row("↑↓", "select a run (live and past: runs/ is the history)"),
        row("s", "stop it (checkpoint saved); again: kill it"),
        row("c / space", "add to / remove from Compare"),
        row("i", "talk to this run's result in Inference"),
        row("+ -", "runs allowed at once per device (default 1: queue)"),
        row("R", "rescan runs/"),
        h("Compare"),
        row("space a", "choose a run / all runs"),
        row("← → m", "metric overlaid in the chart"),
        h("Inference"),
        row(
            "↑↓ enter",
            "pick the base model or a run; type; enter sends",
        ),
        row(
            "m",
            "mode: chat · search (nearest chunks of the documents) · RAG",
        ),
        row(
            "s",
            "settings: sampling, documents folder, chunks retrieved",
        ),
        row("x", "clear this model's conversation"),
        row("esc", "leave the prompt / cancel an answer"),
    ])
}

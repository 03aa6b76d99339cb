//! A one-line text field: a preset field or an Inference setting being changed, and the
//! Inference prompt. The one place that turns keys into typed text, so that every field of
//! the dashboard edits the same way: characters are appended, Backspace deletes the last one
//! (there is no cursor to move).
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::style::{Color, Style};
use ratatui::text::Span;

/// The bar drawn after the text while it is being typed.
const CURSOR: char = '▏';

/// The footer's keys while a field of a form is being typed into.
pub const EDITING_HINTS: [(&str, &str); 3] =
    [("type", "value"), ("enter", "apply"), ("esc", "cancel")];

/// How the editing of a field ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Enter: the text, trimmed.
    Entered(String),
    /// Esc.
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextField {
    text: String,
}

impl TextField {
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn clear(&mut self) {
        self.text.clear();
    }

    /// Applies a key: Backspace deletes the last character, a printable character (with or
    /// without modifiers) is appended, Enter and Esc end the editing. Other keys do nothing.
    pub fn on_key(&mut self, key: &KeyEvent) -> Option<Finished> {
        match key.code {
            KeyCode::Enter => return Some(Finished::Entered(self.text.trim().to_string())),
            KeyCode::Esc => return Some(Finished::Cancelled),
            KeyCode::Backspace => {
                self.text.pop();
            }
            KeyCode::Char(c) if !c.is_control() => self.text.push(c),
            _ => {}
        }
        None
    }

    /// The value being typed into a field of a form: its text and the cursor, highlighted.
    pub fn editing_span(&self) -> Span<'static> {
        Span::styled(
            format!("{}{CURSOR}", self.text),
            Style::default().fg(Color::Black).bg(Color::Yellow),
        )
    }

    /// The end of the text that fits in `width` columns (the last characters typed stay in
    /// view), with the cursor while `typing`.
    pub fn tail(&self, width: usize, typing: bool) -> String {
        let n = self.text.chars().count();
        let mut s: String = self.text.chars().skip(n.saturating_sub(width)).collect();
        if typing {
            s.push(CURSOR);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyModifiers;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn appends_printable_characters_and_backspace_deletes_the_last() {
        let mut f = TextField::new("ab");
        for k in [KeyCode::Char('c'), KeyCode::Backspace, KeyCode::Backspace] {
            assert_eq!(f.on_key(&key(k)), None);
        }
        assert_eq!(f.text(), "a");
        // Modifiers do not change what a character types.
        f.on_key(&KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(f.text(), "au");
        for k in [KeyCode::Left, KeyCode::Delete, KeyCode::Char('\u{7}')] {
            assert_eq!(f.on_key(&key(k)), None, "{k:?}");
        }
        assert_eq!(f.text(), "au");
        f.clear();
        f.on_key(&key(KeyCode::Backspace));
        assert_eq!(f.text(), "");
    }

    #[test]
    fn enter_gives_the_trimmed_text_and_esc_cancels() {
        let mut f = TextField::new(" 2e-4 ");
        assert_eq!(
            f.on_key(&key(KeyCode::Enter)),
            Some(Finished::Entered("2e-4".into()))
        );
        assert_eq!(f.on_key(&key(KeyCode::Esc)), Some(Finished::Cancelled));
        assert_eq!(f.text(), " 2e-4 ", "ending the editing keeps the text");
    }

    #[test]
    fn the_tail_keeps_the_last_characters_in_view() {
        let f = TextField::new("héllo world");
        assert_eq!(f.tail(5, false), "world");
        assert_eq!(f.tail(5, true), "world▏");
        assert_eq!(f.tail(50, false), "héllo world");
        assert_eq!(f.editing_span().content, "héllo world▏");
    }
}

//! A one-line text field: a preset field or an Inference setting being changed, and the
//! Inference prompt. The one place that turns keys into typed text, so that every field of
//! the dashboard edits the same way: a cursor that Left/Right/Home/End move, characters
//! inserted at it, Backspace deleting the character before it and Delete the one after.
//! The cursor moves by whole characters (a Japanese character is one step, never a byte).
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::style::{Color, Style};
use ratatui::text::Span;

use super::format::char_width;

/// The bar drawn at the cursor while the text is being typed.
const CURSOR: char = '▏';

/// The footer's keys while a field of a form is being typed into.
pub const EDITING_HINTS: [(&str, &str); 4] = [
    ("type", "value"),
    ("←→", "move"),
    ("enter", "apply"),
    ("esc", "cancel"),
];

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
    /// Where typing goes, in characters from the start (0..=number of characters).
    cursor: usize,
}

impl TextField {
    /// A field holding `text`, the cursor after its last character.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let cursor = text.chars().count();
        Self { text, cursor }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor, in characters from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
    }

    fn len(&self) -> usize {
        self.text.chars().count()
    }

    /// The byte offset of the `i`-th character (the end of the text past the last one).
    fn byte_at(&self, i: usize) -> usize {
        self.text
            .char_indices()
            .nth(i)
            .map_or(self.text.len(), |(b, _)| b)
    }

    /// Applies a key: Left/Right/Home/End move the cursor, a printable character (with or
    /// without modifiers) is inserted at it, Backspace deletes the character before it,
    /// Delete the one under it; Enter and Esc end the editing. Other keys do nothing.
    pub fn on_key(&mut self, key: &KeyEvent) -> Option<Finished> {
        match key.code {
            KeyCode::Enter => return Some(Finished::Entered(self.text.trim().to_string())),
            KeyCode::Esc => return Some(Finished::Cancelled),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.len()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.len(),
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.text.remove(self.byte_at(self.cursor));
            }
            KeyCode::Delete if self.cursor < self.len() => {
                self.text.remove(self.byte_at(self.cursor));
            }
            KeyCode::Char(c) if !c.is_control() => {
                self.text.insert(self.byte_at(self.cursor), c);
                self.cursor += 1;
            }
            _ => {}
        }
        None
    }

    /// The text with the cursor bar at the cursor.
    fn with_cursor(&self) -> String {
        let mut s = self.text.clone();
        s.insert(self.byte_at(self.cursor), CURSOR);
        s
    }

    /// The value being typed into a field of a form: its text and the cursor, highlighted.
    pub fn editing_span(&self) -> Span<'static> {
        Span::styled(
            self.with_cursor(),
            Style::default().fg(Color::Black).bg(Color::Yellow),
        )
    }

    /// The part of the text that fits in `width` columns (wide characters count two), with
    /// the cursor bar while `typing`: the end of the text, or — when the cursor is left of
    /// that — the text from the cursor on, so the cursor is always in view.
    pub fn tail(&self, width: usize, typing: bool) -> String {
        let chars: Vec<char> = self.text.chars().collect();
        let mut start = chars.len();
        let mut used = 0;
        while start > 0 && used + char_width(chars[start - 1]) <= width {
            start -= 1;
            used += char_width(chars[start]);
        }
        let (start, end) = if !typing || start <= self.cursor {
            (start, chars.len())
        } else {
            let mut end = self.cursor;
            let mut used = 0;
            while end < chars.len() && used + char_width(chars[end]) <= width {
                used += char_width(chars[end]);
                end += 1;
            }
            (self.cursor, end)
        };
        let mut s: String = chars[start..end].iter().collect();
        if typing {
            let at: usize = chars[start..self.cursor].iter().map(|c| c.len_utf8()).sum();
            s.insert(at, CURSOR);
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

    fn keys(f: &mut TextField, codes: &[KeyCode]) {
        for k in codes {
            assert_eq!(f.on_key(&key(*k)), None, "{k:?}");
        }
    }

    #[test]
    fn appends_printable_characters_and_backspace_deletes_the_last() {
        let mut f = TextField::new("ab");
        keys(
            &mut f,
            &[KeyCode::Char('c'), KeyCode::Backspace, KeyCode::Backspace],
        );
        assert_eq!(f.text(), "a");
        // Modifiers do not change what a character types.
        f.on_key(&KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(f.text(), "au");
        // Control characters and Delete at the end type nothing.
        keys(&mut f, &[KeyCode::Delete, KeyCode::Char('\u{7}')]);
        assert_eq!(f.text(), "au");
        f.clear();
        f.on_key(&key(KeyCode::Backspace));
        assert_eq!(f.text(), "");
        assert_eq!(f.cursor(), 0);
    }

    #[test]
    fn the_cursor_moves_by_characters_and_edits_happen_at_it() {
        let mut f = TextField::new("日本語");
        assert_eq!(f.cursor(), 3);
        // Left twice: between 日 and 本; typing inserts there.
        keys(&mut f, &[KeyCode::Left, KeyCode::Left, KeyCode::Char('の')]);
        assert_eq!(f.text(), "日の本語");
        assert_eq!(f.editing_span().content, "日の▏本語");
        // Delete removes the character after the cursor, Backspace the one before.
        keys(&mut f, &[KeyCode::Delete]);
        assert_eq!(f.text(), "日の語");
        keys(&mut f, &[KeyCode::Backspace, KeyCode::Backspace]);
        assert_eq!(f.text(), "語");
        // At the start, Backspace and Left do nothing; Home and End jump.
        keys(&mut f, &[KeyCode::Backspace, KeyCode::Left]);
        assert_eq!((f.text(), f.cursor()), ("語", 0));
        keys(&mut f, &[KeyCode::End, KeyCode::Char('!'), KeyCode::Home]);
        keys(&mut f, &[KeyCode::Char('a')]);
        assert_eq!(f.text(), "a語!");
        // Right stops at the end; Delete there does nothing.
        keys(&mut f, &[KeyCode::Right; 5]);
        keys(&mut f, &[KeyCode::Delete]);
        assert_eq!((f.text(), f.cursor()), ("a語!", 3));
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

    #[test]
    fn the_view_follows_the_cursor_and_counts_wide_characters_twice() {
        let mut f = TextField::new("hello world");
        keys(&mut f, &[KeyCode::Home, KeyCode::Right]);
        // The cursor is left of the last five characters: the view starts at it.
        assert_eq!(f.tail(5, true), "▏ello ");
        assert_eq!(f.tail(5, false), "world", "not typing: the end, as before");
        // Japanese takes two columns a character: six columns hold three.
        let f = TextField::new("日本語の文");
        assert_eq!(f.tail(6, true), "語の文▏");
    }
}

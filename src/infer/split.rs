//! A recursive text splitter for retrieval, as users of LangChain's
//! `RecursiveCharacterTextSplitter` know it: text is cut at the strongest boundary that
//! makes pieces small enough — paragraphs, then lines, then sentences (`.` `!` `?` followed
//! by a space, and Japanese `。` `！` `？`), then words, then characters — and the pieces are
//! packed greedily into chunks of at most `chunk_size` characters, each chunk starting with
//! up to `chunk_overlap` characters of whole pieces from the end of the previous one.
//!
//! Chunks are spans of the original text (byte ranges, on character boundaries): nothing is
//! lost or rewritten, consecutive chunks touch or overlap, and an overlap is never longer
//! than `chunk_overlap` characters. Sizes are counted in characters (`char`s), so Japanese
//! and English text are measured alike.
use anyhow::{bail, Result};

/// Chunk size and overlap, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitConfig {
    pub chunk_size: usize,
    pub chunk_overlap: usize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            chunk_size: 400,
            chunk_overlap: 80,
        }
    }
}

impl SplitConfig {
    pub fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 {
            bail!("chunk size must be at least 1 character");
        }
        if self.chunk_overlap >= self.chunk_size {
            bail!(
                "chunk overlap ({}) must be smaller than the chunk size ({})",
                self.chunk_overlap,
                self.chunk_size
            );
        }
        Ok(())
    }
}

/// A span of the split text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset just past the last character.
    pub end: usize,
    /// `text[start..end]`.
    pub text: String,
}

impl Chunk {
    pub fn chars(&self) -> usize {
        self.text.chars().count()
    }
}

/// Boundary strengths, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Paragraph,
    Line,
    Sentence,
    Word,
    Char,
}

const LEVELS: [Level; 5] = [
    Level::Paragraph,
    Level::Line,
    Level::Sentence,
    Level::Word,
    Level::Char,
];

/// Closing quotes and brackets that stay with the sentence they end.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '」' | '』' | '）' | ')' | '"' | '\'' | '”' | '’' | '】' | '》' | '〉' | ']'
    )
}

/// Sentence enders that end a sentence by themselves (no space needed after them).
fn is_cjk_ender(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '．')
}

/// Byte offsets (exclusive ends) where `text` may be cut at `level`; each piece keeps its
/// separator (the whitespace or punctuation that ends it). The last piece runs to the end.
fn cut_points(text: &str, level: Level) -> Vec<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let end_of = |i: usize| if i < n { chars[i].0 } else { text.len() };
    let mut cuts = Vec::new();
    let mut i = 0;
    match level {
        Level::Char => {
            cuts.extend(chars.iter().skip(1).map(|&(b, _)| b));
        }
        Level::Paragraph | Level::Line => {
            let need = if level == Level::Paragraph { 2 } else { 1 };
            while i < n {
                if chars[i].1.is_whitespace() {
                    // A run of whitespace; it separates paragraphs if it holds ≥ 2 newlines.
                    let mut j = i;
                    let mut newlines = 0;
                    while j < n && chars[j].1.is_whitespace() {
                        if chars[j].1 == '\n' {
                            newlines += 1;
                        }
                        j += 1;
                    }
                    if newlines >= need && j < n {
                        cuts.push(end_of(j));
                    }
                    i = j;
                } else {
                    i += 1;
                }
            }
        }
        Level::Sentence => {
            while i < n {
                let c = chars[i].1;
                let latin = matches!(c, '.' | '!' | '?');
                if latin || is_cjk_ender(c) {
                    let mut j = i + 1;
                    // Runs like "?!" or "。」" stay together.
                    while j < n
                        && (matches!(chars[j].1, '.' | '!' | '?')
                            || is_cjk_ender(chars[j].1)
                            || is_closer(chars[j].1))
                    {
                        j += 1;
                    }
                    let ws_start = j;
                    while j < n && chars[j].1.is_whitespace() {
                        j += 1;
                    }
                    // A Latin ender needs whitespace after it ("3.5" and "e.g." mid-word
                    // are not sentence ends); a CJK one does not.
                    if (is_cjk_ender(c) || j > ws_start) && j < n {
                        cuts.push(end_of(j));
                    }
                    i = j.max(i + 1);
                } else {
                    i += 1;
                }
            }
        }
        Level::Word => {
            while i < n {
                if chars[i].1.is_whitespace() {
                    let mut j = i;
                    while j < n && chars[j].1.is_whitespace() {
                        j += 1;
                    }
                    if j < n && i > 0 {
                        cuts.push(end_of(j));
                    }
                    i = j;
                } else {
                    i += 1;
                }
            }
        }
    }
    cuts
}

/// Pieces of `text[start..end]` of at most `size` characters each, as byte ranges that
/// tile the span, cut at the strongest boundaries that work.
fn segment(
    text: &str,
    start: usize,
    end: usize,
    level: usize,
    size: usize,
    out: &mut Vec<(usize, usize)>,
) {
    let span = &text[start..end];
    if span.chars().count() <= size || level >= LEVELS.len() {
        out.push((start, end));
        return;
    }
    let cuts = cut_points(span, LEVELS[level]);
    if cuts.is_empty() {
        segment(text, start, end, level + 1, size, out);
        return;
    }
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(span.len())) {
        if c > prev {
            segment(text, start + prev, start + c, level + 1, size, out);
        }
        prev = c;
    }
}

/// Splits `text` into overlapping chunks (see the module documentation). Empty text gives
/// no chunks.
pub fn split_text(text: &str, cfg: &SplitConfig) -> Result<Vec<Chunk>> {
    cfg.validate()?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut pieces = Vec::new();
    segment(text, 0, text.len(), 0, cfg.chunk_size, &mut pieces);
    let lens: Vec<usize> = pieces
        .iter()
        .map(|&(s, e)| text[s..e].chars().count())
        .collect();
    let mut chunks = Vec::new();
    // The pieces of the chunk being filled: indices first..next, `len` characters.
    let mut first = 0;
    let mut len = 0;
    for i in 0..pieces.len() {
        if len + lens[i] > cfg.chunk_size && i > first {
            chunks.push((pieces[first].0, pieces[i - 1].1));
            // Keep a tail of whole pieces of at most `chunk_overlap` characters that leaves
            // room for piece i.
            while first < i && (len > cfg.chunk_overlap || len + lens[i] > cfg.chunk_size) {
                len -= lens[first];
                first += 1;
            }
        }
        len += lens[i];
    }
    if first < pieces.len() {
        chunks.push((pieces[first].0, pieces[pieces.len() - 1].1));
    }
    Ok(chunks
        .into_iter()
        .map(|(start, end)| Chunk {
            start,
            end,
            text: text[start..end].to_string(),
        })
        .collect())
}

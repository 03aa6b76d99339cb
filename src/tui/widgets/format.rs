//! Human-readable numbers (bytes, durations, counts, losses) and short names.
use std::path::Path;

/// 1.23 GiB, 456.7 MiB, 12.0 KiB, 512 B.
pub fn bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f >= K * K * K {
        format!("{:.2} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{b} B")
    }
}

pub fn opt_bytes(b: Option<u64>) -> String {
    b.map(bytes).unwrap_or_else(|| "—".into())
}

/// 45s, 3m 07s, 2h 05m.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    }
}

pub fn opt_duration(secs: Option<f64>) -> String {
    secs.map(duration).unwrap_or_else(|| "—".into())
}

/// 2.44M, 134.5M, 1.20B, 950.
pub fn count(n: usize) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e4 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

/// A loss with four decimals, or a dash.
pub fn loss(l: Option<f64>) -> String {
    l.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into())
}

/// A rate with a precision that suits its size.
pub fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// Learning rates and other small numbers: 2e-4 style.
pub fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if (1e-2..1e4).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Cuts `s` to `max` characters with an ellipsis.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else if max == 0 {
        String::new()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Greedy word wrap to `width` columns (characters; wide characters count as two).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(4);
    let mut out = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        let mut w = 0usize;
        for word in para.split_inclusive(' ') {
            let ww: usize = word.chars().map(char_width).sum();
            // The trailing space may hang past the edge.
            let visible: usize = word.trim_end().chars().map(char_width).sum();
            if w + visible > width && w > 0 {
                out.push(std::mem::take(&mut line).trim_end().to_string());
                w = 0;
            }
            if ww > width {
                // A word longer than the line: hard-break it.
                for c in word.chars() {
                    let cw = char_width(c);
                    if w + cw > width {
                        out.push(std::mem::take(&mut line));
                        w = 0;
                    }
                    line.push(c);
                    w += cw;
                }
            } else {
                line.push_str(word);
                w += ww;
            }
        }
        out.push(line.trim_end().to_string());
    }
    out
}

/// Display width of a character: 2 for CJK and other wide ranges, else 1.
pub fn char_width(c: char) -> usize {
    let u = c as u32;
    let wide = matches!(u,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF | 0x20000..=0x3FFFD);
    if wide {
        2
    } else {
        1
    }
}

/// A model spec short enough for a list: the file or directory name of a path.
pub fn short_spec(spec: &str) -> String {
    if spec.contains('/') && !spec.starts_with("hf:") {
        Path::new(spec)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    } else {
        spec.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.00 GiB");
        assert_eq!(duration(187.0), "3m 07s");
        assert_eq!(count(2_442_240), "2.44M");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(wrap("aaa bbb ccc", 7), vec!["aaa bbb", "ccc"]);
        assert_eq!(wrap("日本語日本語", 6), vec!["日本語", "日本語"]);
    }
}

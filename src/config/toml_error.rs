//! Config errors that say where: `line 12: model.dtype: unknown variant `f64`, expected one
//! of `f32`, `bf16`, `f16``. toml's errors carry the byte span of the bad key or value but
//! not its dotted key, so the key is read back from the text: the `key =` on the error's
//! line, under the last `[section]` header above it.

/// `line N: key: message` (the key when the text shows one).
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            format!("line {line}: {}", with_key(text, start, e.message()))
        }
        None => e.message().to_string(),
    }
}

/// `key: message`, for text whose lines mean nothing to the user (a merged table).
pub(super) fn describe_toml_error_key(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => with_key(text, span.start.min(text.len()), e.message()),
        None => e.message().to_string(),
    }
}

fn with_key(text: &str, pos: usize, message: &str) -> String {
    match key_at(text, pos) {
        Some(key) => format!("{key}: {message}"),
        None => message.to_string(),
    }
}

/// The dotted key of the `key = value` line holding byte `pos` of `text`, if it is one.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    let (key, _) = text[line_start..line_end].split_once('=')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|h| h.trim_start_matches('[').split(']').next())
        .map(str::trim);
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::key_at;

    #[test]
    fn keys_are_read_with_their_section() {
        let text = "name = \"t\"\n[model] # the base\nspec = \"x\"\n  dtype = \"f64\"\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("\"t\"").as_deref(), Some("name"));
        assert_eq!(at("\"f64\"").as_deref(), Some("model.dtype"));
        assert_eq!(at("[model]"), None);
    }
}

//! `data.template`: the prompt template a config names. It is a plain string in TOML: a
//! built-in layout, inline Jinja, or a template file. A word that is none of these is a
//! config error when the preset is read, not when training starts.
//!
//! This is only the name; turning it into a prompt template (and reading a template file)
//! is the training data's job (`train::data::PromptTemplate::from_choice`).
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};

/// The layouts ftlab knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuiltinTemplate {
    /// The model's own chat template.
    #[default]
    Chat,
    /// The `### 指示:` layout.
    PlainJa,
    /// The `### Instruction:` layout.
    PlainEn,
}

impl BuiltinTemplate {
    /// The name a config writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::PlainJa => "plain-ja",
            Self::PlainEn => "plain-en",
        }
    }

    /// A name or one of its aliases (`ja`; `en`, `alpaca`), in any case, `_` for `-`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "chat" => Some(Self::Chat),
            "plain-ja" | "ja" => Some(Self::PlainJa),
            "plain-en" | "en" | "alpaca" => Some(Self::PlainEn),
            _ => None,
        }
    }
}

/// A built-in template, inline Jinja, or a template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// `chat`, `plain-ja`, `plain-en` (and their aliases).
    Builtin(BuiltinTemplate),
    /// Inline Jinja text (anything with `{{`).
    Jinja(String),
    /// A Jinja template file, relative to the preset's directory. A value is taken for a file
    /// when it has a path separator or an extension (`my.jinja`, `./layout`), so that a
    /// misspelt name (`chta`) is reported instead of looked for on disk.
    File(PathBuf),
}

impl Default for TemplateChoice {
    fn default() -> Self {
        Self::Builtin(BuiltinTemplate::Chat)
    }
}

impl TemplateChoice {
    /// What a config may write, for error messages.
    pub const ALLOWED: &'static str = "chat, plain-ja, plain-en, a Jinja template (text with \
        {{ … }}) or a template file (a path with a / or an extension)";

    /// A built-in name or inline Jinja; `None` for anything else (files included).
    pub fn inline(s: &str) -> Option<Self> {
        if s.contains("{{") {
            return Some(Self::Jinja(s.to_string()));
        }
        BuiltinTemplate::from_name(s).map(Self::Builtin)
    }
}

impl fmt::Display for TemplateChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(t) => f.write_str(t.name()),
            Self::Jinja(jinja) => f.write_str(jinja),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl FromStr for TemplateChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(t) = Self::inline(s) {
            return Ok(t);
        }
        let path = Path::new(s);
        if s.contains('/') || s.contains('\\') || path.extension().is_some() {
            return Ok(Self::File(path.to_path_buf()));
        }
        bail!("unknown template `{s}`, expected {}", Self::ALLOWED)
    }
}

super::serde_as_string!(TemplateChoice);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inline_jinja_and_files_are_told_apart() {
        let parse = |s: &str| s.parse::<TemplateChoice>().unwrap();
        assert_eq!(
            parse("chat"),
            TemplateChoice::Builtin(BuiltinTemplate::Chat)
        );
        assert_eq!(
            parse("ja"),
            TemplateChoice::Builtin(BuiltinTemplate::PlainJa)
        );
        assert_eq!(
            parse("alpaca"),
            TemplateChoice::Builtin(BuiltinTemplate::PlainEn)
        );
        let jinja = "Q: {{ instruction }}\nA: {{ response }}";
        assert_eq!(parse(jinja), TemplateChoice::Jinja(jinja.into()));
        assert_eq!(parse("t.jinja"), TemplateChoice::File("t.jinja".into()));
        assert_eq!(parse("./t"), TemplateChoice::File("./t".into()));
        for s in ["chat", "plain-ja", "plain-en", jinja, "dir/t.j2"] {
            assert_eq!(parse(s).to_string(), s);
        }
    }

    #[test]
    fn an_unknown_word_names_the_allowed_values() {
        let err = "chta".parse::<TemplateChoice>().unwrap_err().to_string();
        assert!(
            err.contains("`chta`") && err.contains(TemplateChoice::ALLOWED),
            "{err}"
        );
    }
}

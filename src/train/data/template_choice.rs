//! `data.template`: the prompt template a config names. It is a plain string in TOML: a
//! built-in layout, inline Jinja, or a template file. A word that is none of these is a
//! config error when the preset is read, not when training starts.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use super::template::PromptTemplate;

/// A built-in template or a template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// `chat`, `plain-ja`, `plain-en` (and the aliases [`PromptTemplate`] reads), or inline
    /// Jinja text (anything with `{{`).
    Builtin(PromptTemplate),
    /// A Jinja template file, relative to the preset's directory. A value is taken for a file
    /// when it has a path separator or an extension (`my.jinja`, `./layout`), so that a
    /// misspelt name (`chta`) is reported instead of looked for on disk.
    File(PathBuf),
}

impl Default for TemplateChoice {
    fn default() -> Self {
        Self::Builtin(PromptTemplate::Chat)
    }
}

impl TemplateChoice {
    /// What a config may write, for error messages.
    pub const ALLOWED: &'static str = "chat, plain-ja, plain-en, a Jinja template (text with \
        {{ … }}) or a template file (a path with a / or an extension)";

    /// The template, reading a file relative to `base` (the preset's directory).
    pub fn resolve(&self, base: &Path) -> Result<PromptTemplate> {
        match self {
            Self::Builtin(t) => Ok(t.clone()),
            Self::File(p) => {
                let path = base.join(p);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read template", path.display()))?;
                Ok(PromptTemplate::Custom(text))
            }
        }
    }
}

impl fmt::Display for TemplateChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(PromptTemplate::Custom(jinja)) => f.write_str(jinja),
            Self::Builtin(t) => f.write_str(t.name()),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl FromStr for TemplateChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(t) = s.parse::<PromptTemplate>() {
            return Ok(Self::Builtin(t));
        }
        let path = Path::new(s);
        if s.contains('/') || s.contains('\\') || path.extension().is_some() {
            return Ok(Self::File(path.to_path_buf()));
        }
        bail!("unknown template `{s}`, expected {}", Self::ALLOWED)
    }
}

crate::config::serde_as_string!(TemplateChoice);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inline_jinja_and_files_are_told_apart() {
        let parse = |s: &str| s.parse::<TemplateChoice>().unwrap();
        assert_eq!(parse("chat"), TemplateChoice::Builtin(PromptTemplate::Chat));
        assert_eq!(
            parse("ja"),
            TemplateChoice::Builtin(PromptTemplate::PlainJa)
        );
        assert_eq!(
            parse("alpaca"),
            TemplateChoice::Builtin(PromptTemplate::PlainEn)
        );
        let jinja = "Q: {{ instruction }}\nA: {{ response }}";
        assert_eq!(
            parse(jinja),
            TemplateChoice::Builtin(PromptTemplate::Custom(jinja.into()))
        );
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

    #[test]
    fn files_resolve_against_the_preset_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.jinja"), "{{ instruction }}").unwrap();
        let t = TemplateChoice::File("t.jinja".into());
        assert_eq!(
            t.resolve(dir.path()).unwrap(),
            PromptTemplate::Custom("{{ instruction }}".into())
        );
        let err = TemplateChoice::File("missing.jinja".into())
            .resolve(dir.path())
            .unwrap_err();
        assert!(format!("{err:#}").contains("missing.jinja"), "{err:#}");
    }
}

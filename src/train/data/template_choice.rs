//! `data.template` → [`PromptTemplate`]: the config names a template
//! ([`TemplateChoice`], in `config`), the training data turns the name into one, reading a
//! template file relative to the preset.
use std::path::Path;

use anyhow::{Context, Result};

use super::template::PromptTemplate;
pub use crate::config::{BuiltinTemplate, TemplateChoice};

impl From<BuiltinTemplate> for PromptTemplate {
    fn from(t: BuiltinTemplate) -> Self {
        match t {
            BuiltinTemplate::Chat => Self::Chat,
            BuiltinTemplate::PlainJa => Self::PlainJa,
            BuiltinTemplate::PlainEn => Self::PlainEn,
        }
    }
}

impl PromptTemplate {
    /// The template `choice` names, reading a file relative to `base` (the preset's
    /// directory).
    pub fn from_choice(choice: &TemplateChoice, base: &Path) -> Result<Self> {
        match choice {
            TemplateChoice::Builtin(t) => Ok((*t).into()),
            TemplateChoice::Jinja(text) => Ok(Self::Custom(text.clone())),
            TemplateChoice::File(p) => {
                let path = base.join(p);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read template", path.display()))?;
                Ok(Self::Custom(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_inline_jinja_resolve_without_files() {
        let base = Path::new("/nonexistent");
        let resolve = |s: &str| PromptTemplate::from_choice(&s.parse().unwrap(), base).unwrap();
        assert_eq!(resolve("chat"), PromptTemplate::Chat);
        assert_eq!(resolve("ja"), PromptTemplate::PlainJa);
        assert_eq!(resolve("alpaca"), PromptTemplate::PlainEn);
        let jinja = "Q: {{ instruction }}\nA: {{ response }}";
        assert_eq!(resolve(jinja), PromptTemplate::Custom(jinja.into()));
    }

    #[test]
    fn files_resolve_against_the_preset_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.jinja"), "{{ instruction }}").unwrap();
        let t = TemplateChoice::File("t.jinja".into());
        assert_eq!(
            PromptTemplate::from_choice(&t, dir.path()).unwrap(),
            PromptTemplate::Custom("{{ instruction }}".into())
        );
        let err =
            PromptTemplate::from_choice(&TemplateChoice::File("missing.jinja".into()), dir.path())
                .unwrap_err();
        assert!(format!("{err:#}").contains("missing.jinja"), "{err:#}");
    }
}

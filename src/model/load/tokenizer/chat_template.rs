//! The Jinja chat template a model carries: GGUF metadata, or the files of a Hugging Face
//! folder where transformers looks for it.
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};

use super::{display, read_json};

/// The Jinja chat template a GGUF file carries (`tokenizer.chat_template`), if any.
pub fn chat_template_from_gguf(content: &gguf_file::Content) -> Option<String> {
    match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The chat template of a Hugging Face model folder, looked for where transformers looks:
/// `chat_template.jinja`, then `chat_template.json` (`{"chat_template": ...}`), then
/// `tokenizer_config.json`'s `chat_template`, which is a string or a list of
/// `{"name", "template"}` (the one named "default" is taken, else the first).
/// `Ok(None)` when the folder has none.
pub fn chat_template_from_hf_dir(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => return Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", display(&jinja))),
    }
    for file in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        let Some(json) = read_json(&path)? else {
            continue;
        };
        match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
            Some(serde_json::Value::Array(items)) => {
                let named = |item: &serde_json::Value| -> Option<(String, String)> {
                    Some((
                        item.get("name")?.as_str()?.to_string(),
                        item.get("template")?.as_str()?.to_string(),
                    ))
                };
                let list: Vec<(String, String)> = items.iter().filter_map(named).collect();
                if list.len() != items.len() {
                    bail!(
                        "{}: `chat_template` is a list whose entries are not all \
                         {{\"name\": ..., \"template\": ...}}",
                        display(&path)
                    );
                }
                let chosen = list
                    .iter()
                    .find(|(n, _)| n == "default")
                    .or_else(|| list.first());
                return Ok(chosen.map(|(_, t)| t.clone()));
            }
            Some(_) => bail!(
                "{}: `chat_template` should be a string or a list of {{\"name\", \"template\"}}",
                display(&path)
            ),
        }
    }
    Ok(None)
}

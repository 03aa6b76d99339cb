//! The Jinja chat template a model carries: GGUF metadata, or the files of a Hugging Face
//! folder where transformers looks for it.
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};

use super::{display, read_json};

/// The Jinja chat template a GGUF file carries (`tokenizer.chat_template`), if any; for a
/// Gemma file without one (the base models), Gemma's own turn format.
pub fn chat_template_from_gguf(content: &gguf_file::Content) -> Option<String> {
    match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => is_gemma(content).then(|| GEMMA_TURNS.to_string()),
    }
}

/// Gemma's turn format (the template of Google's instruction-tuned Gemma 3, text only):
/// `<start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n…<end_of_turn>\n`, a system
/// message folded into the first user turn, roles alternating. A base Gemma tuned on it
/// answers in the format Gemma chat tooling sends.
pub const GEMMA_TURNS: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}\
{%- set first_user_prefix = '' -%}\
{%- set loop_messages = messages -%}\
{%- endif -%}\
{%- for message in loop_messages -%}\
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
{%- endif -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}\
{{- message['content'] | trim }}{{ '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// A Gemma-family GGUF whose vocabulary has the turn markers.
fn is_gemma(content: &gguf_file::Content) -> bool {
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(a)) => a.as_str(),
        _ => return false,
    };
    let has_turns = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => tokens
            .iter()
            .any(|t| matches!(t, Value::String(s) if s == "<start_of_turn>")),
        _ => false,
    };
    arch.starts_with("gemma") && has_turns
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

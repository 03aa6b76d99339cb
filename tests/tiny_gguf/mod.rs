//! GGUF files with only metadata, written by tests that build tokenizers from it.
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};

/// Writes `metadata` (no tensors) to `dir/name` and reads it back.
pub fn write_gguf(
    dir: &Path,
    name: &str,
    metadata: &[(&str, Value)],
) -> (PathBuf, gguf_file::Content) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &md, &[]).unwrap();
    drop(f);
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    (path, content)
}

/// A GGUF array of strings.
pub fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

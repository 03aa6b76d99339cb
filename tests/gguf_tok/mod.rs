//! GGUF files for tokenizer tests: metadata-only files written by the test, and real model
//! files whose tokenizer is rebuilt once per test binary.
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use ftlab::model::load::tokenizer::tokenizer_from_gguf;
use tokenizers::Tokenizer;

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

/// A real GGUF file's metadata and the tokenizer rebuilt from it.
pub struct Real {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    pub tokenizer: Tokenizer,
}

impl Real {
    /// Reads the metadata of the GGUF at `path` and rebuilds its tokenizer.
    pub fn load(path: PathBuf) -> Self {
        let mut f =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let content = gguf_file::Content::read(&mut f).expect("read GGUF metadata");
        let tokenizer = tokenizer_from_gguf(&content, &path).expect("tokenizer from GGUF");
        Self {
            path,
            content,
            tokenizer,
        }
    }
}

//! Weight and tokenizer loaders (GGUF, safetensors + config.json).
pub mod gguf;
pub mod safetensors;
pub mod source;
pub mod tokenizer;

use std::path::PathBuf;

pub use source::{Init, ParamBuilder, RandomSource, TensorSource};

/// Where a resolved model's weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file (weights, and tokenizer in its metadata).
    Gguf { path: PathBuf },
    /// A folder with config.json, tokenizer.json and `*.safetensors`.
    HfDir { dir: PathBuf },
}

//! Weight and tokenizer loaders (GGUF, safetensors + config.json).
pub mod gguf;
pub mod safetensors;
pub mod source;
pub mod tokenizer;

pub use source::{Init, ParamBuilder, RandomSource, TensorSource};

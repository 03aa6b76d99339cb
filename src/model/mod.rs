//! Trainable model code: ops with a backward pass, the shared linear layer,
//! architectures and weight loaders.
pub mod bert;
pub mod causal;
pub mod export;
pub mod fused;
pub mod gpt_neox;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod load;
pub mod ops;
pub mod tiny;

pub use causal::{ArchConfig, CausalLm, LoadOptions, LoadedCausalLm};

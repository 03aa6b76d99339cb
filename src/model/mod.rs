//! Trainable model code: ops with a backward pass, the shared linear layer,
//! architectures (each with one weight table, see `arch`) and weight loaders.
//! Imports nothing from the layers above it (adapt, train, infer, hub, runs, tui, cli).
pub mod arch;
pub mod bert;
pub mod causal;
pub mod decode_attention;
pub mod decoder;
pub mod export;
pub mod fused;
pub mod fused_attention;
pub mod fused_rows;
pub mod gemma3;
pub mod generic;
pub mod generic_attention;
pub mod generic_rows;
pub mod gpt_neox;
pub mod grad_sink;
pub mod head_loss;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod load;
pub mod ops;
pub mod pool;
pub mod scoped;
pub mod shape;
pub mod tiny;
pub mod vexp;

pub use arch::ArchConfig;
pub use causal::{CausalLm, LoadOptions, LoadedCausalLm};
pub use shape::{Arch, ModelShape, RowOps};

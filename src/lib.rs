//! ftlab: a terminal lab for memory-efficient fine-tuning of language models.
//!
//! Layering (bottom to top): `model` (tensors, architectures, loaders) → `infer`
//! (generation, perplexity, embeddings) → `cli`. Library code never prints to
//! stdout; commands in `cli` do.
pub mod adapt;
pub mod cli;
pub mod config;
pub mod hub;
pub mod infer;
pub mod located;
pub mod model;
pub mod plan;
pub mod runs;
pub mod telemetry;
pub mod train;
pub mod tui;
pub mod weights_file;

//! Command-line subcommands. Each prints for a person; the library below never does.
pub mod bench;
pub mod device;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod index;
pub mod input;
pub mod merge;
pub mod models;
pub mod perplexity;
pub mod plan;
pub mod presets;
pub mod rag;
pub mod search;
pub mod sts;
pub mod train;
pub mod tui;

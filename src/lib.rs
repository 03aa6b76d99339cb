//! ftlab: a terminal lab for memory-efficient fine-tuning of language models.
//!
//! Layering, bottom to top; a module imports only from the rows above its own:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 0 | `located`, `telemetry`, `builtin`, `files`, `weights_file` | located (file:line) data errors; memory samplers (NVML, `/proc`); the presets and datasets compiled into the binary; file writes whose errors name the file; writing safetensors files |
//! | 1 | `model` | tensors and ops with a backward pass, the linear layer and its weight kinds (`model::linear`: frozen matmul, 4-bit codes, LoRA factors), architectures (each with one weight table, `model::arch`), loaders, export |
//! | 2 | `adapt`, `hub`, `plan` | LoRA as a technique (PEFT targets and files, merge, 4-bit base); model specs, cache and downloads; the memory plan |
//! | 3 | `config` | the run config (a preset with overrides) |
//! | 4 | `train`, `infer` | training (data, optimisers, schedules, checkpoints, trainer); generation, perplexity, embeddings, search, RAG |
//! | 5 | `runs`, `locations` | run directories, history, the supervisor of worker processes; where presets and runs are found |
//! | 6 | `tui`, `cli` | the dashboard (draws state, sends commands) and the commands |
//!
//! One exception, a leaf: `runs::layout` (the names of a run directory's files and what
//! a run produced) is read by `train` and `infer`. `config` holds the run's schema as
//! plain values (device, dtype, template, formats, schedule); what they mean is
//! `train`'s. `model` imports nothing from the layers above it and `infer` nothing
//! from `train`. Library code never prints to stdout; commands in `cli` do.
pub mod adapt;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod files;
pub mod hub;
pub mod infer;
pub mod located;
pub mod locations;
pub mod model;
pub mod plan;
pub mod runs;
pub mod telemetry;
pub mod train;
pub mod tui;
pub mod weights_file;

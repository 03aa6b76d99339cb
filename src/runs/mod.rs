//! Run directories: the history of every run, readable after restarts.
//!
//! ```text
//! runs/<id>/config.toml      fully resolved RunConfig
//!          metrics.jsonl    one EventLine per line
//!          checkpoints/step-N/{adapter_config.json, adapter_model.safetensors | model.safetensors,
//!                              optimizer.safetensors, trainer_state.json}
//!          best/            copy of the best checkpoint (lowest eval loss)
//!          adapter/         final LoRA adapter (PEFT layout) — or model/ for full fine-tuning
//!          summary.json
//! ```
pub mod layout;
pub mod registry;
pub mod supervisor;

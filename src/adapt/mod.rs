//! Parameter-efficient adaptation: LoRA adapters and quantised frozen base weights.
pub mod lora;

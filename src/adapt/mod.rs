//! Parameter-efficient adaptation: LoRA adapters and quantised frozen base weights.
pub mod lora;
pub mod nf4;
pub mod peft;
pub mod quant_linear;

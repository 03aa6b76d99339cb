//! Parameter-efficient adaptation as a technique: which layers get LoRA adapters
//! (PEFT target selection, `modules_to_save`), the PEFT file format, merging adapters
//! into the base, and quantising the frozen base to 4 bits (QLoRA). The layer types
//! themselves (LoRA factors, 4-bit codes, frozen matmul) live in `model::linear`.
pub mod finite;
pub mod peft;
pub mod quantize;

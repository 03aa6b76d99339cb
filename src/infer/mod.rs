//! Inference: chat templates, sampling, generation, perplexity, embeddings.
pub mod chat_template;
pub mod embed;
pub mod generate;
pub mod lm;
pub mod perplexity;
pub mod sampling;

pub use lm::LanguageModel;

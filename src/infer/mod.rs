//! Inference: chat templates, sampling, generation, perplexity, embeddings, search, RAG.
pub mod answer;
pub mod chat_template;
pub mod corpus;
pub mod embed;
pub mod generate;
pub mod lm;
pub mod perplexity;
pub mod rag;
pub mod rag_eval;
pub mod sampling;
pub mod search;
pub mod split;

pub use lm::LanguageModel;

//! The instruction-SFT data pipeline, as Hugging Face trl's `SFTTrainer` users know it.
//!
//! 1. [`load_jsonl`] / [`load_files`] read dolly, alpaca or chat JSONL ([`DataFormat`],
//!    detected per file) into [`Record`]s ([`Example`] + file and line), collecting every
//!    malformed line into one [`DataError`].
//! 2. A [`PromptTemplate`] (the model's chat template, the `### 指示:` / `### Instruction:`
//!    layouts, or a Jinja template of your own) splits each example into prompt and response.
//! 3. [`SftTokenizer`] tokenises it with a loss mask on the response (and its end-of-turn
//!    token); [`SftDataset::build`] truncates to `max_seq_len`, drops samples whose response
//!    is cut away (counted in [`SftStats`]) and keeps statistics.
//! 4. [`SftDataset::batches`] makes next-token [`Batch`]es: shuffled, grouped by length, or
//!    packed ([`Batching`]), deterministic per seed and epoch.
//! 5. [`neftune_noise`] adds NEFTune noise to embeddings during training.
pub mod example;
pub mod neftune;
pub mod sft;
pub mod sts;
pub mod template;
pub mod template_choice;

pub use example::{
    keep_languages, load_files, load_jsonl, parse_jsonl, DataError, DataFormat, Example, Problem,
    Record, MAX_LISTED_PROBLEMS,
};
pub use neftune::{neftune_magnitude, neftune_noise};
pub use sft::{
    Batch, Batching, SftConfig, SftDataset, SftSample, SftStats, SftTokenizer, Tokenized,
};
pub use template::{
    user_message, Formatted, Formatter, PromptTemplate, Segment, PLAIN_EN_TEMPLATE,
    PLAIN_JA_TEMPLATE,
};
pub use template_choice::{BuiltinTemplate, TemplateChoice};

//! Semantic search: sentence embeddings in an HNSW index (the `hnsw_rs` crate, cosine
//! distance), saved to and loaded from a directory, queried by text.
//!
//! Layers, bottom up:
//! - [`index`]: [`VectorIndex`], vectors → approximate nearest neighbours by cosine
//!   similarity, with [`exact_search`] as the brute-force reference ([`recall_at_k`]
//!   compares them);
//! - [`saved`]: [`SearchIndex`], a `VectorIndex` plus the text and source of every vector
//!   and the model that embedded them (`index.json`, `docs.jsonl`, `hnsw.hnsw.graph`,
//!   `hnsw.hnsw.data` in one directory);
//! - here: [`Searcher`], a loaded index with its encoder — `search("query", k)` returns
//!   ranked [`Hit`]s (what the CLI prints and the dashboard shows).
//!
//! Documents come from [`crate::infer::corpus`] ([`read_corpus`]); encoders are named like
//! models elsewhere (`minilm`, an HF directory, `hf:org/name`) or by a training run
//! ([`encoder`]: [`load_encoder`]). [`bench`] measures the index on synthetic vectors.
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::infer::embed::Embedder;

pub mod bench;
pub mod encoder;
pub mod index;
pub mod saved;

pub use self::bench::{bench, synthetic_vectors, BenchReport};
pub use crate::infer::corpus::{read_corpus, Doc, Hit};
pub use encoder::load_encoder;
pub use index::{
    dot, exact_search, recall_at_k, DistUnitCosine, HnswParams, Neighbor, VectorIndex, VectorMeta,
};
pub use saved::{index_files, BuildStats, IndexMeta, SearchIndex, INDEX_DOCS, INDEX_META};

/// A loaded index with the encoder that built it: text in, ranked hits out.
pub struct Searcher {
    pub index: SearchIndex,
    pub encoder: Embedder,
    /// What was loaded as the encoder.
    pub model_description: String,
}

impl Searcher {
    /// Loads `dir` and the model recorded in it (with `opts`: its device).
    pub fn open(dir: &Path, opts: &crate::model::LoadOptions) -> Result<Self> {
        let index = SearchIndex::load(dir)?;
        let (encoder, desc) = load_encoder(&index.meta.model, opts)
            .with_context(|| format!("loading the index's model `{}`", index.meta.model))?;
        Self::new(index, encoder, desc)
    }

    /// An index with an already loaded encoder (which must produce its dimension).
    pub fn new(index: SearchIndex, encoder: Embedder, model_description: String) -> Result<Self> {
        if encoder.hidden_size() != index.meta.vectors.dim {
            bail!(
                "the encoder makes {}-dimensional embeddings but the index holds {}-dimensional ones",
                encoder.hidden_size(),
                index.meta.vectors.dim
            );
        }
        Ok(Self {
            index,
            encoder,
            model_description,
        })
    }

    /// The `k` documents most similar to `query`, best first.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let q = self.encoder.embed_query(query)?;
        self.index.search_vector(&q, k)
    }
}

//! The saved index: a directory with `index.json` ([`IndexMeta`]: format, the encoder that
//! embedded the documents, the vector metadata), `docs.jsonl` (one [`Doc`] per vector) and
//! the HNSW graph files.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::index::{hnsw_files, HnswParams, VectorIndex, VectorMeta};
use crate::infer::corpus::{Doc, Hit};
use crate::infer::embed::Embedder;

pub const INDEX_META: &str = "index.json";
pub const INDEX_DOCS: &str = "docs.jsonl";
const FORMAT: &str = "ftlab-index";
const VERSION: u32 = 1;

/// The spec to record for a model: paths made absolute, names kept.
fn portable_spec(spec: &str) -> String {
    let p = Path::new(spec);
    if p.exists() {
        if let Ok(abs) = std::fs::canonicalize(p) {
            return abs.display().to_string();
        }
    }
    spec.to_string()
}

/// `index.json` of an index directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub format: String,
    pub version: u32,
    /// The encoder, as `load_encoder` takes it (paths absolute).
    pub model: String,
    /// What `load_encoder` said it loaded when the index was built.
    pub model_description: String,
    #[serde(flatten)]
    pub vectors: VectorMeta,
    /// Seconds since the Unix epoch.
    pub created: f64,
}

/// Time spent building an index.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BuildStats {
    /// Embedding the documents.
    pub embed_secs: f64,
    /// Inserting the vectors into the HNSW graph.
    pub index_secs: f64,
}

/// Documents, their vectors and the model that embedded them.
pub struct SearchIndex {
    pub meta: IndexMeta,
    pub docs: Vec<Doc>,
    pub vectors: VectorIndex,
}

impl SearchIndex {
    /// Embeds `docs` with `encoder` (`model` is recorded in the index) and indexes them.
    /// `progress(done, total)` is called as documents are embedded.
    pub fn build(
        encoder: &Embedder,
        model: &str,
        model_description: &str,
        docs: Vec<Doc>,
        params: HnswParams,
        batch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Self, BuildStats)> {
        params.validate()?;
        if docs.is_empty() {
            bail!("no documents to index");
        }
        let t0 = Instant::now();
        let mut rows = Vec::with_capacity(docs.len());
        let slice = (batch.max(1) * 8).max(64);
        for group in docs.chunks(slice) {
            let texts: Vec<&str> = group.iter().map(|d| d.text.as_str()).collect();
            rows.extend(encoder.embed_texts(&texts, batch)?);
            progress(rows.len(), docs.len());
        }
        let embed_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let vectors = VectorIndex::build(&rows, params)?;
        let index_secs = t1.elapsed().as_secs_f64();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let index = Self {
            meta: IndexMeta {
                format: FORMAT.into(),
                version: VERSION,
                model: portable_spec(model),
                model_description: model_description.to_string(),
                vectors: vectors.meta(),
                created,
            },
            docs,
            vectors,
        };
        Ok((
            index,
            BuildStats {
                embed_secs,
                index_secs,
            },
        ))
    }

    /// Writes `index.json`, `docs.jsonl` and the HNSW files into `dir`.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        self.meta.vectors = self.vectors.save(dir)?;
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join(INDEX_DOCS))
                .with_context(|| format!("{}: cannot write", dir.join(INDEX_DOCS).display()))?,
        );
        for d in &self.docs {
            writeln!(f, "{}", serde_json::to_string(d)?)?;
        }
        f.flush()?;
        std::fs::write(
            dir.join(INDEX_META),
            serde_json::to_string_pretty(&self.meta)? + "\n",
        )?;
        Ok(())
    }

    /// Loads an index directory written by [`SearchIndex::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(INDEX_META);
        if !dir.is_dir() {
            bail!("{}: no such index directory", dir.display());
        }
        let text = std::fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "{}: cannot read (build an index with `ftlab index build`)",
                meta_path.display()
            )
        })?;
        let meta: IndexMeta = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an ftlab index description", meta_path.display()))?;
        if meta.format != FORMAT || meta.version != VERSION {
            bail!(
                "{}: format {} version {} is not supported (expected {FORMAT} {VERSION})",
                meta_path.display(),
                meta.format,
                meta.version
            );
        }
        let docs_path = dir.join(INDEX_DOCS);
        let docs_text = std::fs::read_to_string(&docs_path)
            .with_context(|| format!("{}: cannot read", docs_path.display()))?;
        let docs: Vec<Doc> = docs_text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: invalid document", docs_path.display(), i + 1))
            })
            .collect::<Result<_>>()?;
        if docs.len() != meta.vectors.count {
            bail!(
                "{}: {} documents, but {INDEX_META} says {}",
                docs_path.display(),
                docs.len(),
                meta.vectors.count
            );
        }
        let vectors = VectorIndex::load(dir, &meta.vectors)?;
        Ok(Self {
            meta,
            docs,
            vectors,
        })
    }

    /// The `k` documents nearest to an embedded query.
    pub fn search_vector(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        Ok(self
            .vectors
            .search(query, k)?
            .into_iter()
            .enumerate()
            .map(|(r, n)| {
                let d = &self.docs[n.id];
                Hit {
                    rank: r + 1,
                    id: n.id,
                    source: d.source.clone(),
                    score: n.score,
                    text: d.text.clone(),
                }
            })
            .collect())
    }
}

/// Where an index directory's files are.
pub fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![dir.join(INDEX_META), dir.join(INDEX_DOCS)];
    files.extend(hnsw_files(dir));
    files
}

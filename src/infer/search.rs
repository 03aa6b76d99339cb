//! Semantic search: sentence embeddings in an HNSW index (the `hnsw_rs` crate, cosine
//! distance), saved to and loaded from a directory, queried by text.
//!
//! Layers, bottom up:
//! - [`VectorIndex`]: vectors → approximate nearest neighbours by cosine similarity, with
//!   [`exact_search`] as the brute-force reference ([`recall_at_k`] compares them);
//! - [`SearchIndex`]: a `VectorIndex` plus the text and source of every vector and the
//!   model that embedded them (`index.json`, `docs.jsonl`, `hnsw.hnsw.graph`,
//!   `hnsw.hnsw.data` in one directory);
//! - [`Searcher`]: a loaded index with its encoder — `search("query", k)` returns ranked
//!   [`Hit`]s (what the CLI prints and the dashboard shows).
//!
//! Encoders are named like models elsewhere (`minilm`, an HF directory, `hf:org/name`) or by
//! a training run: [`load_encoder`] takes an STS run directory (its `best/` checkpoint, else
//! `adapter/` or `model/`), a PEFT adapter directory, or a checkpoint directory.
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::embed::Embedder;
use crate::adapt::peft::{load_adapter_linears, read_peft_config, ADAPTER_CONFIG};
use crate::model::LoadOptions;
use crate::train::sts_task::encoder_dir;

pub const INDEX_META: &str = "index.json";
pub const INDEX_DOCS: &str = "docs.jsonl";
const HNSW_BASENAME: &str = "hnsw";
const FORMAT: &str = "ftlab-index";
const VERSION: u32 = 1;
/// hnsw_rs's maximum number of layers.
const MAX_LAYER: usize = 16;

/// HNSW construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node and layer (`M`; hnsw_rs allows at most 256).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k` is used).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

impl HnswParams {
    pub fn validate(&self) -> Result<()> {
        if !(2..=256).contains(&self.m) {
            bail!("HNSW m (links per node) must be in 2..=256, got {}", self.m);
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            bail!("HNSW ef_construction and ef_search must be at least 1");
        }
        Ok(())
    }
}

/// A neighbour: the vector's id (its insertion position) and cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub id: usize,
    pub score: f32,
}

/// Cosine distance `1 − a·b` of unit vectors: [`VectorIndex`] L2-normalises every vector
/// it stores or is queried with, so this is the cosine distance of the originals. (hnsw_rs's
/// own `DistCosine` recomputes both norms in f64 at every comparison, which made building
/// ~8× slower; its `DistDot` asserts on rounding above 1.)
#[derive(Debug, Default, Clone, Copy)]
pub struct DistUnitCosine;

impl Distance<f32> for DistUnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Dot product with eight independent partial sums (which the compiler vectorises).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Approximate nearest-neighbour index of fixed-dimension vectors under cosine similarity.
pub struct VectorIndex {
    dim: usize,
    len: usize,
    params: HnswParams,
    hnsw: Hnsw<'static, f32, DistUnitCosine>,
}

/// Why a vector cannot be indexed or searched: wrong length, not finite, or zero.
fn check_vector(v: &[f32], dim: usize, what: &str) -> Result<()> {
    if v.len() != dim {
        bail!(
            "{what} has dimension {}, but the index holds vectors of dimension {dim} (was it built with another model?)",
            v.len()
        );
    }
    if v.iter().any(|x| !x.is_finite()) {
        bail!("{what} has a non-finite component");
    }
    if v.iter().all(|&x| x == 0.0) {
        bail!("{what} is all zeros: its cosine similarity is undefined");
    }
    Ok(())
}

/// Metadata of a saved `VectorIndex` (inside `index.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorMeta {
    pub dim: usize,
    pub count: usize,
    pub metric: String,
    pub hnsw: HnswParams,
}

impl VectorIndex {
    /// An empty index for vectors of `dim` components (`capacity` sizes its tables).
    pub fn new(dim: usize, capacity: usize, params: HnswParams) -> Result<Self> {
        params.validate()?;
        if dim == 0 {
            bail!("vectors must have at least one component");
        }
        Ok(Self {
            dim,
            len: 0,
            params,
            hnsw: Hnsw::new(
                params.m,
                capacity.max(1),
                MAX_LAYER,
                params.ef_construction,
                DistUnitCosine,
            ),
        })
    }

    /// Builds an index of `vectors` (ids 0..n in order), inserting in parallel.
    pub fn build(vectors: &[Vec<f32>], params: HnswParams) -> Result<Self> {
        let dim = vectors
            .first()
            .map(Vec::len)
            .ok_or_else(|| anyhow!("no vectors to index"))?;
        let mut index = Self::new(dim, vectors.len(), params)?;
        index.add(vectors)?;
        Ok(index)
    }

    /// Adds vectors with the next ids (`len()..len()+n`).
    pub fn add(&mut self, vectors: &[Vec<f32>]) -> Result<()> {
        for (i, v) in vectors.iter().enumerate() {
            check_vector(v, self.dim, &format!("vector {}", self.len + i))?;
        }
        let unit: Vec<Vec<f32>> = vectors.iter().map(|v| normalize(v)).collect();
        let items: Vec<(&Vec<f32>, usize)> = unit
            .iter()
            .enumerate()
            .map(|(i, v)| (v, self.len + i))
            .collect();
        self.hnsw.parallel_insert(&items);
        self.len += vectors.len();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    /// The `k` nearest vectors to `query` by cosine similarity, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>> {
        if self.is_empty() {
            bail!("the index is empty: build it from a corpus with at least one document");
        }
        check_vector(query, self.dim, "the query vector")?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let ef = self.params.ef_search.max(k);
        let mut out: Vec<Neighbor> = self
            .hnsw
            .search(&normalize(query), k, ef)
            .into_iter()
            .map(|n| Neighbor {
                id: n.d_id,
                score: 1.0 - n.distance,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        out.truncate(k);
        Ok(out)
    }

    fn meta(&self) -> VectorMeta {
        VectorMeta {
            dim: self.dim,
            count: self.len,
            metric: "cosine".into(),
            hnsw: self.params,
        }
    }

    /// Writes the graph and the vectors (`hnsw.hnsw.graph`, `hnsw.hnsw.data`) into `dir`
    /// and returns the metadata to keep with them.
    pub fn save(&self, dir: &Path) -> Result<VectorMeta> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        for suffix in ["graph", "data"] {
            let p = dir.join(format!("{HNSW_BASENAME}.hnsw.{suffix}"));
            if p.exists() {
                std::fs::remove_file(&p)
                    .with_context(|| format!("{}: cannot replace", p.display()))?;
            }
        }
        if !self.is_empty() {
            let name = self
                .hnsw
                .file_dump(dir, HNSW_BASENAME)
                .map_err(|e| anyhow!("{}: cannot write the HNSW graph: {e}", dir.display()))?;
            if name != HNSW_BASENAME {
                bail!(
                    "{}: hnsw_rs wrote the index under another name ({name})",
                    dir.display()
                );
            }
        }
        Ok(self.meta())
    }

    /// Loads an index saved with [`VectorIndex::save`], given its metadata.
    pub fn load(dir: &Path, meta: &VectorMeta) -> Result<Self> {
        if meta.metric != "cosine" {
            bail!(
                "{}: metric `{}` is not supported (cosine only)",
                dir.display(),
                meta.metric
            );
        }
        if meta.count == 0 {
            return Self::new(meta.dim, 1, meta.hnsw);
        }
        for suffix in ["graph", "data"] {
            let p = dir.join(format!("{HNSW_BASENAME}.hnsw.{suffix}"));
            if !p.is_file() {
                bail!("{}: missing (not an ftlab index directory?)", p.display());
            }
        }
        // hnsw_rs ties a reloaded graph to the lifetime of its loader; the loader is a few
        // hundred bytes (the data are copied into the graph), so it is kept for the life of
        // the process.
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, HNSW_BASENAME)));
            io.load_hnsw::<f32, DistUnitCosine>()
        }));
        let hnsw = match loaded {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => bail!("{}: cannot load the HNSW graph: {e}", dir.display()),
            Err(_) => bail!("{}: the HNSW files are corrupt", dir.display()),
        };
        if hnsw.get_nb_point() != meta.count {
            bail!(
                "{}: the graph holds {} vectors but {INDEX_META} says {}",
                dir.display(),
                hnsw.get_nb_point(),
                meta.count
            );
        }
        Ok(Self {
            dim: meta.dim,
            len: meta.count,
            params: meta.hnsw,
            hnsw,
        })
    }
}

fn normalize(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

/// Exact top-`k` by cosine similarity (brute force), best first; ties by id.
pub fn exact_search(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<Neighbor> {
    let q = normalize(query);
    let mut scored: Vec<Neighbor> = vectors
        .iter()
        .enumerate()
        .map(|(id, v)| {
            let norm = dot(v, v).sqrt().max(1e-30);
            Neighbor {
                id,
                score: dot(v, &q) / norm,
            }
        })
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &Neighbor, b: &Neighbor| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
    scored.select_nth_unstable_by(k - 1, cmp);
    scored.truncate(k);
    scored.sort_by(cmp);
    scored
}

/// Mean fraction of the exact top-`k` ids that the index returns in its top `k`.
pub fn recall_at_k(
    index: &VectorIndex,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    k: usize,
) -> Result<f64> {
    if queries.is_empty() || k == 0 {
        bail!("recall needs at least one query and k ≥ 1");
    }
    let found: Vec<usize> = queries
        .par_iter()
        .map(|q| -> Result<usize> {
            let truth = exact_search(vectors, q, k);
            let got = index.search(q, k)?;
            Ok(truth
                .iter()
                .filter(|t| got.iter().any(|g| g.id == t.id))
                .count())
        })
        .collect::<Result<_>>()?;
    let denom = queries.len() * k.min(vectors.len());
    Ok(found.iter().sum::<usize>() as f64 / denom as f64)
}

/// Synthetic embedding-like vectors, normalised and deterministic in `seed`: points of
/// `clusters` Gaussian clusters in a `latent`-dimensional space, mapped linearly into `dim`
/// dimensions, plus a little isotropic noise. Sentence embeddings occupy a low-dimensional
/// part of their space (latent 32 is a fair stand-in); `latent = dim` gives nearly i.i.d.
/// random vectors, the worst case for any graph index. The clusters and the map depend
/// only on (`dim`, `latent`, `clusters`), so data and queries drawn with different seeds
/// come from the same distribution.
pub fn synthetic_vectors(
    n: usize,
    dim: usize,
    latent: usize,
    clusters: usize,
    seed: u64,
) -> Vec<Vec<f32>> {
    let latent = latent.max(1);
    let mut structure = StdRng::seed_from_u64(
        0x00c0_ffee ^ clusters as u64 ^ (dim as u64) << 32 ^ (latent as u64) << 48,
    );
    let mut points = StdRng::seed_from_u64(seed);
    fn gauss(rng: &mut StdRng) -> f32 {
        // Box–Muller.
        let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = rng.gen_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    let proj: Vec<Vec<f32>> = (0..dim)
        .map(|_| (0..latent).map(|_| gauss(&mut structure)).collect())
        .collect();
    let centres: Vec<Vec<f32>> = (0..clusters.max(1))
        .map(|_| (0..latent).map(|_| 2.0 * gauss(&mut structure)).collect())
        .collect();
    let noise = 0.1 * (latent as f32).sqrt();
    (0..n)
        .map(|_| {
            let c = &centres[points.gen_range(0..centres.len())];
            let z: Vec<f32> = c.iter().map(|x| x + gauss(&mut points)).collect();
            let v: Vec<f32> = proj
                .iter()
                .map(|row| dot(row, &z) + noise * gauss(&mut points))
                .collect();
            normalize(&v)
        })
        .collect()
}

/// Throughput and quality of the index on synthetic vectors.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub vectors: usize,
    pub dim: usize,
    /// Dimension of the synthetic data's latent structure.
    pub latent: usize,
    pub queries: usize,
    pub k: usize,
    pub params: HnswParams,
    pub threads: usize,
    pub build_secs: f64,
    pub build_vectors_per_sec: f64,
    /// One query at a time, on one thread.
    pub query_secs: f64,
    pub queries_per_sec: f64,
    /// Brute force, one query at a time, on one thread.
    pub exact_queries_per_sec: f64,
    pub recall_at_k: f64,
}

/// Builds an index of `n` synthetic vectors and times build and queries; recall@k against
/// exact search.
pub fn bench(
    n: usize,
    dim: usize,
    latent: usize,
    queries: usize,
    k: usize,
    params: HnswParams,
    seed: u64,
) -> Result<BenchReport> {
    let clusters = (n / 100).max(1);
    let data = synthetic_vectors(n, dim, latent, clusters, seed);
    let qs = synthetic_vectors(queries.max(1), dim, latent, clusters, seed ^ 0x5eed);
    let t0 = Instant::now();
    let index = VectorIndex::build(&data, params)?;
    let build_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for q in &qs {
        std::hint::black_box(index.search(q, k)?);
    }
    let query_secs = t1.elapsed().as_secs_f64();
    let exact_n = qs.len().min(200);
    let t2 = Instant::now();
    for q in &qs[..exact_n] {
        std::hint::black_box(exact_search(&data, q, k));
    }
    let exact_secs = t2.elapsed().as_secs_f64();
    let recall = recall_at_k(&index, &data, &qs, k)?;
    Ok(BenchReport {
        vectors: n,
        dim,
        latent,
        queries: qs.len(),
        k,
        params,
        threads: rayon::current_num_threads(),
        build_secs,
        build_vectors_per_sec: n as f64 / build_secs.max(1e-9),
        query_secs,
        queries_per_sec: qs.len() as f64 / query_secs.max(1e-9),
        exact_queries_per_sec: exact_n as f64 / exact_secs.max(1e-9),
        recall_at_k: recall,
    })
}

// ------------------------------------------------------------------ encoders

/// Loads a sentence encoder: a model spec (`minilm`, an HF directory, `hf:org/name`), a
/// fully fine-tuned checkpoint directory, a PEFT adapter directory (on its base model), or
/// an STS run directory — its `best/` checkpoint (the best held-out Spearman), else
/// `adapter/`, else `model/`. Returns the encoder and a description of what was loaded.
pub fn load_encoder(spec: &str) -> Result<(Embedder, String)> {
    let opts = LoadOptions::default();
    let path = Path::new(spec);
    if path.is_dir() {
        if path.join(ADAPTER_CONFIG).is_file() {
            let peft = read_peft_config(path)?;
            let base = peft.base_model_name_or_path.clone().ok_or_else(|| {
                anyhow!(
                    "{}: adapter_config.json names no base model (base_model_name_or_path)",
                    path.display()
                )
            })?;
            let mut e = Embedder::from_dir(&encoder_dir(&base)?, &opts)?;
            let device = e.device().clone();
            let dtype = e.model().dtype();
            let vars = load_adapter_linears(path, e.model_mut().linears_mut(), &device, dtype)?;
            // Inference only: no autograd graph behind the embeddings.
            for (_, l) in e.model_mut().linears_mut() {
                l.freeze();
            }
            return Ok((
                e,
                format!(
                    "{base} + LoRA adapter {} ({} tensors)",
                    path.display(),
                    vars.len()
                ),
            ));
        }
        if path.join("config.json").is_file() {
            let e = Embedder::from_dir(path, &opts)?;
            return Ok((e, format!("encoder {}", path.display())));
        }
        if path.join("config.toml").is_file() || path.join("metrics.jsonl").is_file() {
            for sub in ["best", "adapter", "model"] {
                let d = path.join(sub);
                if d.join(ADAPTER_CONFIG).is_file() || d.join("config.json").is_file() {
                    return load_encoder(&d.to_string_lossy());
                }
            }
            bail!(
                "{}: this run has no encoder to load (no best/, adapter/ or model/ with weights); is it an STS run that saved a checkpoint?",
                path.display()
            );
        }
    }
    let dir = encoder_dir(spec)?;
    let e = Embedder::from_dir(&dir, &opts)?;
    Ok((e, format!("encoder {spec} ({})", dir.display())))
}

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

/// Embeddings of `texts` (normalised, one row each), in batches of similar length.
pub fn embed_texts(encoder: &Embedder, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let mut out = vec![Vec::new(); texts.len()];
    for chunk in order.chunks(batch.max(1)) {
        let batch_texts: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let emb = encoder.embed(&batch_texts)?.to_dtype(DType::F32)?;
        for (row, &i) in emb.to_vec2::<f32>()?.into_iter().zip(chunk) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// The embedding of one text.
pub fn embed_query(encoder: &Embedder, text: &str) -> Result<Vec<f32>> {
    if text.trim().is_empty() {
        bail!("the query is empty");
    }
    let emb: Tensor = encoder.embed(&[text])?;
    Ok(emb.to_dtype(DType::F32)?.get(0)?.to_vec1::<f32>()?)
}

// ------------------------------------------------------------------ text index

/// A document (or chunk) of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// Where it came from: `file:line`, a file name, or the `source` of a JSONL line.
    pub source: String,
    pub text: String,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// 1-based.
    pub rank: usize,
    /// Position of the document in the index.
    pub id: usize,
    pub source: String,
    /// Cosine similarity of query and document.
    pub score: f32,
    pub text: String,
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
            rows.extend(embed_texts(encoder, &texts, batch)?);
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

/// A loaded index with the encoder that built it: text in, ranked hits out.
pub struct Searcher {
    pub index: SearchIndex,
    pub encoder: Embedder,
    /// What was loaded as the encoder.
    pub model_description: String,
}

impl Searcher {
    /// Loads `dir` and the model recorded in it.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = SearchIndex::load(dir)?;
        let (encoder, desc) = load_encoder(&index.meta.model)
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
        let q = embed_query(&self.encoder, query)?;
        self.index.search_vector(&q, k)
    }
}

// ------------------------------------------------------------------ corpora

/// Reads a corpus: a `.jsonl` file (`text`, optional `source` or `id`), a text file (one
/// document per non-blank line), or a directory of `.txt` / `.md` files (split into chunks
/// with `split`).
pub fn read_corpus(path: &Path, split: &super::split::SplitConfig) -> Result<Vec<Doc>> {
    if path.is_dir() {
        let docs = super::rag::load_documents(path)?;
        return super::rag::chunk_documents(&docs, split).map(|chunks| {
            chunks
                .into_iter()
                .map(|c| Doc {
                    source: c.source,
                    text: c.text,
                })
                .collect()
        });
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file = path.display().to_string();
    let jsonl = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!(
                    "{file}:{}: not valid UTF-8 (invalid byte at column {})",
                    i + 1,
                    e.valid_up_to() + 1
                ));
                continue;
            }
        };
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            docs.push(Doc {
                source: format!("{file}:{}", i + 1),
                text: line.trim().to_string(),
            });
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => match o.get("text").and_then(|t| t.as_str()) {
                Some(t) if !t.trim().is_empty() => {
                    let source = o
                        .get("source")
                        .or_else(|| o.get("id"))
                        .map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_else(|| format!("{file}:{}", i + 1));
                    docs.push(Doc {
                        source,
                        text: t.to_string(),
                    });
                }
                _ => problems.push(format!(
                    "{file}:{}: expected a non-empty string field `text`",
                    i + 1
                )),
            },
            Ok(_) => problems.push(format!("{file}:{}: expected a JSON object", i + 1)),
            Err(e) => problems.push(format!("{file}:{}: invalid JSON: {e}", i + 1)),
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let shown: Vec<String> = problems.into_iter().take(20).collect();
        bail!(
            "{n} problem{} reading the corpus:\n  {}",
            if n == 1 { "" } else { "s" },
            shown.join("\n  ")
        );
    }
    if docs.is_empty() {
        bail!("{file}: no documents (the corpus is empty)");
    }
    Ok(docs)
}

/// Where an index directory's files are.
pub fn index_files(dir: &Path) -> Vec<PathBuf> {
    [INDEX_META, INDEX_DOCS, "hnsw.hnsw.graph", "hnsw.hnsw.data"]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

//! The vector index: fixed-dimension vectors → approximate nearest neighbours by cosine
//! similarity (an HNSW graph of the `hnsw_rs` crate), saved as hnsw_rs's two files, with
//! [`exact_search`] as the brute-force reference that [`recall_at_k`] compares it with.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The name hnsw_rs gives its files: `hnsw.hnsw.graph`, `hnsw.hnsw.data`.
const HNSW_BASENAME: &str = "hnsw";
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

    pub(super) fn meta(&self) -> VectorMeta {
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
        for p in hnsw_files(dir) {
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
        for p in hnsw_files(dir) {
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
                "{}: the graph holds {} vectors but {} says {}",
                dir.display(),
                hnsw.get_nb_point(),
                super::saved::INDEX_META,
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

/// `v` divided by its L2 norm (unchanged when zero).
pub(super) fn normalize(v: &[f32]) -> Vec<f32> {
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

/// The graph and data files hnsw_rs writes into an index directory.
pub(super) fn hnsw_files(dir: &Path) -> [PathBuf; 2] {
    ["graph", "data"].map(|suffix| dir.join(format!("{HNSW_BASENAME}.hnsw.{suffix}")))
}

//! Throughput and recall of the vector index on synthetic embedding-like vectors
//! (`ftlab index bench`).
use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::index::{dot, exact_search, normalize, recall_at_k, HnswParams, VectorIndex};

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

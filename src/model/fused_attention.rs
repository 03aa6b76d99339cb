//! Attention of a whole sequence as one CPU kernel with its own backward: the
//! flash-attention recipe, for training and prompts.
//!
//! Composed (`ops::grouped_attention_composed`), attention is a dozen candle ops per layer:
//! the key/value heads repeated for grouped queries and copied, `kᵀ` copied contiguous,
//! two batched matmuls, the softmax, the heads merged back by another copy; the graph
//! keeps the scores and the probabilities (two (b, heads, t, s) tensors per layer), and
//! the backward runs four more batched matmuls over transposed copies plus the reductions
//! of the repeated heads. This kernel:
//! - reads q (b, h, t, d) and the un-repeated k/v (b, kv, s, d) where they lie, and writes
//!   the heads merged, (b, t, h·d);
//! - computes, per head and block of [`BLOCK`] queries, only the keys up to the block's
//!   last unmasked one (a causal mask hides half of every score matrix), with `gemm`
//!   directly on strided operands;
//! - keeps for the backward only q, k, v and each row's log-sum-exp (no score-sized
//!   tensor); the backward recomputes the probabilities one key/value group at a time
//!   (two transient score-sized buffers of that group) and writes dq, dk and dv in place.
//!
//! It applies on the CPU, in f32, when the generic path is not forced and the mask, if
//! any, is one additive (t, s) matrix; `ops::grouped_attention` uses it then, the composed
//! ops otherwise. The tests compare it with the composed ops in f64.
use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::fused::f32_slice;
use super::generic::generic_kernels;

/// Queries per task (and keys per task in the backward's key/value pass).
const BLOCK: usize = 64;

/// Whether [`attend`] applies: f32 on the CPU (generic path not forced), q (b, h, t, d)
/// over k/v (b, kv, s, d) with h a multiple of kv, and a (t, s) f32 mask if any.
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> bool {
    let f32_cpu = |x: &Tensor| x.dtype() == DType::F32 && !generic_kernels(x.device());
    let (Ok((b, h, t, d)), Ok((kb, kv, s, kd))) = (q.dims4(), k.dims4()) else {
        return false;
    };
    f32_cpu(q)
        && f32_cpu(k)
        && f32_cpu(v)
        && v.dims() == k.dims()
        && kb == b
        && kd == d
        && kv > 0
        && h % kv == 0
        && mask.is_none_or(|m| f32_cpu(m) && m.dims() == [t, s])
}

/// softmax(scale · q·kᵀ + mask)·v with k/v heads shared by groups of query heads, the
/// heads merged: (b, t, h·d). Check [`applies`] first.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let dims = Dims { b, h, kv, t, s, d };
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    let ends = with_f32(mask.as_ref(), |m| Ok(row_ends(m, t, s)))?;
    let op = Attention {
        dims,
        scale: scale as f32,
        mask,
        ends,
        lse: OnceLock::new(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    s: usize,
    d: usize,
}

impl Dims {
    fn n_rep(&self) -> usize {
        self.h / self.kv
    }

    fn q_blocks(&self) -> usize {
        self.t.div_ceil(BLOCK)
    }

    fn block_rows(&self, qb: usize) -> std::ops::Range<usize> {
        qb * BLOCK..self.t.min((qb + 1) * BLOCK)
    }

    /// Offset of query row i of head hi of batch element bi in q (or dq).
    fn q_at(&self, bi: usize, hi: usize, i: usize) -> usize {
        ((bi * self.h + hi) * self.t + i) * self.d
    }

    /// Offset of key row j of key/value head g of batch element bi in k, v (or dk, dv).
    fn kv_at(&self, bi: usize, g: usize, j: usize) -> usize {
        ((bi * self.kv + g) * self.s + j) * self.d
    }

    /// Offset of row i of head hi of batch element bi in the merged output (b, t, h·d).
    fn y_at(&self, bi: usize, hi: usize, i: usize) -> usize {
        ((bi * self.t + i) * self.h + hi) * self.d
    }
}

struct Attention {
    dims: Dims,
    scale: f32,
    /// The additive (t, s) mask, contiguous, if any.
    mask: Option<Tensor>,
    /// Per query row: the keys it sees end here (the rest of its mask row is −∞).
    ends: Vec<usize>,
    /// Per (b, h, t) row: ln Σ exp of its masked, scaled scores (−∞ for a row that sees
    /// no key). Set by the forward pass, read by the backward.
    lse: OnceLock<Vec<f32>>,
}

/// Per mask row: one past its last finite entry (`s` without a mask).
fn row_ends(mask: Option<&[f32]>, t: usize, s: usize) -> Vec<usize> {
    match mask {
        None => vec![s; t],
        Some(m) => m
            .chunks_exact(s.max(1))
            .map(|r| {
                s - r
                    .iter()
                    .rev()
                    .take_while(|&&v| v == f32::NEG_INFINITY)
                    .count()
            })
            .collect(),
    }
}

/// Runs `f` on the f32 data of a contiguous CPU tensor (or `None`).
fn with_f32<R>(x: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
    let Some(x) = x else { return f(None) };
    let (storage, layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets())
    else {
        bail!("attention: expected contiguous f32 data on the CPU");
    };
    f(Some(&v[a..b]))
}

/// Keys seen by the queries of block `qb`: the largest row end among them.
fn block_end(ends: &[usize], dims: &Dims, qb: usize) -> usize {
    ends[dims.block_rows(qb)].iter().copied().max().unwrap_or(0)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32_slice(s1, l1, "attention queries")?;
        let k = f32_slice(s2, l2, "attention keys")?;
        let v = f32_slice(s3, l3, "attention values")?;
        let dm = self.dims;
        let Dims { b, h, t, d, .. } = dm;
        let mut y = vec![0f32; b * t * h * d];
        let mut lse = vec![f32::NEG_INFINITY; b * h * t];
        with_f32(self.mask.as_ref(), |mask| {
            let out = Shared::new(&mut y);
            let lse_out = Shared::new(&mut lse);
            let tasks = tasks_heaviest_first(b * h, dm.q_blocks());
            tasks.par_iter().for_each(|&(bh, qb)| {
                let (bi, hi) = (bh / h, bh % h);
                let rows = dm.block_rows(qb);
                let l = block_end(&self.ends, &dm, qb);
                if l == 0 {
                    return;
                }
                let n = rows.len();
                let g = hi / dm.n_rep();
                let mut p = vec![0f32; n * l];
                // Scores: scale · Q_blk · K[..l]ᵀ.
                matmul(
                    Dst::new(&mut p, Mat::rows(0, n, l, l)),
                    false,
                    (q, Mat::rows(dm.q_at(bi, hi, rows.start), n, d, d)),
                    (k, Mat::cols(dm.kv_at(bi, g, 0), d, l, d)),
                    self.scale,
                );
                for (r, i) in rows.clone().enumerate() {
                    let row = &mut p[r * l..(r + 1) * l];
                    let m = mask.map(|m| &m[i * dm.s..i * dm.s + l]);
                    let lse = softmax_in_place(row, m, self.ends[i]);
                    // SAFETY: each (b, h, row) is written by the one task of its block.
                    unsafe { lse_out.write((bi * h + hi) * t + i, lse) };
                }
                // Output rows: P · V[..l], into the merged heads.
                matmul(
                    out.dst(Mat::rows(dm.y_at(bi, hi, rows.start), n, d, h * d)),
                    false,
                    (&p, Mat::rows(0, n, l, l)),
                    (v, Mat::rows(dm.kv_at(bi, g, 0), l, d, d)),
                    1.0,
                );
            });
            Ok(())
        })?;
        // A second forward of the same op (not done by candle) would keep the first's.
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(y), Shape::from((b, t, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else {
            bail!("fused attention: backward before forward");
        };
        let grad = grad.contiguous()?;
        let dm = self.dims;
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.elem_count()],
            vec![0f32; k.elem_count()],
            vec![0f32; v.elem_count()],
        );
        let ins = [q, k, v, &grad];
        let guards: Vec<_> = ins.iter().map(|x| x.storage_and_layout()).collect();
        let mut data = Vec::with_capacity(4);
        for (g, what) in guards.iter().zip(["queries", "keys", "values", "gradient"]) {
            let (Storage::Cpu(CpuStorage::F32(s)), Some((a, b))) =
                (&*g.0, g.1.contiguous_offsets())
            else {
                bail!("fused attention: expected contiguous f32 {what} on the CPU");
            };
            data.push(&s[a..b]);
        }
        with_f32(self.mask.as_ref(), |mask| {
            let grads = Grads {
                dq: Shared::new(&mut dq),
                dk: Shared::new(&mut dk),
                dv: Shared::new(&mut dv),
            };
            let ins = Inputs {
                q: data[0],
                k: data[1],
                v: data[2],
                g: data[3],
                mask,
                lse,
            };
            for bi in 0..dm.b {
                for g in 0..dm.kv {
                    self.group_backward(&ins, &grads, bi, g);
                }
            }
            Ok(())
        })?;
        drop(guards);
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// The backward's inputs: q, k, v, the output's gradient (b, t, h·d), mask and lse.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    g: &'a [f32],
    mask: Option<&'a [f32]>,
    lse: &'a [f32],
}

struct Grads<'a> {
    dq: Shared<'a>,
    dk: Shared<'a>,
    dv: Shared<'a>,
}

impl Attention {
    /// The gradients from key/value head `g` of batch element `bi` and its query heads.
    ///
    /// Pass 1, per (query head, query block): the probabilities P again from the kept
    /// log-sum-exp, dP = dY·Vᵀ, dS = scale · P ⊙ (dP − Σ P ⊙ dP) (both kept in the group's
    /// buffers), and dQ = dS·K. Pass 2, per key block: dK = Σ dSᵀ·Q and dV = Σ Pᵀ·dY
    /// over the group's heads and the query rows that see the block.
    fn group_backward(&self, x: &Inputs<'_>, grads: &Grads<'_>, bi: usize, g: usize) {
        let dm = self.dims;
        let Dims { h, t, s, d, .. } = dm;
        let n_rep = dm.n_rep();
        let mut pbuf = vec![0f32; n_rep * t * s];
        let mut dsbuf = vec![0f32; n_rep * t * s];
        let (pb, dsb) = (Shared::new(&mut pbuf), Shared::new(&mut dsbuf));
        let kv0 = dm.kv_at(bi, g, 0);
        let tasks = tasks_heaviest_first(n_rep, dm.q_blocks());
        tasks.par_iter().for_each(|&(r, qb)| {
            let hi = g * n_rep + r;
            let rows = dm.block_rows(qb);
            let l = block_end(&self.ends, &dm, qb);
            if l == 0 {
                return;
            }
            let n = rows.len();
            let at = (r * t + rows.start) * s;
            // SAFETY: the rows of this (head, block) are this task's alone.
            let (p, ds) = unsafe { (pb.rows(at, n, s), dsb.rows(at, n, s)) };
            matmul(
                Dst::new(p, Mat::rows(0, n, l, s)),
                false,
                (x.q, Mat::rows(dm.q_at(bi, hi, rows.start), n, d, d)),
                (x.k, Mat::cols(kv0, d, l, d)),
                self.scale,
            );
            matmul(
                Dst::new(ds, Mat::rows(0, n, l, s)),
                false,
                (x.g, Mat::rows(dm.y_at(bi, hi, rows.start), n, d, h * d)),
                (x.v, Mat::cols(kv0, d, l, d)),
                1.0,
            );
            for (ri, i) in rows.clone().enumerate() {
                let (pr, dsr) = (&mut p[ri * s..ri * s + l], &mut ds[ri * s..ri * s + l]);
                let lse = x.lse[(bi * h + hi) * t + i];
                let e = self.ends[i].min(l);
                if lse == f32::NEG_INFINITY {
                    pr.fill(0.0);
                    dsr.fill(0.0);
                    continue;
                }
                if let Some(m) = x.mask {
                    for (pv, mv) in pr[..e].iter_mut().zip(&m[i * s..i * s + e]) {
                        *pv += mv;
                    }
                }
                super::vexp::exp_shifted_scaled(&mut pr[..e], lse, 1.0);
                pr[e..].fill(0.0);
                let dot: f32 = pr.iter().zip(dsr.iter()).map(|(p, dp)| p * dp).sum();
                for (dsv, pv) in dsr.iter_mut().zip(pr.iter()) {
                    *dsv = self.scale * pv * (*dsv - dot);
                }
            }
            matmul(
                grads
                    .dq
                    .dst(Mat::rows(dm.q_at(bi, hi, rows.start), n, d, d)),
                false,
                (&*ds, Mat::rows(0, n, l, s)),
                (x.k, Mat::rows(kv0, l, d, d)),
                1.0,
            );
        });
        let (pbuf, dsbuf) = (&pbuf, &dsbuf);
        let key_blocks: Vec<usize> = (0..s.div_ceil(BLOCK)).collect();
        key_blocks.par_iter().for_each(|&kb| {
            let (j0, j1) = (kb * BLOCK, s.min((kb + 1) * BLOCK));
            for (r0, r1, jn) in query_runs(&self.ends, &dm, j0, j1) {
                let m = jn - j0;
                for r in 0..n_rep {
                    let hi = g * n_rep + r;
                    let at = (r * t + r0) * s + j0;
                    // dK[j0..jn] += dSᵀ · Q over rows r0..r1; dV[j0..jn] += Pᵀ · dY.
                    matmul(
                        grads.dk.dst(Mat::rows(kv0 + j0 * d, m, d, d)),
                        true,
                        (dsbuf, Mat::cols(at, m, r1 - r0, s)),
                        (x.q, Mat::rows(dm.q_at(bi, hi, r0), r1 - r0, d, d)),
                        1.0,
                    );
                    matmul(
                        grads.dv.dst(Mat::rows(kv0 + j0 * d, m, d, d)),
                        true,
                        (pbuf, Mat::cols(at, m, r1 - r0, s)),
                        (x.g, Mat::rows(dm.y_at(bi, hi, r0), r1 - r0, d, h * d)),
                        1.0,
                    );
                }
            }
        });
    }
}

/// The query rows that see keys j0..j1, as runs of consecutive query blocks that see the
/// same part of it: (first row, end row, end key). The probabilities of a block are
/// computed (and zero where masked) up to its [`block_end`], so a run reads only those.
fn query_runs(ends: &[usize], dm: &Dims, j0: usize, j1: usize) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for qb in 0..dm.q_blocks() {
        let l = block_end(ends, dm, qb);
        if l <= j0 {
            continue;
        }
        let jn = j1.min(l);
        let rows = dm.block_rows(qb);
        match runs.last_mut() {
            Some(last) if last.1 == rows.start && last.2 == jn => last.1 = rows.end,
            _ => runs.push((rows.start, rows.end, jn)),
        }
    }
    runs
}

/// (head, block) tasks, the blocks of later queries (which see more keys) first, so the
/// last tasks to start are the short ones.
fn tasks_heaviest_first(heads: usize, blocks: usize) -> Vec<(usize, usize)> {
    (0..blocks)
        .rev()
        .flat_map(|qb| (0..heads).map(move |hd| (hd, qb)))
        .collect()
}

/// In place: row[j] ← softmax over j < end of (row[j] + mask[j]), 0 from `end` on.
/// Returns ln Σ exp (−∞ for a row that sees nothing, which becomes zeros).
fn softmax_in_place(row: &mut [f32], mask: Option<&[f32]>, end: usize) -> f32 {
    let end = end.min(row.len());
    let (seen, hidden) = row.split_at_mut(end);
    hidden.fill(0.0);
    if let Some(m) = mask {
        for (x, mv) in seen.iter_mut().zip(m) {
            *x += mv;
        }
    }
    super::fused::softmax_row(seen)
}

/// A strided matrix inside a buffer: element (r, c) at `off + r·rs + c·cs`.
#[derive(Debug, Clone, Copy)]
struct Mat {
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// Row-major: rows `rs` apart.
    fn rows(off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            off,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of a row-major (cols × rows) matrix with rows `stride` apart.
    fn cols(off: usize, rows: usize, cols: usize, stride: usize) -> Self {
        Self {
            off,
            rows,
            cols,
            rs: 1,
            cs: stride,
        }
    }

    /// One past the last element it touches (`off` when empty).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.off;
        }
        self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
    }
}

/// A destination matrix: a pointer into a buffer of `len` elements, and its layout.
struct Dst {
    ptr: *mut f32,
    len: usize,
    mat: Mat,
}

impl Dst {
    fn new(buf: &mut [f32], mat: Mat) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            mat,
        }
    }
}

/// A buffer written by several tasks at once, each to its own elements.
struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks write disjoint elements (each caller states why), and the buffer outlives
// them (the borrow `'a`).
unsafe impl Send for Shared<'_> {}
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: std::marker::PhantomData,
        }
    }

    fn dst(&self, mat: Mat) -> Dst {
        Dst {
            ptr: self.ptr,
            len: self.len,
            mat,
        }
    }

    /// # Safety
    /// No other task touches element `i` meanwhile.
    unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        *self.ptr.add(i) = v;
    }

    /// `n` rows of `width` from `at`, for the caller alone.
    ///
    /// # Safety
    /// No other task touches these elements while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, at: usize, n: usize, width: usize) -> &mut [f32] {
        assert!(at + n * width <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(at), n * width)
    }
}

/// dst ← (dst if `accumulate`) + alpha · lhs · rhs, single-threaded (the callers run in
/// parallel tasks). Panics when a matrix reaches outside its buffer or the shapes differ.
fn matmul(dst: Dst, accumulate: bool, lhs: (&[f32], Mat), rhs: (&[f32], Mat), alpha: f32) {
    let (l, lm) = lhs;
    let (r, rm) = rhs;
    let dm = dst.mat;
    assert!(lm.rows == dm.rows && rm.cols == dm.cols && lm.cols == rm.rows);
    assert!(dm.end() <= dst.len && lm.end() <= l.len() && rm.end() <= r.len());
    if dm.rows == 0 || dm.cols == 0 {
        return;
    }
    // SAFETY: every element the three matrices touch lies inside its buffer (checked
    // above); the destination's elements are the calling task's alone.
    unsafe {
        gemm::gemm(
            dm.rows,
            dm.cols,
            lm.cols,
            dst.ptr.add(dm.off),
            dm.cs as isize,
            dm.rs as isize,
            accumulate,
            l.as_ptr().add(lm.off),
            lm.cs as isize,
            lm.rs as isize,
            r.as_ptr().add(rm.off),
            rm.cs as isize,
            rm.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn causal(t: usize, s: usize) -> Tensor {
        crate::model::ops::causal_mask(t, s - t, DType::F32, &Device::Cpu).unwrap()
    }

    /// A sliding window of `w` keys ending at each query's own position.
    fn window(t: usize, s: usize, w: usize) -> Tensor {
        let v: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..s).map(move |j| {
                    let diag = s - t + i;
                    if j <= diag && j + w > diag {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Tensor::from_vec(v, (t, s), &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0, f32::max)
    }

    #[derive(Clone, Copy, Debug)]
    enum Impl {
        Kernel,
        Generic,
        Composed,
    }

    /// The kernel and its generic twin against the composed ops in f64: output and dq,
    /// dk, dv.
    fn check(b: usize, h: usize, kv: usize, t: usize, s: usize, d: usize, mask: Option<Tensor>) {
        let q = randn(&[b, h, t, d], 1);
        let k = randn(&[b, kv, s, d], 2);
        let v = randn(&[b, kv, s, d], 3);
        let w = randn(&[b, t, h * d], 4);
        let scale = 0.3;
        let run = |dtype: DType, how: Impl| {
            let vars: Vec<Var> = [&q, &k, &v]
                .iter()
                .map(|x| Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap())
                .collect();
            let m = mask.as_ref().map(|m| m.to_dtype(dtype).unwrap());
            let (qv, kv_, vv) = (
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
            );
            let y = match how {
                Impl::Kernel => {
                    assert!(applies(qv, kv_, vv, m.as_ref()));
                    attend(qv, kv_, vv, m.as_ref(), scale).unwrap()
                }
                Impl::Generic => {
                    crate::model::generic_attention::attend(qv, kv_, vv, m.as_ref(), scale).unwrap()
                }
                Impl::Composed => {
                    crate::model::ops::grouped_attention_composed(qv, kv_, vv, m.as_ref(), scale)
                        .unwrap()
                }
            };
            let gs = (&y * w.to_dtype(dtype).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut out = vec![y.to_dtype(DType::F32).unwrap()];
            for x in &vars {
                out.push(gs.get(x.as_tensor()).unwrap().to_dtype(DType::F32).unwrap());
            }
            out
        };
        let reference = run(DType::F64, Impl::Composed);
        for how in [Impl::Kernel, Impl::Generic] {
            let got = run(DType::F32, how);
            for (what, (a, r)) in ["y", "dq", "dk", "dv"]
                .iter()
                .zip(got.iter().zip(&reference))
            {
                let diff = max_rel_diff(a, r);
                assert!(
                    diff < 1e-5,
                    "{how:?}: {what} differs by {diff} (b {b}, h {h}, kv {kv}, t {t}, s {s}, d {d})"
                );
            }
        }
    }

    #[test]
    fn values_and_gradients_equal_the_f64_composed_ops() {
        // Causal, grouped heads, several blocks with a ragged last one.
        check(2, 6, 2, 150, 150, 16, Some(causal(150, 150)));
        // A prompt after cached keys (s > t), one block.
        check(1, 4, 4, 5, 12, 8, Some(causal(5, 12)));
        // No mask; a query block seeing every key.
        check(1, 3, 1, 70, 70, 8, None);
        // A sliding window hides keys before the diagonal too.
        check(1, 2, 1, 130, 130, 8, Some(window(130, 130, 40)));
    }

    #[test]
    fn a_query_that_sees_no_key_gives_zeros_and_no_gradient() {
        let mut m = vec![0f32; 3 * 3];
        m[3..6].fill(f32::NEG_INFINITY);
        let m = Tensor::from_vec(m, (3, 3), &Device::Cpu).unwrap();
        let q = Var::from_tensor(&randn(&[1, 2, 3, 4], 1)).unwrap();
        let k = randn(&[1, 1, 3, 4], 2);
        let v = randn(&[1, 1, 3, 4], 3);
        for generic in [false, true] {
            let y = if generic {
                crate::model::generic_attention::attend(q.as_tensor(), &k, &v, Some(&m), 0.5)
            } else {
                attend(q.as_tensor(), &k, &v, Some(&m), 0.5)
            }
            .unwrap();
            let rows = y.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(rows[1], vec![0.0; 8], "generic: {generic}");
            assert!(rows[0]
                .iter()
                .chain(&rows[2])
                .all(|x| x.is_finite() && *x != 0.0));
            let g = y.sum_all().unwrap().backward().unwrap();
            let dq = g.get(q.as_tensor()).unwrap();
            let dq = dq.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
            assert!(
                dq.iter().all(|head| head[1] == vec![0.0; 4]),
                "generic: {generic}"
            );
        }
    }

    #[test]
    fn it_applies_only_to_what_it_computes() {
        let q = randn(&[1, 4, 5, 8], 1);
        let k = randn(&[1, 2, 5, 8], 2);
        assert!(applies(&q, &k, &k, Some(&causal(5, 5))));
        assert!(!applies(
            &q,
            &randn(&[1, 3, 5, 8], 2),
            &randn(&[1, 3, 5, 8], 2),
            None
        ));
        assert!(!applies(
            &q,
            &k,
            &k,
            Some(&causal(5, 5).unsqueeze(0).unwrap())
        ));
        assert!(!applies(&q.to_dtype(DType::F64).unwrap(), &k, &k, None));
        crate::model::generic::with_generic_kernels(true, || {
            assert!(!applies(&q, &k, &k, None));
        });
    }

    #[test]
    fn query_runs_cover_what_each_block_sees() {
        let dm = Dims {
            b: 1,
            h: 1,
            kv: 1,
            t: 200,
            s: 200,
            d: 1,
        };
        let ends: Vec<usize> = (1..=200).collect();
        // Keys 64..128 are seen by blocks 1, 2 and 3 (block 1 up to 128).
        assert_eq!(query_runs(&ends, &dm, 64, 128), vec![(64, 200, 128)]);
        // The last key block, 192..200: only by block 3.
        assert_eq!(query_runs(&ends, &dm, 192, 200), vec![(192, 200, 200)]);
        // Ends that stop early within a block split the runs.
        let ends = vec![10; 200];
        assert_eq!(query_runs(&ends, &dm, 0, 64), vec![(0, 200, 10)]);
        assert!(query_runs(&ends, &dm, 64, 128).is_empty());
    }
}

//! The LM head's matmul and its cross entropy in one op, computed a few rows at a time
//! (the "fused linear cross entropy" of Liger Kernel and Unsloth).
//!
//! Composed (`x · Wᵀ`, then `ops::masked_cross_entropy`), the logits of every scored token
//! are materialised, and candle's autograd keeps them, their log-softmax and, in the
//! backward pass, several logits-sized gradients: with Gemma 3's 262,144-token vocabulary
//! a (2 × 256)-token batch has 537 MB of f32 logits per copy. Here the forward walks the
//! counted rows in chunks (chunk × V logits at a time: matmul, log-sum-exp, picked logit)
//! and keeps nothing but the inputs. When the inputs are tracked (training), the forward
//! also turns each chunk's logits into `softmax − one-hot` in place and produces d hidden
//! — and, only when the weight is trainable (full fine-tuning, a trained embedding or
//! head), d weight, accumulated chunk after chunk into one (V, h) tensor — for a loss
//! gradient of 1; the backward only scales them by the gradient it gets. (The loss is
//! the graph's last op, so its backward follows at once: the gradients exist no longer
//! than they would otherwise, and the head's logits are computed once, not again in the
//! backward.) Should the backward find them taken, it recomputes them.
//!
//! Masked rows (prompt tokens, padding) are skipped entirely: they cost no matmul.
//! The op runs on the CPU in f32. Its generic definition (the same chunks with tensor ops,
//! on any device and in any dtype; on the CPU when the generic path is forced) keeps the
//! same: the inputs only. [`composed_linear_cross_entropy`] is the plain twin. All are
//! checked against an f64 reference below.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape};
use candle_core::{Device, Tensor, D};
use rayon::prelude::*;

use super::generic::{attach2, generic_kernels};
use super::linear::matmul_t;
use super::ops::masked_cross_entropy;

/// Bytes of f32 logits one chunk may hold. Large enough that a chunk's matmul re-reads
/// the (V, h) weight for at least a few dozen rows (Gemma 3: 32 rows per read; SmolLM2:
/// 170), small enough that the chunk's logits and their gradient stay far below the
/// batch's logits. At 32 MiB glibc serves the buffer with `mmap` and returns it on free.
const CHUNK_LOGITS_BYTES: usize = 32 << 20;
/// Fewer rows than this make the matmul bound by reading the weight, not by arithmetic.
const MIN_CHUNK_ROWS: usize = 16;

/// Rows per chunk for a vocabulary of `vocab` tokens.
pub fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_LOGITS_BYTES / (4 * vocab.max(1))).max(MIN_CHUNK_ROWS)
}

/// Mean cross entropy of `hidden · weightᵀ` over the positions whose `mask` is 1, without
/// a (tokens × vocab) logits tensor kept for backward.
///
/// `hidden`: (n, h); `weight`: (V, h); `targets`: (n,) u32; `mask`: (n,) of 0/1. Returns
/// (mean loss, number of counted tokens), like [`masked_cross_entropy`] of the logits.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, usize)> {
    let vocab = weight.dim(0)?;
    let chunk = chunk_rows_on(vocab, !hidden.device().is_cpu());
    linear_cross_entropy_chunked(hidden, weight, targets, mask, chunk)
}

/// Rows per chunk for a vocabulary of `vocab` tokens on a GPU (`gpu`) or the CPU
/// ([`chunk_rows`]). A GPU wants many rows per matmul and per element-wise pass; 256 MiB
/// of f32 logits is still far below a batch's (and a few % of a modest GPU).
pub fn chunk_rows_on(vocab: usize, gpu: bool) -> usize {
    if gpu {
        (GPU_CHUNK_LOGITS_BYTES / (4 * vocab.max(1))).max(MIN_CHUNK_ROWS)
    } else {
        chunk_rows(vocab)
    }
}

/// Bytes of f32 logits one chunk may hold on a GPU.
const GPU_CHUNK_LOGITS_BYTES: usize = 256 << 20;

/// [`linear_cross_entropy`] with `chunk` rows per chunk.
pub fn linear_cross_entropy_chunked(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    chunk: usize,
) -> Result<(Tensor, usize)> {
    let (n, h) = hidden.dims2()?;
    let (vocab, wh) = weight.dims2()?;
    if wh != h {
        candle_core::bail!("LM head: hidden states have {h} features, the weight {wh}");
    }
    let generic = generic_kernels(hidden.device());
    let fused =
        hidden.dtype() == DType::F32 && weight.dtype() == DType::F32 && weight.is_contiguous();
    if !fused && !generic {
        return composed_linear_cross_entropy(hidden, weight, targets, mask);
    }
    let targets: Vec<u32> = targets.to_vec1()?;
    let mask: Vec<f32> = mask.to_dtype(DType::F32)?.to_vec1()?;
    if targets.len() != n || mask.len() != n {
        candle_core::bail!(
            "LM head loss: {n} hidden rows but {} targets and {} mask values",
            targets.len(),
            mask.len()
        );
    }
    let counted: Vec<usize> = (0..n).filter(|&i| mask[i] != 0.0).collect();
    let count = mask.iter().sum::<f32>() as usize;
    if counted.is_empty() || count == 0 {
        candle_core::bail!("no target tokens to score: every position is masked");
    }
    if let Some(&bad) = counted.iter().find(|&&i| targets[i] as usize >= vocab) {
        candle_core::bail!(
            "target token id {} (position {bad}) is outside the vocabulary of {vocab}",
            targets[bad]
        );
    }
    let op = LinearCrossEntropy {
        rows: counted.iter().map(|&i| i as u32).collect(),
        targets: counted.iter().map(|&i| targets[i]).collect(),
        weights: counted.iter().map(|&i| mask[i]).collect(),
        n,
        count,
        chunk: chunk.max(1),
        loss: 0.0,
        grads: Default::default(),
    };
    if generic {
        return Ok((op.generic(hidden, weight)?, count));
    }
    let (hd, wd) = (hidden.detach(), weight.detach());
    let op = if hidden.track_op() || weight.track_op() {
        // Training: the gradients for a loss gradient of 1 with the value.
        let (loss, dh, dw) = op.loss_and_grads(&hd, &wd, 1.0, weight.track_op())?;
        *op.grads.lock().unwrap_or_else(|e| e.into_inner()) = Some((dh, dw));
        LinearCrossEntropy { loss, ..op }
    } else {
        let loss = op.mean_loss(&hd, &wd)?;
        LinearCrossEntropy { loss, ..op }
    };
    let loss = hidden.apply_op2(weight, op)?;
    Ok((loss, count))
}

/// The composed twin: the LM-head matmul, then the masked cross entropy of its logits.
pub fn composed_linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, usize)> {
    masked_cross_entropy(&matmul_t(hidden, weight)?, targets, mask)
}

/// d hidden (n, h) and d weight (V, h) if the weight is trainable.
type HeadGrads = (Tensor, Option<Tensor>);

/// The op. Its value is computed before it is applied ([`Self::mean_loss`], or with the
/// gradients by [`Self::loss_and_grads`], with candle's matmul on the detached inputs), so
/// `cpu_fwd` only hands it back; `bwd` scales the gradients (or recomputes them).
#[derive(Clone)]
struct LinearCrossEntropy {
    /// Positions of the counted rows among the n hidden rows.
    rows: Vec<u32>,
    /// Their target ids and loss weights (the mask values).
    targets: Vec<u32>,
    weights: Vec<f32>,
    n: usize,
    count: usize,
    chunk: usize,
    loss: f32,
    /// The gradients for a loss gradient of 1, computed with the value when training.
    grads: std::sync::Arc<std::sync::Mutex<Option<HeadGrads>>>,
}

impl LinearCrossEntropy {
    /// Chunks of the counted rows: (first index into `rows`, length).
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.rows.len())
            .step_by(self.chunk)
            .map(|s| (s, self.chunk.min(self.rows.len() - s)))
    }

    /// The chunk's hidden rows (c, h) and logits (c, V).
    fn chunk_logits(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        (s, c): (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        let idx = Tensor::from_slice(&self.rows[s..s + c], c, hidden.device())?;
        let rows = hidden.index_select(&idx, 0)?;
        let logits = rows.matmul(&weight.t()?)?;
        Ok((rows, logits))
    }

    /// Σ weight · nll over the rows of the chunk that starts at counted row `s`.
    fn weighted(&self, s: usize, nll: &[f32]) -> f64 {
        nll.iter()
            .zip(&self.weights[s..])
            .map(|(&l, &w)| l as f64 * w as f64)
            .sum()
    }

    fn mean_loss(&self, hidden: &Tensor, weight: &Tensor) -> Result<f32> {
        let mut sum = 0f64;
        for (s, c) in self.chunks() {
            let (_, logits) = self.chunk_logits(hidden, weight, (s, c))?;
            let nll = logits.apply_op1_no_bwd(&RowNll {
                targets: &self.targets[s..s + c],
            })?;
            sum += self.weighted(s, &nll.to_vec1::<f32>()?);
        }
        Ok((sum / self.count as f64) as f32)
    }
}

/// The generic definition: the same chunks, with tensor ops on the device of the inputs.
impl LinearCrossEntropy {
    /// The chunk's row positions, target ids (c, 1) and loss weights (c, 1) on `dev`.
    fn chunk_tensors(&self, (s, c): (usize, usize), dev: &Device) -> Result<[Tensor; 3]> {
        Ok([
            Tensor::from_slice(&self.rows[s..s + c], c, dev)?,
            Tensor::from_slice(&self.targets[s..s + c], (c, 1), dev)?,
            Tensor::from_slice(&self.weights[s..s + c], (c, 1), dev)?,
        ])
    }

    /// The chunk's hidden rows (c, h) and its f32 log-probabilities (c, V): the logits
    /// minus their row max s, minus the log-sum-exp of s. No more than two chunk-sized f32
    /// tensors are alive at once (each step's input is dropped once the next exists).
    fn log_probs(hidden: &Tensor, weight: &Tensor, idx: &Tensor) -> Result<(Tensor, Tensor)> {
        let rows = hidden.index_select(idx, 0)?;
        let shifted = {
            let logits = rows.matmul(&weight.t()?)?.to_dtype(DType::F32)?;
            logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?
        };
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let log_probs = shifted.broadcast_sub(&lse)?;
        Ok((rows, log_probs))
    }

    /// The mean loss as a scalar tensor of the device, attached to `hidden` and `weight`
    /// with a backward that recomputes each chunk's logits.
    fn generic(self, hidden: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let dev = hidden.device().clone();
        let (h, w) = (hidden.detach(), weight.detach());
        let mut sum = Tensor::zeros((), DType::F32, &dev)?;
        for chunk in self.chunks() {
            let [idx, targets, weights] = self.chunk_tensors(chunk, &dev)?;
            let (_, log_probs) = Self::log_probs(&h, &w, &idx)?;
            let nll = log_probs.gather(&targets, 1)?.neg()?;
            sum = (sum + (nll * weights)?.sum_all()?)?;
        }
        let loss = (sum / self.count as f64)?;
        let weight_grad = weight.track_op();
        attach2(
            "linear-cross-entropy",
            hidden,
            weight,
            &loss,
            move |h, w, _, g| {
                let coef = (g.to_dtype(DType::F32)? / self.count as f64)?;
                let dev = h.device();
                let mut dh = Tensor::zeros(h.dims(), h.dtype(), dev)?;
                let mut dw = None::<Tensor>;
                for chunk in self.chunks() {
                    let [idx, targets, weights] = self.chunk_tensors(chunk, dev)?;
                    let (rows, log_probs) = Self::log_probs(h, w, &idx)?;
                    // exp of the log-probabilities as an element-wise op: candle's softmax
                    // kernel gives each row one warp, too few for a few hundred
                    // vocabulary-long rows. Each step replaces the one before (at most two
                    // chunk-sized f32 tensors at once).
                    let mut d = log_probs.exp()?;
                    drop(log_probs);
                    let minus_one = Tensor::full(-1f32, (chunk.1, 1), dev)?;
                    d = d.scatter_add(&targets, &minus_one, 1)?;
                    d = d.broadcast_mul(&weights.broadcast_mul(&coef)?)?;
                    let dlogits = d.to_dtype(h.dtype())?;
                    drop(d);
                    dh = dh.index_add(&idx, &dlogits.matmul(w)?, 0)?;
                    if weight_grad {
                        // Accumulated in f32 across chunks, whatever the compute dtype.
                        let part = dlogits.t()?.matmul(&rows)?.to_dtype(DType::F32)?;
                        dw = Some(match dw {
                            Some(acc) => (acc + part)?,
                            None => part,
                        });
                    }
                }
                let dw = dw.map(|d| d.to_dtype(w.dtype())).transpose()?;
                Ok((Some(dh), dw))
            },
        )
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let weight_var = weight;
        let taken = self.grads.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (dh, dw) = match taken {
            Some((dh, dw)) if g == 1.0 => (dh, dw),
            Some((dh, dw)) => ((dh * g as f64)?, dw.map(|d| d * g as f64).transpose()?),
            None => {
                let (hidden, weight) = (hidden.detach(), weight.detach());
                let (_, dh, dw) =
                    self.loss_and_grads(&hidden, &weight, g, weight_var.track_op())?;
                (dh, dw)
            }
        };
        // The head weight's gradient goes to the training step's sink when one is open.
        let dw = match dw {
            Some(dw) => super::grad_sink::deposit(weight_var, dw)?,
            None => None,
        };
        Ok((Some(dh), dw))
    }
}

impl LinearCrossEntropy {
    /// The mean loss and its gradients for a loss gradient of `g`: d hidden (n, h) and,
    /// with `weight_grad`, d weight. Per chunk: the logits, turned in place into
    /// `g · w / count · (softmax − one-hot)` (the loss of each row taken on the way), then
    /// their products with the weight and the rows.
    fn loss_and_grads(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        g: f32,
        weight_grad: bool,
    ) -> Result<(f32, Tensor, Option<Tensor>)> {
        let coef = g / self.count as f32;
        let mut sum = 0f64;
        let mut dh = Vec::new();
        let mut dw: Option<Tensor> = None;
        for (s, c) in self.chunks() {
            let (rows, logits) = self.chunk_logits(hidden, weight, (s, c))?;
            let scales: Vec<f32> = self.weights[s..s + c].iter().map(|w| w * coef).collect();
            // d loss / d logits, written over the logits (no second chunk-sized tensor).
            let op = RowGrad {
                targets: &self.targets[s..s + c],
                scales: &scales,
                nll: std::sync::Mutex::new(vec![0f32; c]),
            };
            logits.inplace_op1(&op)?;
            sum += self.weighted(s, &op.nll.into_inner().unwrap_or_else(|e| e.into_inner()));
            dh.push(logits.matmul(weight)?);
            if weight_grad {
                let part = logits.t()?.matmul(&rows)?;
                match &mut dw {
                    Some(acc) => super::grad_sink::add_into(acc, &part)?,
                    None => dw = Some(part),
                }
            }
        }
        let dh = Tensor::cat(&dh, 0)?;
        let dh = if self.rows.len() == self.n {
            dh
        } else {
            let idx = Tensor::from_slice(&self.rows, self.rows.len(), hidden.device())?;
            Tensor::zeros(hidden.dims(), DType::F32, hidden.device())?.index_add(&idx, &dh, 0)?
        };
        Ok(((sum / self.count as f64) as f32, dh, dw))
    }
}

fn rows_of<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
    let v = super::fused::f32_slice(s, l, "logits")?;
    Ok((v, l.shape().dims()[l.shape().rank() - 1]))
}

/// Row max and log of Σ exp(x − max): the log-sum-exp is their sum.
fn max_and_log_sum(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, super::vexp::sum_exp_shifted(row, max).ln())
}

/// (c, V) logits → (c,) negative log-likelihoods of the targets.
struct RowNll<'a> {
    targets: &'a [u32],
}

impl CustomOp1 for RowNll<'_> {
    fn name(&self) -> &'static str {
        "row-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, v) = rows_of(s, l)?;
        let out: Vec<f32> = x
            .par_chunks_exact(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (max, log_sum) = max_and_log_sum(row);
                max + log_sum - row[t as usize]
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(self.targets.len())))
    }
}

/// In place, per row: logits → `scale · (softmax − one-hot(target))`; each row's negative
/// log-likelihood of its target into `nll`.
struct RowGrad<'a> {
    targets: &'a [u32],
    scales: &'a [f32],
    nll: std::sync::Mutex<Vec<f32>>,
}

impl candle_core::InplaceOp1 for RowGrad<'_> {
    fn name(&self) -> &'static str {
        "row-cross-entropy-grad"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("logits: expected f32 data");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("logits: expected contiguous data");
        };
        let v = l.shape().dims()[l.shape().rank() - 1];
        let mut nll = self.nll.lock().unwrap_or_else(|e| e.into_inner());
        x[a..b]
            .par_chunks_exact_mut(v)
            .zip(self.targets.par_iter().zip(self.scales.par_iter()))
            .zip(nll.par_iter_mut())
            .for_each(|((row, (&t, &scale)), nll)| {
                // softmax = e^(x − max) / Σ: one pass of exp, then the scale.
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let picked = row[t as usize];
                let sum = super::vexp::exp_shifted_sum(row, max);
                *nll = max + sum.ln() - picked;
                let k = scale / sum;
                for x in row.iter_mut() {
                    *x *= k;
                }
                row[t as usize] -= scale;
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generic::with_generic_kernels;
    use candle_core::{Device, Var, D};

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        // A small LCG: the values only need to be varied and reproducible.
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tensor(shape: (usize, usize), seed: u64, scale: f32) -> Tensor {
        Tensor::from_vec(values(shape.0 * shape.1, seed, scale), shape, &Device::Cpu).unwrap()
    }

    /// The unchunked f64 reference: logits, log-softmax, picked, masked mean.
    fn reference(h: &Tensor, w: &Tensor, targets: &Tensor, mask: &Tensor) -> Tensor {
        let logp = candle_nn::ops::log_softmax(&h.matmul(&w.t().unwrap()).unwrap(), D::Minus1);
        let picked = logp
            .unwrap()
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let mask = mask.to_dtype(DType::F64).unwrap();
        let count = mask.sum_all().unwrap().to_scalar::<f64>().unwrap();
        ((picked * mask).unwrap().sum_all().unwrap().neg().unwrap() / count).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        d.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    struct Case {
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        mask: Tensor,
    }

    fn case(n: usize, h: usize, vocab: usize, masked: &[usize]) -> Case {
        let targets: Vec<u32> = (0..n).map(|i| ((i * 37 + 5) % vocab) as u32).collect();
        let mask: Vec<f32> = (0..n)
            .map(|i| if masked.contains(&i) { 0.0 } else { 1.0 })
            .collect();
        Case {
            hidden: tensor((n, h), 1, 2.0),
            weight: tensor((vocab, h), 2, 1.0),
            targets: Tensor::new(targets, &Device::Cpu).unwrap(),
            mask: Tensor::new(mask, &Device::Cpu).unwrap(),
        }
    }

    /// Asserts that `loss_fn`'s value and gradients (hidden, weight) equal the f64
    /// reference's within `tol`.
    fn check(c: &Case, tol: f64, loss_fn: impl Fn(&Tensor, &Tensor) -> (Tensor, usize)) {
        let (h32, w32) = (
            Var::from_tensor(&c.hidden).unwrap(),
            Var::from_tensor(&c.weight).unwrap(),
        );
        let to64 = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
        let (h64, w64) = (to64(&c.hidden), to64(&c.weight));
        let (loss, count) = loss_fn(h32.as_tensor(), w32.as_tensor());
        let expected = reference(h64.as_tensor(), w64.as_tensor(), &c.targets, &c.mask);
        let counted = c.mask.sum_all().unwrap().to_scalar::<f32>().unwrap() as usize;
        assert_eq!(count, counted);
        let d = max_diff(&loss, &expected);
        assert!(d < tol, "loss differs by {d}");
        let (g, g_ref) = (loss.backward().unwrap(), expected.backward().unwrap());
        for (what, v32, v64) in [("hidden", &h32, &h64), ("weight", &w32, &w64)] {
            let d = max_diff(g.get(v32).unwrap(), g_ref.get(v64).unwrap());
            assert!(d < tol, "d {what} differs by {d}");
        }
    }

    #[test]
    fn chunked_value_and_gradients_equal_the_unchunked_f64_reference() {
        // 13 rows: chunks that divide it (1, 13), that do not (4, 5), one larger (64);
        // with masked rows and with none.
        // The CPU kernel, then its generic twin.
        for generic in [false, true] {
            with_generic_kernels(generic, || {
                for masked in [&[0usize, 3, 4, 12][..], &[]] {
                    let c = case(13, 8, 50, masked);
                    for chunk in [1, 4, 5, 13, 64] {
                        check(&c, 1e-5, |h, w| {
                            linear_cross_entropy_chunked(h, w, &c.targets, &c.mask, chunk).unwrap()
                        });
                    }
                }
            });
        }
    }

    #[test]
    fn a_scaled_loss_and_a_second_backward_give_the_same_gradients() {
        // The gradients computed with the value serve a loss gradient of 1; another is
        // scaled, and a second backward (the first took them) recomputes them.
        let c = case(13, 8, 50, &[3]);
        let (h, w) = (
            Var::from_tensor(&c.hidden).unwrap(),
            Var::from_tensor(&c.weight).unwrap(),
        );
        let grads = |scale: f64| {
            let (loss, _) =
                linear_cross_entropy_chunked(h.as_tensor(), w.as_tensor(), &c.targets, &c.mask, 4)
                    .unwrap();
            let first = (&loss * scale).unwrap().backward().unwrap();
            let second = (&loss * scale).unwrap().backward().unwrap();
            [h.as_tensor(), w.as_tensor()].map(|v| {
                let (a, b) = (first.get(v).unwrap(), second.get(v).unwrap());
                assert!(max_diff(a, b) < 1e-6, "a second backward differs");
                a.clone()
            })
        };
        let (one, three) = (grads(1.0), grads(3.0));
        for (a, b) in one.iter().zip(&three) {
            assert!(max_diff(&(a * 3.0).unwrap(), b) < 1e-6);
        }
    }

    #[test]
    fn the_composed_twin_equals_the_f64_reference_too() {
        let c = case(9, 8, 40, &[2, 7]);
        check(&c, 1e-5, |h, w| {
            composed_linear_cross_entropy(h, w, &c.targets, &c.mask).unwrap()
        });
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_costs_no_weight_sized_tensor() {
        for generic in [false, true] {
            with_generic_kernels(generic, || {
                let c = case(11, 8, 30, &[1]);
                let h = Var::from_tensor(&c.hidden).unwrap();
                let (loss, _) =
                    linear_cross_entropy_chunked(h.as_tensor(), &c.weight, &c.targets, &c.mask, 4)
                        .unwrap();
                let g = loss.backward().unwrap();
                // Only the hidden states' gradient: none for the weight, not even a zero one.
                assert!(g.get(&c.weight).is_none());
                assert_eq!(g.get_ids().count(), 1);
                assert_eq!(g.get(h.as_tensor()).unwrap().dims(), &[11, 8]);
            });
        }
    }

    #[test]
    fn bad_targets_and_an_all_masked_batch_are_errors() {
        let c = case(4, 8, 10, &[]);
        let bad = Tensor::new(&[1u32, 2, 10, 3], &Device::Cpu).unwrap();
        let err = linear_cross_entropy(&c.hidden, &c.weight, &bad, &c.mask).unwrap_err();
        assert!(
            err.to_string().contains("outside the vocabulary of 10"),
            "{err}"
        );
        let none = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let err = linear_cross_entropy(&c.hidden, &c.weight, &c.targets, &none).unwrap_err();
        assert!(
            err.to_string().contains("every position is masked"),
            "{err}"
        );
    }

    #[test]
    fn chunks_hold_about_32_mib_of_logits() {
        assert_eq!(chunk_rows(262_144), 32);
        assert_eq!(chunk_rows(49_152), 170);
        assert_eq!(chunk_rows(10_000_000), MIN_CHUNK_ROWS);
    }
}

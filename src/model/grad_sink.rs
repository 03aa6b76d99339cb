//! Weight gradients handed to the training step directly instead of through candle's
//! `GradStore`.
//!
//! candle's backward adds every gradient into a zero tensor of its input's shape
//! (`GradStore::or_insert`, then `add`): for a weight, one weight-sized fill and one
//! weight-sized add on one thread per use — for full fine-tuning of SmolLM2 about 540 MB
//! filled and added again every step, on top of computing the gradients. The ops that
//! compute a weight's gradient themselves (the trainable x · Wᵀ, the fused LM-head loss)
//! [`deposit`] it instead: while a sink is open on the thread ([`collect`], around a
//! training step's `backward()`), the gradient stays in the sink — added in place to an
//! earlier one for the same weight — and the op hands candle none. The training step takes
//! the sink's gradients beside the store's (`train::step::accumulate`). With no sink open
//! (a plain `backward()`, as in tests) an op returns its gradient as usual.
//!
//! Only variables deposit: a gradient keyed by any other tensor (a cast copy of a weight)
//! would not be found by the step, so it goes through the store.
use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{bail, Result, Tensor, TensorId};

use super::fused::update_in_place;
use rayon::prelude::*;

/// The gradients deposited while a sink was open, by weight.
#[derive(Default)]
pub struct Sink(HashMap<TensorId, Tensor>);

impl Sink {
    /// The gradient deposited for `weight`, taken out of the sink.
    pub fn remove(&mut self, weight: &Tensor) -> Option<Tensor> {
        self.0.remove(&weight.id())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

thread_local! {
    static OPEN: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Runs `f` (a backward pass) with a sink open on this thread; returns what was deposited.
pub fn collect<R>(f: impl FnOnce() -> Result<R>) -> Result<(R, Sink)> {
    let (r, sink) = super::scoped::with_state(&OPEN, Sink::default(), f)?;
    Ok((r, sink.unwrap_or_default()))
}

/// Gives the gradient `grad` of `weight` to the open sink (`None` back: candle gets
/// nothing), or back to the caller when no sink is open or `weight` is not a variable.
/// `grad` must be a tensor the caller has just made and shares with nobody: a later
/// gradient of the same weight is added into it in place.
pub fn deposit(weight: &Tensor, grad: Tensor) -> Result<Option<Tensor>> {
    if !weight.is_variable() {
        return Ok(Some(grad));
    }
    OPEN.with(|o| {
        let mut open = o.borrow_mut();
        let Some(sink) = open.as_mut() else {
            return Ok(Some(grad));
        };
        if grad.dims() != weight.dims() {
            bail!(
                "gradient sink: a gradient of shape {:?} for a weight of shape {:?}",
                grad.dims(),
                weight.dims()
            );
        }
        match sink.0.get_mut(&weight.id()) {
            None => {
                sink.0.insert(weight.id(), grad);
            }
            Some(acc) => add_into(acc, &grad)?,
        }
        Ok(None)
    })
}

/// Adds row i of `rows` (n, h) into row `ids[i]` of the open sink's gradient for the
/// table `weight` (vocab, h) — in place into one already there (a tied head's), else
/// into a zero table made for it. `false` (nothing done) when no sink is open, `weight`
/// is not a variable or the data is not f32 on the CPU (or the generic path is forced):
/// the caller builds the gradient.
pub fn scatter_rows(weight: &Tensor, ids: &[u32], rows: &Tensor) -> Result<bool> {
    let plain = weight.is_variable()
        && !super::generic::generic_kernels(weight.device())
        && weight.dtype() == candle_core::DType::F32
        && rows.dtype() == candle_core::DType::F32;
    if !plain {
        return Ok(false);
    }
    OPEN.with(|o| {
        let mut open = o.borrow_mut();
        let Some(sink) = open.as_mut() else {
            return Ok(false);
        };
        let acc = match sink.0.entry(weight.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(weight.zeros_like()?),
        };
        if !acc.is_contiguous() {
            *acc = acc.contiguous()?;
        }
        let (vocab, h) = acc.dims2()?;
        // acc[ids[i]] += rows[i]
        update_in_place(acc, rows, "scatter-rows", |table, src| {
            if src.len() != ids.len() * h {
                bail!(
                    "scatter-rows: {} values for {} ids of {h}",
                    src.len(),
                    ids.len()
                );
            }
            for (&id, row) in ids.iter().zip(src.chunks_exact(h)) {
                let Some(out) = table.get_mut(id as usize * h..(id as usize + 1) * h) else {
                    bail!("scatter-rows: token id {id} outside a table of {vocab}");
                };
                for (o, r) in out.iter_mut().zip(row) {
                    *o += r;
                }
            }
            Ok(())
        })?;
        Ok(true)
    })
}

/// `acc += x`: in place (in parallel) for contiguous f32 tensors on the CPU, else into a
/// new tensor. `acc` must be shared with nobody.
pub fn add_into(acc: &mut Tensor, x: &Tensor) -> Result<()> {
    let f32_cpu = |t: &Tensor| {
        t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
    };
    if f32_cpu(acc) && f32_cpu(x) {
        update_in_place(acc, x, "add-assign", |dst, src| {
            if dst.len() != src.len() {
                bail!("add-assign: {} values, addend {}", dst.len(), src.len());
            }
            dst.par_iter_mut()
                .zip(src.par_iter())
                .with_min_len(1 << 14)
                .for_each(|(d, s)| *d += s);
            Ok(())
        })
    } else {
        *acc = (&*acc + x)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn deposits_go_to_the_open_sink_and_add_up() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::zeros((2, 3), candle_core::DType::F32, &dev)?;
        let g = || Tensor::ones((2, 3), candle_core::DType::F32, &dev);
        // No sink open: the gradient comes back.
        assert!(deposit(w.as_tensor(), g()?)?.is_some());
        let (_, mut sink) = collect(|| {
            assert!(deposit(w.as_tensor(), g()?)?.is_none());
            assert!(deposit(w.as_tensor(), (g()? * 2.0)?)?.is_none());
            // Not a variable (a cast copy): back to the caller.
            let copy = w.as_tensor().detach();
            assert!(deposit(&copy, g()?)?.is_some());
            Ok(())
        })?;
        let got = sink.remove(w.as_tensor()).expect("deposited");
        assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, vec![3.0; 6]);
        assert!(sink.is_empty());
        // Closed again, and a wrong shape is an error.
        assert!(deposit(w.as_tensor(), g()?)?.is_some());
        let e = collect(|| {
            deposit(
                w.as_tensor(),
                Tensor::ones(4, candle_core::DType::F32, &dev)?,
            )
        });
        assert!(e.is_err());
        assert!(OPEN.with(|o| o.borrow().is_none()));
        Ok(())
    }

    #[test]
    fn scattered_rows_add_into_the_tables_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let table = Var::zeros((4, 2), candle_core::DType::F32, &dev)?;
        let rows = Tensor::new(&[[1f32, 2.], [10., 20.], [100., 200.]], &dev)?;
        // No sink: nothing done.
        assert!(!scatter_rows(table.as_tensor(), &[0, 2, 0], &rows)?);
        let (_, mut sink) = collect(|| {
            // A tied head's gradient first, then the embedding's rows into it.
            assert!(deposit(
                table.as_tensor(),
                Tensor::ones((4, 2), candle_core::DType::F32, &dev)?
            )?
            .is_none());
            assert!(scatter_rows(table.as_tensor(), &[0, 2, 0], &rows)?);
            let e = scatter_rows(table.as_tensor(), &[4], &rows.narrow(0, 0, 1)?);
            assert!(e.is_err(), "an id outside the table");
            Ok(())
        })?;
        let g = sink.remove(table.as_tensor()).expect("gradient");
        assert_eq!(
            g.to_vec2::<f32>()?,
            vec![vec![102., 203.], vec![1., 1.], vec![11., 21.], vec![1., 1.]]
        );
        Ok(())
    }
}

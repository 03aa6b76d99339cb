//! Selective recomputation for gradient checkpointing: keep what is costly to recompute,
//! recompute the rest.
//!
//! While a block's forward pass is [`record`]ed, the output of every matmul with a frozen
//! weight (a LoRA or QLoRA base: dequantising and multiplying is most of a block's work)
//! is kept on a [`Tape`]. When the block is recomputed for its backward pass under
//! [`replay`], the same calls, in the same order, take their kept output instead of
//! multiplying again, attached to their input with the same backward (the input gradient,
//! g · W). Only the cheap rest of the block — norms, RoPE, attention, activations, the
//! adapters' rank-r products — is computed again. The tape costs one output per frozen
//! matmul per block (`plan` counts it); the gradients are those of full recomputation,
//! since the kept outputs are the values the recomputation would produce.
//!
//! The choice is made per thread, where candle runs a forward pass: the block's forward
//! calls [`frozen_matmul`] on the thread that records or replays.
use std::cell::RefCell;
use std::collections::VecDeque;

use candle_core::{bail, Result, Tensor};

use crate::model::generic::attach1;
use crate::model::scoped::with_state;

/// Which frozen weight a kept output belongs to (a replayed forward that does not make
/// the recorded calls in the recorded order is an error, not a wrong gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKey {
    /// A dense weight tensor.
    Tensor(candle_core::TensorId),
    /// A weight shared behind an `Arc` (the 4-bit codes), by its address.
    Shared(usize),
}

struct Kept {
    weight: WeightKey,
    y: Tensor,
}

/// The kept frozen-matmul outputs of one recorded forward pass, in call order.
#[derive(Default)]
pub struct Tape(VecDeque<Kept>);

impl Tape {
    /// Bytes held by the kept outputs.
    pub fn bytes(&self) -> usize {
        self.0
            .iter()
            .map(|k| k.y.elem_count() * k.y.dtype().size_in_bytes())
            .sum()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

enum Active {
    Record(Tape),
    Replay(Tape),
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// Runs `f` (a block's forward pass) keeping the output of every frozen matmul it makes.
pub fn record<R>(f: impl FnOnce() -> Result<R>) -> Result<(R, Tape)> {
    match with_state(&ACTIVE, Active::Record(Tape::default()), f)? {
        (r, Some(Active::Record(tape))) => Ok((r, tape)),
        _ => bail!("selective recomputation: the recording was replaced while it ran"),
    }
}

/// Runs `f` (the same forward pass again, now tracked for backward) with the frozen
/// matmuls answered from `tape`. Every kept output must be used, in order.
pub fn replay<R>(tape: Tape, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match with_state(&ACTIVE, Active::Replay(tape), f)? {
        (r, Some(Active::Replay(rest))) if rest.is_empty() => Ok(r),
        (_, Some(Active::Replay(rest))) => bail!(
            "selective recomputation: the recomputed block made {} fewer frozen matmuls than its forward pass",
            rest.len()
        ),
        _ => bail!("selective recomputation: the replay was replaced while it ran"),
    }
}

/// x · Wᵀ for a frozen W: `compute` makes it, `input_grad(g)` is its backward (g · W).
/// Recording, the output is kept; replaying, the kept output is returned attached to `x`
/// with that backward; otherwise it is simply computed.
pub fn frozen_matmul(
    x: &Tensor,
    weight: WeightKey,
    out_features: usize,
    compute: impl FnOnce() -> Result<Tensor>,
    input_grad: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    let kept = ACTIVE.with(|a| match &mut *a.borrow_mut() {
        Some(Active::Replay(tape)) => Some(tape.0.pop_front()),
        _ => None,
    });
    match kept {
        None => {
            let y = compute()?;
            ACTIVE.with(|a| {
                if let Some(Active::Record(tape)) = &mut *a.borrow_mut() {
                    tape.0.push_back(Kept {
                        weight,
                        y: y.detach(),
                    });
                }
            });
            Ok(y)
        }
        Some(None) => bail!(
            "selective recomputation: the recomputed block made more frozen matmuls than its forward pass"
        ),
        Some(Some(k)) => {
            let rows = x.dim(0)?;
            if k.weight != weight || k.y.dims() != [rows, out_features] || k.y.dtype() != x.dtype()
            {
                bail!(
                    "selective recomputation: the recomputed block's frozen matmul ({rows} × {out_features}) is not the one its forward pass made ({:?})",
                    k.y.dims()
                );
            }
            attach1("kept-frozen-matmul-t", x, &k.y, move |_, _, g| input_grad(g))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn matmul(x: &Tensor, w: &Tensor, key: usize) -> Result<Tensor> {
        let wb = w.clone();
        frozen_matmul(
            x,
            WeightKey::Shared(key),
            w.dim(0)?,
            || x.matmul(&w.t()?),
            move |g| g.matmul(&wb),
        )
    }

    #[test]
    fn a_replayed_matmul_returns_the_kept_output_with_the_input_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w1 = Tensor::randn(0f32, 1., (4, 3), &dev)?;
        let w2 = Tensor::randn(0f32, 1., (2, 4), &dev)?;
        let x0 = Tensor::randn(0f32, 1., (5, 3), &dev)?;
        let block = |x: &Tensor| -> Result<Tensor> {
            let h = matmul(x, &w1, 1)?.tanh()?;
            matmul(&h, &w2, 2)
        };
        let (y_fwd, tape) = record(|| block(&x0))?;
        assert_eq!(tape.len(), 2);
        assert_eq!(tape.bytes(), (5 * 4 + 5 * 2) * 4);
        // Plain recomputation and replay give the same output and input gradient.
        let x = Var::from_tensor(&x0)?;
        let plain = block(x.as_tensor())?;
        let g_plain = plain.sqr()?.sum_all()?.backward()?;
        let replayed = replay(tape, || block(x.as_tensor()))?;
        let g_replay = replayed.sqr()?.sum_all()?.backward()?;
        let max = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert_eq!(max(&replayed, &y_fwd)?, 0.0);
        assert_eq!(max(&replayed, &plain)?, 0.0);
        let (a, b) = (
            g_plain.get(x.as_tensor()).expect("gradient"),
            g_replay.get(x.as_tensor()).expect("gradient"),
        );
        assert!(max(a, b)? < 1e-6);
        Ok(())
    }

    #[test]
    fn a_replay_that_diverges_from_the_recording_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let w1 = Tensor::randn(0f32, 1., (4, 3), &dev)?;
        let x = Tensor::randn(0f32, 1., (5, 3), &dev)?;
        let (_, tape) = record(|| matmul(&x, &w1, 1))?;
        let e = replay(tape, || matmul(&x, &w1, 7)).expect_err("other weight");
        assert!(e.to_string().contains("not the one"), "{e}");
        let (_, tape) = record(|| matmul(&x, &w1, 1))?;
        let e = replay(tape, || Ok(())).expect_err("unused output");
        assert!(e.to_string().contains("fewer"), "{e}");
        let e = replay(Tape::default(), || matmul(&x, &w1, 1)).expect_err("extra call");
        assert!(e.to_string().contains("more"), "{e}");
        // Outside record/replay nothing is kept, and a failed scope leaves none behind.
        let y = matmul(&x, &w1, 1)?;
        assert_eq!(y.dims(), [5, 4]);
        assert!(ACTIVE.with(|a| a.borrow().is_none()));
        Ok(())
    }
}

//! Device-generic definitions of the memory-saving ops, and the switch that picks them.
//!
//! Every memory saving of ftlab (the frozen-weight matmul that yields only the input
//! gradient, the 4-bit base dequantised inside forward and again inside backward,
//! attention and loss that keep no extra score- or vocabulary-sized copies, the
//! quantised optimiser state) has one definition written with candle tensor ops, so it
//! holds on every candle device: the forward runs on *detached* inputs (no autograd graph
//! is built inside it) and the result is attached to the differentiable inputs by an op
//! whose backward is itself written with tensor ops ([`attach1`], [`attach2`]). The graph
//! then keeps exactly what that backward needs: the inputs, and the output where the
//! backward asks for it.
//!
//! The CPU kernels (`fused`, `linear::frozen`, `head_loss`, the in-place optimisers) are
//! fast specialisations of these definitions. [`generic_kernels`] says which to use: the
//! generic one on any device but the CPU, and on the CPU too when forced — by
//! `FTLAB_KERNELS=generic` in the environment, or [`with_generic_kernels`] in tests, which
//! compare every kernel with its generic twin.
use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape,
    Storage, Tensor,
};

/// The environment variable that forces the generic path on the CPU (`generic`), or the
/// CPU kernels where they apply (`auto`, the default).
pub const KERNELS_ENV: &str = "FTLAB_KERNELS";

thread_local! {
    static OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The process-wide choice: `FTLAB_KERNELS`, read once.
fn default_generic() -> bool {
    static DEFAULT: OnceLock<bool> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        std::env::var(KERNELS_ENV)
            .map(|v| v.trim().eq_ignore_ascii_case("generic"))
            .unwrap_or(false)
    })
}

/// Whether the generic path is forced on the CPU for this thread.
pub fn generic_forced() -> bool {
    OVERRIDE.with(Cell::get).unwrap_or_else(default_generic)
}

/// Whether ops on `device` use the generic definitions: always off the CPU, and on the
/// CPU when forced.
pub fn generic_kernels(device: &Device) -> bool {
    !device.is_cpu() || generic_forced()
}

/// Runs `f` with the generic path forced (`true`) or not (`false`) on this thread, then
/// restores the previous choice. Forward and backward of candle run on the calling
/// thread, so both see the choice.
pub fn with_generic_kernels<R>(generic: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|c| c.replace(Some(generic))));
    f()
}

/// A result computed outside autograd, handed over once to the op that attaches it.
struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    fn new(y: &Tensor) -> Result<Self> {
        // The op's output takes over y's storage as a whole, read as contiguous from
        // offset 0: make sure y is laid out that way (results of ops are).
        let y = if !y.is_contiguous() {
            y.detach().contiguous()? // a fresh tensor from offset 0
        } else if y.layout().start_offset() != 0 {
            y.detach().force_contiguous()?
        } else {
            y.detach()
        };
        Ok(Self(Mutex::new(Some(y))))
    }

    fn take(&self) -> Result<Tensor> {
        let taken = self.0.lock().map(|mut g| g.take()).unwrap_or(None);
        match taken {
            Some(y) => Ok(y),
            None => bail!("a precomputed result was used twice"),
        }
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, y.shape().clone())),
            _ => bail!("the precomputed result is not on the CPU"),
        }
    }

    fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, y.shape().clone())),
            _ => bail!("the precomputed result is not on the CUDA device"),
        }
    }
}

type Backward1 = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync;
type Backward2 = dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)>
    + Send
    + Sync;

struct Attach1 {
    name: &'static str,
    y: Precomputed,
    bwd: Box<Backward1>,
}

impl CustomOp1 for Attach1 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.y.cpu()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.y.cuda()
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        (self.bwd)(&x.detach(), &y.detach(), g)
    }
}

/// `y`, computed from `x` outside autograd, as a function of `x` whose backward is
/// `bwd(x, y, dL/dy) = dL/dx`. The graph keeps `x` and `y` (as every op does), nothing
/// of the computation that made `y`.
pub fn attach1(
    name: &'static str,
    x: &Tensor,
    y: &Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    attach1_opt(name, x, y, move |x, y, g| bwd(x, y, g).map(Some))
}

/// [`attach1`] whose backward may give no gradient (`None`: it delivered it elsewhere,
/// as to `grad_sink`).
pub fn attach1_opt(
    name: &'static str,
    x: &Tensor,
    y: &Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y.detach());
    }
    x.apply_op1(Attach1 {
        name,
        y: Precomputed::new(y)?,
        bwd: Box::new(bwd),
    })
}

struct Attach2 {
    name: &'static str,
    y: Precomputed,
    bwd: Box<Backward2>,
}

impl CustomOp2 for Attach2 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.y.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.y.cuda()
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        (self.bwd)(&a.detach(), &b.detach(), &y.detach(), g)
    }
}

/// Like [`attach1`] for a result of two inputs; `bwd(a, b, y, dL/dy)` returns the
/// gradients of `a` and `b` (`None` for one that needs none).
pub fn attach2(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    y: &Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)>
        + Send
        + Sync
        + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(y.detach());
    }
    a.apply_op2(
        b,
        Attach2 {
            name,
            y: Precomputed::new(y)?,
            bwd: Box::new(bwd),
        },
    )
}

/// Gradients of three inputs (`None` for one that needs none).
pub type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

type Backward3 = dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Grads3> + Send + Sync;

struct Attach3 {
    name: &'static str,
    y: Precomputed,
    bwd: Box<Backward3>,
}

impl CustomOp3 for Attach3 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.y.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.y.cuda()
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, c: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Grads3> {
        (self.bwd)(&a.detach(), &b.detach(), &c.detach(), g)
    }
}

/// Like [`attach1`] for a result of three inputs; `bwd(a, b, c, dL/dy)` returns their
/// gradients (the result itself is not kept for it).
pub fn attach3(
    name: &'static str,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    y: &Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Grads3> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() && !c.track_op() {
        return Ok(y.detach());
    }
    a.apply_op3(
        b,
        c,
        Attach3 {
            name,
            y: Precomputed::new(y)?,
            bwd: Box::new(bwd),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    #[test]
    fn attached_results_take_the_backward_they_are_given() -> Result<()> {
        let x = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
        // y = x² computed outside autograd; its backward 2·x·g.
        let y_detached = x.as_tensor().detach().sqr()?;
        let y = attach1("square", x.as_tensor(), &y_detached, |x, _y, g| {
            g * (x * 2.0)?
        })?;
        assert_eq!(y.to_vec1::<f32>()?, [1.0, 4.0, 9.0]);
        let g = (y * 3.0)?.sum_all()?.backward()?;
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>()?,
            [6.0, 12.0, 18.0]
        );
        Ok(())
    }

    #[test]
    fn a_strided_result_is_attached_with_its_own_values() -> Result<()> {
        let x = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        let yt = x.as_tensor().detach().t()?; // not contiguous
        let y = attach1("t", x.as_tensor(), &yt, |_, _, g| g.t())?;
        assert_eq!(y.to_vec2::<f32>()?, [[1.0, 3.0], [2.0, 4.0]]);
        let narrow = x.as_tensor().detach().narrow(0, 1, 1)?; // offset ≠ 0
        let z = attach1("row", x.as_tensor(), &narrow, |x, _, g| {
            Tensor::zeros_like(x)?.slice_assign(&[1..2, 0..2], g)
        })?;
        assert_eq!(z.to_vec2::<f32>()?, [[3.0, 4.0]]);
        let g = z.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>()?;
        assert_eq!(gx, [[0.0, 0.0], [1.0, 1.0]]);
        Ok(())
    }

    #[test]
    fn nothing_is_attached_to_inputs_without_a_graph() -> Result<()> {
        let x = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        let y = attach1("id", &x, &x, |_, _, g| Ok(g.clone()))?;
        assert!(!y.track_op());
        assert_eq!(y.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn the_override_is_scoped_to_the_thread_and_the_call() {
        let before = generic_forced();
        with_generic_kernels(true, || {
            assert!(generic_forced());
            assert!(generic_kernels(&Device::Cpu));
            with_generic_kernels(false, || assert!(!generic_forced()));
            assert!(generic_forced());
            std::thread::spawn(|| assert_eq!(generic_forced(), default_generic()))
                .join()
                .unwrap();
        });
        assert_eq!(generic_forced(), before);
    }
}

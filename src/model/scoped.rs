//! Per-thread state installed for the length of one call: the recomputation tape
//! (`linear::recompute`) and the gradient sink (`grad_sink`) are found by the ops that run
//! inside the call, on the calling thread, as candle runs a forward or backward pass.
use std::cell::RefCell;
use std::thread::LocalKey;

use candle_core::Result;

/// Runs `f` with `state` installed in `key`, then puts back what was there before; returns
/// `f`'s result and the state as `f` left it. When `f` fails, the previous state is put
/// back all the same and this call's state is dropped.
pub fn with_state<T: 'static, R>(
    key: &'static LocalKey<RefCell<Option<T>>>,
    state: T,
    f: impl FnOnce() -> Result<R>,
) -> Result<(R, Option<T>)> {
    struct Restore<T: 'static> {
        key: &'static LocalKey<RefCell<Option<T>>>,
        previous: Option<Option<T>>,
    }
    impl<T: 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            if let Some(previous) = self.previous.take() {
                self.key.with(|c| *c.borrow_mut() = previous);
            }
        }
    }
    let mut restore = Restore {
        key,
        previous: Some(key.with(|c| c.replace(Some(state)))),
    };
    let r = f()?;
    let previous = restore.previous.take().flatten();
    Ok((r, key.with(|c| c.replace(previous))))
}

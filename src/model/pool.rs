//! One pool of CPU threads for every kernel: candle's matmul (the `gemm` crate, which
//! runs on rayon's global pool), ftlab's own row kernels and the quantised matmul.
//!
//! candle 0.11 has a second pool for its element-wise ops (its "barrier pool", spinning
//! threads of its own). With two pools on a machine of few cores the threads of one take
//! the cores the other needs: after each element-wise op the next matmul found rayon's
//! threads asleep or its core held by a spinning barrier thread, and ran mostly on one
//! thread. On a 2-core machine a 256 × 576 × 1536 matmul that follows an addition took
//! 3.0 ms instead of 2.2 ms, and the addition itself 0.9 ms instead of 0.1 ms.
//!
//! So a process that computes calls [`configure`] first: candle's barrier pool gets no
//! threads of its own (its ops run on the thread that calls them), rayon's global pool
//! gets every thread, and the work itself runs on a thread of that pool ([`run`]), so a
//! matmul's fork and join stay inside the pool instead of waking it from outside.
use std::ops::Range;

use rayon::prelude::*;

/// Stack of the pool's threads: the work runs on one of them, and candle's backward pass
/// walks the graph recursively (the main thread's 8 MiB, with room to spare).
const STACK_BYTES: usize = 64 << 20;

/// Sets up the process's CPU threads: `threads` in rayon's global pool, none in candle's
/// barrier pool. Call it before any kernel runs (rayon's pool can be built once: a second
/// call, or a pool some kernel has already started, is reported as an error).
pub fn configure(threads: usize) -> anyhow::Result<()> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1, got {threads}");
    // candle reads these when its pools start: RAYON_NUM_THREADS for the matmul's
    // parallelism, CANDLE_NUM_THREADS for its barrier pool (1 = the calling thread only).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(STACK_BYTES)
        .thread_name(|i| format!("ftlab-cpu-{i}"))
        .build_global()
        .map_err(|e| anyhow::anyhow!("starting {threads} CPU threads: {e}"))
}

/// Runs `f` on a thread of rayon's global pool (where the matmul's own threads are) and
/// returns its result; on such a thread already, runs it in place.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Calls `f` on ranges that together cover `0..n` once, in parallel on the pool; about
/// eight ranges a thread, so a slow thread's share is taken over by the others.
pub(crate) fn par_ranges(n: usize, f: impl Fn(Range<usize>) + Sync) {
    if n == 0 {
        return;
    }
    let chunk = n.div_ceil(rayon::current_num_threads() * 8).max(1);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .for_each(|c| f(c * chunk..n.min((c + 1) * chunk)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn par_ranges_covers_every_index_once() {
        for n in [0, 1, 7, 64, 1000, 4097] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            par_ranges(n, |r| {
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn run_returns_the_result_on_a_pool_thread() {
        let (on_pool, v) = run(|| (rayon::current_thread_index().is_some(), 41 + 1));
        assert!(on_pool);
        assert_eq!(v, 42);
        // Nested: already on the pool, it runs in place.
        assert_eq!(run(|| run(|| 7)), 7);
    }
}

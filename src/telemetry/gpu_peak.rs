//! The peak GPU memory of this process, which NVML does not keep: a thread reads NVML's
//! per-process figure (else the device's used memory) every few milliseconds and keeps
//! the largest. What `/proc`'s VmHWM is to RAM.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::nvml::GpuMemory;

/// How often the sampler reads NVML.
const PERIOD: Duration = Duration::from_millis(5);

/// A running high-water mark of this process's GPU memory. Stops when dropped.
pub struct GpuPeak {
    peak: Arc<AtomicU64>,
    current: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GpuPeak {
    /// Starts sampling `gpu` for process `pid`.
    pub fn start(gpu: Arc<dyn GpuMemory>, pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let current = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let read = move || {
            gpu.process_memory(pid)
                .or_else(|| gpu.device_memory().ok().map(|(used, _)| used))
        };
        let thread = {
            let (peak, current, stop) = (peak.clone(), current.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(b) = read() {
                        current.store(b, Ordering::Relaxed);
                        peak.fetch_max(b, Ordering::Relaxed);
                    }
                    std::thread::sleep(PERIOD);
                }
            })
        };
        Self {
            peak,
            current,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest reading since the start or the last [`GpuPeak::reset`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The latest reading.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Starts a new high-water mark from the latest reading (as writing 5 to
    /// `/proc/self/clear_refs` does for VmHWM).
    pub fn reset(&self) {
        std::thread::sleep(PERIOD * 2);
        self.peak
            .store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Drop for GpuPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::GpuUnavailable;
    use std::sync::Mutex;

    /// A GPU whose process usage follows a script.
    struct Scripted(Mutex<Vec<u64>>);

    impl GpuMemory for Scripted {
        fn device_memory(&self) -> Result<(u64, u64), GpuUnavailable> {
            Ok((0, 80 << 30))
        }
        fn process_memory(&self, _pid: u32) -> Option<u64> {
            let mut v = self.0.lock().unwrap();
            let x = v[0];
            if v.len() > 1 {
                v.remove(0);
            }
            Some(x)
        }
    }

    #[test]
    fn the_peak_is_the_largest_reading_and_a_reset_starts_from_the_current_one() {
        let gpu = Arc::new(Scripted(Mutex::new(vec![10, 50, 20, 30])));
        let p = GpuPeak::start(gpu.clone(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.current() != 30 && std::time::Instant::now() < deadline {
            std::thread::sleep(PERIOD);
        }
        assert_eq!(p.peak(), 50);
        p.reset();
        assert_eq!(p.peak(), 30);
        gpu.0.lock().unwrap().push(40);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.peak() != 40 && std::time::Instant::now() < deadline {
            std::thread::sleep(PERIOD);
        }
        assert_eq!(p.peak(), 40);
    }
}

//! Memory samplers and throughput meters: real /proc values on Linux, a GPU probe that
//! turns a missing driver into a value, and the meter's arithmetic.
use std::time::Duration;

use ftlab::telemetry::{
    peak_rss_bytes, reset_peak, rss_bytes, sample, GpuProbe, GpuUnavailable, MemorySample,
    ThroughputMeter,
};

#[cfg(target_os = "linux")]
#[test]
fn rss_and_peak_are_real_values_and_peak_is_at_least_rss() {
    let rss = rss_bytes(None).unwrap();
    let peak = peak_rss_bytes(None).unwrap();
    assert!(rss > 1 << 20, "rss {rss}");
    assert!(peak >= rss, "peak {peak} < rss {rss}");
    // By pid too (this process).
    let own = rss_bytes(Some(std::process::id())).unwrap();
    assert!(own > 0);
}

#[cfg(target_os = "linux")]
#[test]
fn reset_peak_lowers_the_peak_after_a_big_allocation_is_freed() {
    const BIG: usize = 256 << 20;
    let v = vec![1u8; BIG]; // written, so resident
    let touched: u64 = v.iter().step_by(4096).map(|&x| x as u64).sum();
    assert_eq!(touched, (BIG / 4096) as u64);
    let peak_with = peak_rss_bytes(None).unwrap();
    assert!(
        peak_with >= BIG as u64,
        "peak {peak_with} below the allocation"
    );
    drop(v);
    reset_peak().unwrap();
    let peak_after = peak_rss_bytes(None).unwrap();
    assert!(
        peak_after + (BIG as u64) / 2 < peak_with,
        "peak {peak_after} not lowered from {peak_with}"
    );
    assert!(peak_after >= rss_bytes(None).unwrap() / 2);
}

#[test]
fn missing_process_is_an_error_not_a_panic() {
    assert!(rss_bytes(Some(u32::MAX)).is_err());
    assert!(peak_rss_bytes(Some(u32::MAX)).is_err());
    match sample(Some(u32::MAX), None) {
        MemorySample::Unavailable(reason) => assert!(reason.contains("/proc/"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn gpu_probe_is_a_value_with_or_without_a_driver() {
    match GpuProbe::init() {
        Ok(probe) => {
            // A machine with a GPU: real numbers.
            let (used, total) = probe.device_memory().unwrap();
            assert!(total > 0 && used <= total);
            assert!(!probe.name().is_empty());
            let s = sample(None, Some(&probe));
            assert_eq!(s.label(), "GPU memory (NVML)");
            assert!(s.is_gpu());
        }
        Err(e) => {
            // The normal case on CPU machines and CI: say so, fall back to RAM.
            assert_eq!(e.message(), "no GPU: showing RAM");
            assert_eq!(e.message(), GpuUnavailable::MESSAGE);
            let shown = e.to_string();
            assert!(shown.starts_with("no GPU: showing RAM"), "{shown}");
            assert!(!e.reason.is_empty());
        }
    }
    // An index past the last device is unavailable too, never a panic.
    let err = GpuProbe::init_index(u32::MAX).unwrap_err();
    assert!(err.to_string().contains("no GPU"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn sample_without_a_gpu_reads_process_ram_and_says_so() {
    let s = sample(None, None);
    assert_eq!(s.label(), "process RAM (RSS)");
    assert!(!s.is_gpu());
    match s {
        MemorySample::Ram { rss, peak } => {
            assert!(rss > 0);
            assert!(peak >= rss);
        }
        other => panic!("expected Ram, got {other:?}"),
    }
    assert!(s.bytes().unwrap() > 0);
    assert!(s.peak().unwrap() >= s.bytes().unwrap());
}

#[test]
fn throughput_meter_math() {
    let mut m = ThroughputMeter::new(2);
    assert_eq!(m.its(), 0.0);
    assert_eq!(m.tokens_per_sec(), 0.0);
    assert_eq!(m.secs_per_step(), None);

    m.record(100, Duration::from_millis(500));
    assert!((m.its() - 2.0).abs() < 1e-9);
    assert!((m.tokens_per_sec() - 200.0).abs() < 1e-9);

    m.record(300, Duration::from_millis(1500));
    // window: 2 steps, 400 tokens, 2 s
    assert!((m.its() - 1.0).abs() < 1e-9);
    assert!((m.tokens_per_sec() - 200.0).abs() < 1e-9);

    m.record(50, Duration::from_millis(250));
    // the first step left the window: 2 steps, 350 tokens, 1.75 s
    assert!((m.its() - 2.0 / 1.75).abs() < 1e-9);
    assert!((m.tokens_per_sec() - 200.0).abs() < 1e-9);
    assert!((m.secs_per_step().unwrap() - 0.875).abs() < 1e-9);
    // totals cover every step
    assert_eq!(m.steps(), 3);
    assert_eq!(m.tokens(), 450);
    assert_eq!(m.elapsed(), Duration::from_millis(2250));
    assert!((m.overall_tokens_per_sec() - 200.0).abs() < 1e-9);
    assert_eq!(m.eta(4), Some(Duration::from_millis(3500)));

    // A zero-length step does not divide by zero.
    let mut z = ThroughputMeter::new(1);
    z.record(10, Duration::ZERO);
    assert_eq!(z.its(), 0.0);
    assert_eq!(z.tokens_per_sec(), 0.0);
}

//! Iterations/s and tokens/s over a sliding window of recent steps, plus run totals.
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ThroughputMeter {
    window: usize,
    recent: VecDeque<(u64, Duration)>,
    window_tokens: u64,
    window_time: Duration,
    total_steps: u64,
    total_tokens: u64,
    total_time: Duration,
}

impl Default for ThroughputMeter {
    fn default() -> Self {
        Self::new(20)
    }
}

impl ThroughputMeter {
    /// A meter averaging over the last `window` steps (at least 1).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            recent: VecDeque::new(),
            window_tokens: 0,
            window_time: Duration::ZERO,
            total_steps: 0,
            total_tokens: 0,
            total_time: Duration::ZERO,
        }
    }

    /// Records one step that processed `step_tokens` tokens in `elapsed`.
    pub fn record(&mut self, step_tokens: u64, elapsed: Duration) {
        self.recent.push_back((step_tokens, elapsed));
        self.window_tokens += step_tokens;
        self.window_time += elapsed;
        while self.recent.len() > self.window {
            if let Some((tok, dt)) = self.recent.pop_front() {
                self.window_tokens -= tok;
                self.window_time -= dt;
            }
        }
        self.total_steps += 1;
        self.total_tokens += step_tokens;
        self.total_time += elapsed;
    }

    /// Steps per second over the window; 0 before the first step (or with zero time).
    pub fn its(&self) -> f64 {
        per_sec(self.recent.len() as f64, self.window_time)
    }

    /// Tokens per second over the window; 0 before the first step.
    pub fn tokens_per_sec(&self) -> f64 {
        per_sec(self.window_tokens as f64, self.window_time)
    }

    /// Mean seconds per step over the window, if any step was recorded.
    pub fn secs_per_step(&self) -> Option<f64> {
        (!self.recent.is_empty()).then(|| self.window_time.as_secs_f64() / self.recent.len() as f64)
    }

    /// Tokens per second over every step recorded.
    pub fn overall_tokens_per_sec(&self) -> f64 {
        per_sec(self.total_tokens as f64, self.total_time)
    }

    pub fn steps(&self) -> u64 {
        self.total_steps
    }

    pub fn tokens(&self) -> u64 {
        self.total_tokens
    }

    pub fn elapsed(&self) -> Duration {
        self.total_time
    }

    /// Estimated time for `remaining_steps` more steps at the window's pace.
    pub fn eta(&self, remaining_steps: u64) -> Option<Duration> {
        self.secs_per_step()
            .map(|s| Duration::from_secs_f64(s * remaining_steps as f64))
    }
}

fn per_sec(count: f64, time: Duration) -> f64 {
    let s = time.as_secs_f64();
    if s > 0.0 {
        count / s
    } else {
        0.0
    }
}

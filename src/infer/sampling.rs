//! Next-token selection: greedy, or temperature / top-k / top-p sampling, with HF's
//! repetition penalty.
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability mass ≥ top_p.
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 disables).
    pub top_k: usize,
    /// > 1 discourages tokens already present in the context (1 disables).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at (0 = the whole context).
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 50,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding without repetition penalty: what evaluations and RAG use by default
    /// (top-p, top-k and the seed do not matter at temperature 0).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be ≥ 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top-p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            bail!("repeat penalty must be > 0, got {}", self.repeat_penalty);
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks the next token from last-position logits given the tokens so far.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        apply_repeat_penalty(&mut logits, context, &self.params);
        if self.params.temperature == 0.0 {
            return argmax(&logits);
        }
        let candidates = filtered_probs(&logits, &self.params);
        let r: f64 = self.rng.gen::<f64>();
        let mut acc = 0.0;
        for &(id, p) in &candidates {
            acc += p;
            if r < acc {
                return id;
            }
        }
        candidates.last().map_or(0, |c| c.0)
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// HF's `RepetitionPenaltyLogitsProcessor`: positive logits are divided by the penalty,
/// negative ones multiplied, once per distinct token in the window.
pub fn apply_repeat_penalty(logits: &mut [f32], context: &[u32], p: &SamplingParams) {
    if p.repeat_penalty == 1.0 {
        return;
    }
    let window = if p.repeat_last_n == 0 || p.repeat_last_n > context.len() {
        context
    } else {
        &context[context.len() - p.repeat_last_n..]
    };
    let mut seen = std::collections::HashSet::new();
    for &t in window {
        let i = t as usize;
        if i < logits.len() && seen.insert(t) {
            let x = logits[i];
            logits[i] = if x > 0.0 {
                x / p.repeat_penalty
            } else {
                x * p.repeat_penalty
            };
        }
    }
}

/// Normalised probabilities of the tokens that survive temperature, top-k and top-p,
/// most likely first.
pub fn filtered_probs(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let t = p.temperature.max(1e-6);
    let mut scored: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .map(|(i, &x)| (i as u32, x as f64 / t))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 && scored.len() > p.top_k {
        scored.truncate(p.top_k);
    }
    let max = scored.first().map_or(0.0, |s| s.1);
    let mut probs: Vec<(u32, f64)> = scored.iter().map(|&(i, x)| (i, (x - max).exp())).collect();
    let z: f64 = probs.iter().map(|x| x.1).sum();
    probs.iter_mut().for_each(|x| x.1 /= z);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (n, &(_, pr)) in probs.iter().enumerate() {
            acc += pr;
            if acc >= p.top_p {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        let z: f64 = probs.iter().map(|x| x.1).sum();
        probs.iter_mut().for_each(|x| x.1 /= z);
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 1,
        }
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..params()
        })
        .unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0], &[]), 1);
    }

    #[test]
    fn top_k_and_top_p_keep_the_expected_sets() {
        let logits = [(0.5f32).ln(), (0.3f32).ln(), (0.15f32).ln(), (0.05f32).ln()];
        let k2 = filtered_probs(
            &logits,
            &SamplingParams {
                top_k: 2,
                ..params()
            },
        );
        assert_eq!(k2.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((k2[0].1 - 0.625).abs() < 1e-6);
        let p = filtered_probs(
            &logits,
            &SamplingParams {
                top_p: 0.79,
                ..params()
            },
        );
        assert_eq!(p.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        let p = filtered_probs(
            &logits,
            &SamplingParams {
                top_p: 0.81,
                ..params()
            },
        );
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn repeat_penalty_follows_hf_rule() {
        let mut l = [2.0f32, -2.0, 1.0];
        apply_repeat_penalty(
            &mut l,
            &[0, 1, 1],
            &SamplingParams {
                repeat_penalty: 2.0,
                ..params()
            },
        );
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()];
        let mut s = Sampler::new(params()).unwrap();
        let n = 4000;
        let ones = (0..n).filter(|_| s.sample(&logits, &[]) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "fraction {frac}");
        let mut a = Sampler::new(params()).unwrap();
        let mut b = Sampler::new(params()).unwrap();
        let xs: Vec<u32> = (0..50).map(|_| a.sample(&logits, &[])).collect();
        let ys: Vec<u32> = (0..50).map(|_| b.sample(&logits, &[])).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..params()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            ..params()
        })
        .is_err());
    }
}

//! NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"):
//! uniform noise added to the token embeddings during training.
//!
//! As in Hugging Face's implementation (`neftune_post_forward_hook`), the noise of a `(b, t, d)`
//! embedding output is drawn from `U(-α/√(t·d), α/√(t·d))`, with `t` the (padded) sequence
//! length of the batch. It is for training only; evaluation and generation use the embeddings
//! as they are. The noise is a constant, so the result stays differentiable with respect to
//! the embeddings (the gradient passes through unchanged).

use candle_core::{DType, Result, Tensor};
use rand::distributions::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The bound of NEFTune's noise for a sequence length and embedding width: `α/√(t·d)`.
pub fn neftune_magnitude(alpha: f64, seq_len: usize, dim: usize) -> f64 {
    alpha / ((seq_len * dim) as f64).sqrt()
}

/// `embeds` (`(b, t, d)`) plus uniform noise in `±alpha/√(t·d)`, drawn from a generator
/// seeded with `rng_seed` (use a different seed each step). `alpha = 0` returns `embeds`
/// unchanged, without drawing anything. A negative or non-finite `alpha` is an error.
pub fn neftune_noise(embeds: &Tensor, alpha: f64, rng_seed: u64) -> Result<Tensor> {
    if !alpha.is_finite() || alpha < 0.0 {
        candle_core::bail!("NEFTune alpha must be a finite number >= 0, got {alpha}");
    }
    if alpha == 0.0 {
        return Ok(embeds.clone());
    }
    let (b, t, d) = embeds.dims3()?;
    let mag = neftune_magnitude(alpha, t, d) as f32;
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let dist = Uniform::new_inclusive(-mag, mag);
    let noise: Vec<f32> = (0..b * t * d).map(|_| dist.sample(&mut rng)).collect();
    let mut noise = Tensor::from_vec(noise, (b, t, d), embeds.device())?;
    if embeds.dtype() != DType::F32 {
        noise = noise.to_dtype(embeds.dtype())?;
    }
    embeds.add(&noise)
}

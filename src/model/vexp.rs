//! exp over rows of f32, vectorised: the softmaxes of attention and of the LM head's
//! cross entropy, and SwiGLU's sigmoid.
//!
//! `f32::exp` is a call into libm per element, which the compiler cannot vectorise: a
//! LoRA step of SmolLM2 at 1 × 256 spent about 3 % of its time there (the head alone
//! exponentiates 49,152 logits per token, three times). [`exp`] is the Cephes
//! range-reduced polynomial (relative error about 2 × 10⁻⁷, exactly 0 below −87.3 and for
//! −∞, NaN kept) written without branches, and the row loops below are compiled twice:
//! for AVX2 + FMA (chosen at run time when the CPU has them) and for the baseline.
//! The tests compare it with `f64::exp`.

/// e^x for f32: exactly 0 for x < −87.33 (−∞ included), saturating at the largest
/// finite f32 above 88.72, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_55;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5 · 2²³ shift (no libm call, vectorises).
    const SHIFT: f32 = 12_582_912.0;
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let shifted = xc * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    // n as an integer, from the shifted value's mantissa bits (a float-to-int `as` cast
    // saturates, which keeps the compiler from vectorising it).
    let ni = shifted.to_bits() as i32 - SHIFT.to_bits() as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2ⁿ from the exponent bits; n ∈ [−126, 128] here (128 only at HI, where y < 1).
    let half = f32::from_bits(((ni / 2 + 127) as u32) << 23);
    let rest = f32::from_bits(((ni - ni / 2 + 127) as u32) << 23);
    let e = y * half * rest;
    if x < LO {
        0.0
    } else {
        e
    }
}

/// Compiles `$body` (a function of the given signature) twice: with AVX2 and FMA enabled,
/// used when the CPU has both, and for the baseline target.
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) -> $ret $body
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            #[inline(always)]
            fn plain($($arg: $ty),*) -> $ret $body
            plain($($arg),*)
        }
    };
}

dispatch! {
    /// In place: row[j] ← e^(row[j] − shift); returns Σ of the results.
    pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let mut sum = [0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for (x, s) in c.iter_mut().zip(sum.iter_mut()) {
                *x = exp(*x - shift);
                *s += *x;
            }
        }
        let mut total: f32 = sum.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - shift);
            total += *x;
        }
        total
    }
}

dispatch! {
    /// Σ e^(row[j] − shift), the row unchanged.
    pub fn sum_exp_shifted(row: &[f32], shift: f32) -> f32 {
        let mut sum = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (x, s) in c.iter().zip(sum.iter_mut()) {
                *s += exp(*x - shift);
            }
        }
        let mut total: f32 = sum.iter().sum();
        for x in chunks.remainder() {
            total += exp(*x - shift);
        }
        total
    }
}

dispatch! {
    /// In place: row[j] ← e^(row[j] − shift) · scale.
    pub fn exp_shifted_scaled(row: &mut [f32], shift: f32, scale: f32) -> () {
        for x in row.iter_mut() {
            *x = exp(*x - shift) * scale;
        }
    }
}

dispatch! {
    /// out[j] ← 1 / (1 + e^(−x[j])), the logistic sigmoid.
    pub fn sigmoid_into(x: &[f32], out: &mut [f32]) -> () {
        for (o, v) in out.iter_mut().zip(x) {
            *o = 1.0 / (1.0 + exp(-*v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f32, b: f64) -> f64 {
        if b == 0.0 {
            a.abs() as f64
        } else {
            ((a as f64 - b) / b).abs()
        }
    }

    #[test]
    fn exp_equals_f64_exp_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.7 {
            worst = worst.max(rel(exp(x), (x as f64).exp()));
            x += 0.013_7;
        }
        for x in [0.0f32, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, 88.0, -87.0] {
            worst = worst.max(rel(exp(x), (x as f64).exp()));
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_edges_are_zero_saturated_and_nan() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::INFINITY).is_finite() && exp(f32::INFINITY) > 3.0e38);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn row_helpers_equal_their_scalar_definitions() {
        // Lengths around the 8-wide chunks, with −∞ (masked) entries.
        for n in [0usize, 1, 7, 8, 9, 31, 100] {
            let row: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 5 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        (i as f32 * 0.37).sin() * 6.0
                    }
                })
                .collect();
            let shift = 1.25f32;
            let want: Vec<f64> = row
                .iter()
                .map(|&v| (v as f64 - shift as f64).exp())
                .collect();
            let want_sum: f64 = want.iter().sum();
            let mut a = row.clone();
            let sum = exp_shifted_sum(&mut a, shift);
            assert!(rel(sum, want_sum) < 1e-6, "n {n}: {sum} vs {want_sum}");
            assert!(a.iter().zip(&want).all(|(&x, &w)| rel(x, w) < 1e-6));
            assert!(rel(sum_exp_shifted(&row, shift), want_sum) < 1e-6);
            let mut b = row.clone();
            exp_shifted_scaled(&mut b, shift, 0.5);
            assert!(b.iter().zip(&want).all(|(&x, &w)| rel(x, w * 0.5) < 1e-6));
            let mut s = vec![0f32; n];
            sigmoid_into(&row, &mut s);
            for (&x, &v) in s.iter().zip(&row) {
                let w = 1.0 / (1.0 + (-(v as f64)).exp());
                assert!((x as f64 - w).abs() < 1e-7, "sigmoid({v}) = {x}, want {w}");
            }
        }
    }
}

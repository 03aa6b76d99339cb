//! bitsandbytes' 8-bit "dynamic" quantisation maps, used for the 8-bit optimiser states.
//!
//! [`dynamic_map`] rebuilds `bitsandbytes.functional.create_dynamic_map(signed,
//! max_exponent_bits=7, total_bits=8)`: for each decimal exponent `10^(i-6)`,
//! `i = 0..7`, the midpoints of `linspace(0.1, 1, k+1)` with `k = 2^i` values (signed,
//! mirrored to negative) or `k = 2^(i+1)` values (unsigned), plus `0` and `1`, sorted.
//! Torch computes it in f32 (linspace, midpoints, scaling); this emulates torch's CPU f32
//! linspace, so values agree with bitsandbytes' table to f32 rounding.
//!
//! The signed map (first moment) spans about [-0.993, 1]; index 127 is 0. The unsigned
//! map (second moment) spans [0, 1]; index 0 is 0.

use std::sync::OnceLock;

/// The 256-entry dynamic map, sorted ascending.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    const MAX_EXPONENT_BITS: i32 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXPONENT_BITS {
        // non_sign_bits = 7 for both (bitsandbytes' `total_bits - (1 if signed else 1)`).
        let fraction_items = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let b = torch_linspace_f32(0.1, 1.0, fraction_items);
        // Python's `10 ** (-(7 - 1) + i)`, correctly rounded, then cast to the f32 op.
        let scale: f64 = format!("1e{}", i - (MAX_EXPONENT_BITS - 1))
            .parse()
            .expect("valid float literal");
        let scale = scale as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-(scale * mean));
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len(), 256, "dynamic map must have 256 entries");
    data.sort_by(f32::total_cmp);
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// torch's CPU linspace for f32: first half `start + i*step`, second half
/// `end - (steps-1-i)*step`, with `step = (end - start) / (steps - 1)` in f32.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

/// A dynamic map prepared for fast quantisation: the sorted codes, the midpoints
/// between neighbours, and a 64 Ki-entry table indexed by the top 16 bits of the
/// order-preserving integer key of an f32, giving the number of midpoints below the
/// bucket's lower end. No bucket contains more than one midpoint (checked at
/// construction), so one branchless comparison finishes the job. Exact
/// round-to-nearest, same result as a search over the midpoints.
pub struct QuantMap {
    pub code: [f32; 256],
    /// Midpoints between neighbouring codes, padded with +inf.
    mid: [f32; 256],
    lut: Box<[u8]>,
    zero: u8,
}

/// Order-preserving map from f32 to u32 (NaNs aside).
#[inline]
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[inline]
fn from_order_key(k: u32) -> f32 {
    if k & 0x8000_0000 != 0 {
        f32::from_bits(k & 0x7FFF_FFFF)
    } else {
        f32::from_bits(!k)
    }
}

impl QuantMap {
    pub fn new(code: [f32; 256]) -> Self {
        let mut mid = [f32::INFINITY; 256];
        for k in 0..255 {
            mid[k] = (code[k] + code[k + 1]) / 2.0;
        }
        assert!(
            (0..254).all(|k| order_key(mid[k]) >> 16 != order_key(mid[k + 1]) >> 16),
            "quantisation map too dense for a one-step lookup table"
        );
        let lut: Box<[u8]> = (0u32..1 << 16)
            .map(|b| {
                let lo = from_order_key(b << 16);
                if lo.is_nan() {
                    0
                } else {
                    mid[..255].partition_point(|&m| m < lo) as u8
                }
            })
            .collect();
        let zero = code
            .iter()
            .position(|&c| c == 0.0)
            .expect("dynamic map contains 0") as u8;
        Self {
            code,
            mid,
            lut,
            zero,
        }
    }

    /// Index of the code nearest to `x` (ties to the lower code).
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        let i = self.lut[(order_key(x) >> 16) as usize];
        i + (self.mid[i as usize] < x) as u8
    }

    /// Signed quantisation with bitsandbytes' sign fix: the stored code never has the
    /// opposite sign of `x` (a small negative value is never rounded to `+0`), so the
    /// momentum direction survives quantisation.
    #[inline]
    pub fn quantize_signed(&self, x: f32) -> u8 {
        let mut c = self.quantize(x);
        if self.code[c as usize].is_sign_negative() != x.is_sign_negative() {
            if x > 0.0 {
                c = c.saturating_add(1);
            } else {
                c = c.saturating_sub(1);
            }
        }
        c
    }

    /// The midpoints between neighbouring codes (the last one +∞).
    pub fn midpoints(&self) -> [f32; 256] {
        self.mid
    }

    /// Index of the code equal to 0.
    pub fn zero_index(&self) -> u8 {
        self.zero
    }
}

/// Shared signed map (first moment).
pub fn signed_map() -> &'static QuantMap {
    static MAP: OnceLock<QuantMap> = OnceLock::new();
    MAP.get_or_init(|| QuantMap::new(dynamic_map(true)))
}

/// Shared unsigned map (second moment).
pub fn unsigned_map() -> &'static QuantMap {
    static MAP: OnceLock<QuantMap> = OnceLock::new();
    MAP.get_or_init(|| QuantMap::new(dynamic_map(false)))
}

/// Reference quantiser (slow linear scan over the midpoints; ties to the lower code).
pub fn quantize_nearest(code: &[f32; 256], x: f32) -> u8 {
    let mut i = 0;
    while i < 255 && (code[i] + code[i + 1]) / 2.0 < x {
        i += 1;
    }
    i as u8
}

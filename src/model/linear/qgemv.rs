//! Quantised matrix × a few vectors, for decoding: GGUF's 32-value block formats (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0) multiplied as they are stored in the file.
//!
//! Each activation row is quantised to 8 bits in blocks of 32 (llama.cpp's Q8_1: a scale
//! `d_a`, the codes `q_a`, and `s_a = d_a·Σq_a`). Each weight block is read as 32 integer
//! codes `u` with a scale `d_w` and an offset `m_w` (`w = d_w·u + m_w`), so one block adds
//! `d_w·d_a·Σ u·q_a + m_w·s_a`: a dot product of 32 bytes in integers. The x86 kernel does
//! it with AVX2 (`vpmaddubsw`); [`dot_plain`] is its plain twin, which the tests compare it
//! with. candle 0.11 multiplies Q4_1 and Q5_x scalar per element, which made them most of
//! a decoding step; its own fast kernels (k-quants) are kept for the formats not listed here.

use candle_core::quantized::GgmlDType;
use candle_core::Result;

/// Values per block in every format here.
pub const BLOCK: usize = 32;

/// A GGUF block format this kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// f16 d, 16 bytes of nibbles: w = d·(u − 8).
    Q4_0,
    /// f16 d, f16 m, 16 bytes of nibbles: w = d·u + m.
    Q4_1,
    /// f16 d, 32 high bits, 16 bytes of nibbles: w = d·(u − 16).
    Q5_0,
    /// f16 d, f16 m, 32 high bits, 16 bytes of nibbles: w = d·u + m.
    Q5_1,
    /// f16 d, 32 signed bytes: w = d·u.
    Q8_0,
}

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q5_1 => Some(Self::Q5_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
        }
    }
}

/// One row of activations quantised to 8 bits in blocks of 32.
#[derive(Debug, Clone)]
pub struct Q8Row {
    /// The codes, `round(x / d)` in −127..=127.
    pub q: Vec<i8>,
    /// Per block: the scale, max |x| / 127.
    pub d: Vec<f32>,
    /// Per block: d·Σq, what an offset `m_w` multiplies.
    pub s: Vec<f32>,
}

/// Quantises `x` (a multiple of 32 long) to 8 bits in blocks of 32.
pub fn quantize_row(x: &[f32]) -> Q8Row {
    let blocks = x.len() / BLOCK;
    let mut row = Q8Row {
        q: Vec::with_capacity(blocks * BLOCK),
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
    };
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for v in block {
            let q = (v * inv).round() as i8;
            sum += q as i32;
            row.q.push(q);
        }
        row.d.push(d);
        row.s.push(d * sum as f32);
    }
    row
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 32 codes of one block and its scale and offset: value i = d·u\[i\] + m.
pub fn block_codes(format: Format, b: &[u8]) -> ([i32; BLOCK], f32, f32) {
    let mut u = [0i32; BLOCK];
    let nibbles = |u: &mut [i32; BLOCK], qs: &[u8]| {
        for j in 0..16 {
            u[j] = (qs[j] & 0x0f) as i32;
            u[j + 16] = (qs[j] >> 4) as i32;
        }
    };
    let high_bits = |u: &mut [i32; BLOCK], qh: &[u8]| {
        let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (j, v) in u.iter_mut().enumerate() {
            *v |= (((bits >> j) & 1) << 4) as i32;
        }
    };
    let d = f16_at(b, 0);
    let m = match format {
        Format::Q4_0 => {
            nibbles(&mut u, &b[2..18]);
            -8.0 * d
        }
        Format::Q4_1 => {
            nibbles(&mut u, &b[4..20]);
            f16_at(b, 2)
        }
        Format::Q5_0 => {
            nibbles(&mut u, &b[6..22]);
            high_bits(&mut u, &b[2..6]);
            -16.0 * d
        }
        Format::Q5_1 => {
            nibbles(&mut u, &b[8..24]);
            high_bits(&mut u, &b[4..8]);
            f16_at(b, 2)
        }
        Format::Q8_0 => {
            for (v, q) in u.iter_mut().zip(&b[2..34]) {
                *v = *q as i8 as i32;
            }
            0.0
        }
    };
    (u, d, m)
}

/// One weight row (its blocks, as stored) · one quantised activation row: the plain twin.
pub fn dot_plain(format: Format, row: &[u8], a: &Q8Row) -> f32 {
    let mut acc = 0f32;
    for (i, block) in row.chunks_exact(format.block_bytes()).enumerate() {
        let (u, d, m) = block_codes(format, block);
        let q = &a.q[i * BLOCK..(i + 1) * BLOCK];
        let dot: i32 = u.iter().zip(q).map(|(u, q)| u * *q as i32).sum();
        acc += d * a.d[i] * dot as f32 + m * a.s[i];
    }
    acc
}

/// The same product with this CPU's SIMD kernel, or `None` where there is none (a CPU
/// without AVX2, FMA and F16C, or not x86-64).
pub fn dot_simd(format: Format, row: &[u8], a: &Q8Row) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        debug_assert_eq!(row.len() / format.block_bytes() * BLOCK, a.q.len());
        // SAFETY: the CPU has the features the kernel is compiled for, and `row` holds as
        // many blocks as `a` (checked by `matmul_t`).
        return Some(unsafe { x86::dot(format, row, a) });
    }
    let _ = (format, row, a);
    None
}

fn dot(format: Format, row: &[u8], a: &Q8Row) -> f32 {
    dot_simd(format, row, a).unwrap_or_else(|| dot_plain(format, row, a))
}

/// y (m × n, row-major) = x (m × k) · Wᵀ for W (n × k) stored as `format` blocks row after
/// row; the output rows are shared among the CPU threads (`pool`).
pub fn matmul_t(format: Format, w: &[u8], n: usize, k: usize, x: &[f32]) -> Result<Vec<f32>> {
    if !k.is_multiple_of(BLOCK) {
        candle_core::bail!("quantised matmul: {k} input features is not a multiple of {BLOCK}");
    }
    let row_bytes = k / BLOCK * format.block_bytes();
    if w.len() != n * row_bytes || !x.len().is_multiple_of(k.max(1)) {
        candle_core::bail!(
            "quantised matmul: {} weight bytes and {} inputs do not fit {n} × {k} in {format:?}",
            w.len(),
            x.len()
        );
    }
    let rows: Vec<Q8Row> = x.chunks_exact(k.max(1)).map(quantize_row).collect();
    let m = rows.len();
    let mut y = vec![0f32; m * n];
    let out = y.as_mut_ptr() as usize;
    crate::model::pool::par_ranges(n, |range| {
        for j in range {
            let wr = &w[j * row_bytes..(j + 1) * row_bytes];
            for (i, a) in rows.iter().enumerate() {
                // SAFETY: i·n + j < m·n, and each (i, j) is written by one range only.
                unsafe { *(out as *mut f32).add(i * n + j) = dot(format, wr, a) };
            }
        }
    });
    Ok(y)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Format, Q8Row, BLOCK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `row` holds `a.d.len()` blocks of `format`.
    pub unsafe fn dot(format: Format, row: &[u8], a: &Q8Row) -> f32 {
        match format {
            Format::Q4_0 => dot_blocks::<0>(row, a),
            Format::Q4_1 => dot_blocks::<1>(row, a),
            Format::Q5_0 => dot_blocks::<2>(row, a),
            Format::Q5_1 => dot_blocks::<3>(row, a),
            Format::Q8_0 => dot_blocks::<4>(row, a),
        }
    }

    const FORMATS: [Format; 5] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
    ];

    /// Two f16 at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16x2(p: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// 16 bytes of nibbles as 32 bytes: the low nibbles (values 0..16), then the high ones.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let m4 = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(raw, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        _mm256_set_m128i(hi, lo)
    }

    /// 32 bits at `p` as 32 bytes, 0x10 where bit i is set.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn high_bits(p: *const u8) -> __m256i {
        let bits = _mm256_set1_epi32((p as *const i32).read_unaligned());
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bytes = _mm256_shuffle_epi8(bits, spread);
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_blocks<const F: usize>(row: &[u8], a: &Q8Row) -> f32 {
        let format = FORMATS[F];
        let bb = format.block_bytes();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(), _mm256_setzero_ps()];
        let mut offsets = 0f32;
        for i in 0..a.d.len() {
            let p = row.as_ptr().add(i * bb);
            let mut q = _mm256_loadu_si256(a.q.as_ptr().add(i * BLOCK) as *const __m256i);
            let (u, d, m) = match format {
                Format::Q4_0 => {
                    let (d, _) = f16x2(p);
                    (nibbles(p.add(2)), d, -8.0 * d)
                }
                Format::Q4_1 => {
                    let (d, m) = f16x2(p);
                    (nibbles(p.add(4)), d, m)
                }
                Format::Q5_0 => {
                    let (d, _) = f16x2(p);
                    let u = _mm256_or_si256(nibbles(p.add(6)), high_bits(p.add(2)));
                    (u, d, -16.0 * d)
                }
                Format::Q5_1 => {
                    let (d, m) = f16x2(p);
                    let u = _mm256_or_si256(nibbles(p.add(8)), high_bits(p.add(4)));
                    (u, d, m)
                }
                Format::Q8_0 => {
                    let (d, _) = f16x2(p);
                    // Signed × signed as unsigned × signed: |w| · (q with w's sign).
                    let w = _mm256_loadu_si256(p.add(2) as *const __m256i);
                    q = _mm256_sign_epi8(q, w);
                    (_mm256_sign_epi8(w, w), d, 0.0)
                }
            };
            let products = _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones);
            let scale = _mm256_set1_ps(d * *a.d.get_unchecked(i));
            acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(products), scale, acc[i & 1]);
            offsets += m * *a.s.get_unchecked(i);
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    const ALL: [(Format, GgmlDType); 5] = [
        (Format::Q4_0, GgmlDType::Q4_0),
        (Format::Q4_1, GgmlDType::Q4_1),
        (Format::Q5_0, GgmlDType::Q5_0),
        (Format::Q5_1, GgmlDType::Q5_1),
        (Format::Q8_0, GgmlDType::Q8_0),
    ];

    fn quantized(dtype: GgmlDType, n: usize, k: usize) -> Result<(QTensor, Tensor)> {
        let w = Tensor::randn(0f32, 1., (n, k), &Device::Cpu)?;
        Ok((QTensor::quantize(&w, dtype)?, w))
    }

    #[test]
    fn block_codes_read_the_blocks_as_candle_dequantises_them() -> Result<()> {
        for (format, dtype) in ALL {
            let (q, _) = quantized(dtype, 3, 96)?;
            let expected = q
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let data = q.data()?;
            assert_eq!(data.len(), 3 * 3 * format.block_bytes(), "{format:?}");
            for (bi, block) in data.chunks_exact(format.block_bytes()).enumerate() {
                let (u, d, m) = block_codes(format, block);
                for (i, u) in u.iter().enumerate() {
                    let got = d * *u as f32 + m;
                    let want = expected[bi * BLOCK + i];
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{format:?}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_simd_kernel_equals_its_plain_twin_on_every_format() -> Result<()> {
        let x = Tensor::randn(0f32, 1., 256, &Device::Cpu)?.to_vec1::<f32>()?;
        let a = quantize_row(&x);
        for (format, dtype) in ALL {
            let (q, _) = quantized(dtype, 1, 256)?;
            let data = q.data()?;
            let plain = dot_plain(format, &data, &a);
            let Some(simd) = dot_simd(format, &data, &a) else {
                eprintln!("no SIMD kernel on this CPU: only the plain twin is checked");
                return Ok(());
            };
            assert!(
                (plain - simd).abs() <= 1e-5 * plain.abs().max(1.0),
                "{format:?}: plain {plain} simd {simd}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_row_of_8_bit_codes_reproduces_its_values() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let a = quantize_row(&x);
        for (i, v) in x.iter().enumerate() {
            let b = i / BLOCK;
            assert!((a.d[b] * a.q[i] as f32 - v).abs() <= a.d[b] / 2.0 + 1e-6);
        }
        let zeros = quantize_row(&[0.0; 32]);
        assert_eq!((zeros.d[0], zeros.s[0]), (0.0, 0.0));
    }

    #[test]
    fn the_matmul_matches_the_dequantised_weight_and_candles_kernel() -> Result<()> {
        let (n, k, m) = (40, 128, 3);
        let x = Tensor::randn(0f32, 1., (m, k), &Device::Cpu)?;
        for (format, dtype) in ALL {
            let (q, _) = quantized(dtype, n, k)?;
            let got = matmul_t(
                format,
                &q.data()?,
                n,
                k,
                &x.flatten_all()?.to_vec1::<f32>()?,
            )?;
            let got = Tensor::from_vec(got, (m, n), &Device::Cpu)?;
            let dense = x.matmul(&q.dequantize(&Device::Cpu)?.t()?)?;
            let candle = candle_core::Module::forward(
                &candle_core::quantized::QMatMul::from_qtensor(q)?,
                &x,
            )?;
            let scale = dense.abs()?.max_all()?.to_scalar::<f32>()?;
            // The activations' 8-bit rounding, as llama.cpp and candle do it.
            for (name, other, tol) in [("dense", &dense, 2e-2), ("candle", &candle, 5e-3)] {
                let diff = (&got - other)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff <= tol * scale,
                    "{format:?} vs {name}: {diff} of {scale}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn misshapen_inputs_are_errors() {
        let w = vec![0u8; 20];
        assert!(matmul_t(Format::Q4_1, &w, 1, 48, &[0.0; 48]).is_err());
        assert!(matmul_t(Format::Q4_1, &w, 2, 32, &[0.0; 32]).is_err());
        assert!(matmul_t(Format::Q4_1, &w, 1, 32, &[0.0; 33]).is_err());
        assert!(matmul_t(Format::Q4_1, &w, 1, 32, &[0.0; 64]).is_ok());
    }
}

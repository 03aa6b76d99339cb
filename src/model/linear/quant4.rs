//! Blockwise 4-bit quantisation of frozen base weights, as in bitsandbytes / QLoRA
//! (Dettmers et al., 2023).
//!
//! A weight (out, in) is flattened row-major and cut into blocks of [`BLOCK_SIZE`] = 64
//! values. Each block stores its absolute maximum, and each value the index of the code
//! value nearest to `x / absmax`; two 4-bit indices share a byte (the first value of a
//! pair in the high nibble, as bitsandbytes packs them). The last block is padded with
//! the code of 0.0 when the element count is not a multiple of 64.
//!
//! Double quantisation (QLoRA §3) quantises the per-block absmax constants again: their
//! mean is subtracted (one f32 offset) and the centred values are quantised to 8 bits in
//! groups of [`DQ_BLOCK_SIZE`] = 256, each group keeping one f32 scale. Storage drops from
//! 32/64 = 0.5 to 8/64 + 32/(64·256) ≈ 0.127 bits per parameter of overhead.
use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Values per first-level quantisation block (bitsandbytes' QLoRA default).
pub const BLOCK_SIZE: usize = 64;
/// Absmax constants per second-level (double quantisation) block.
pub const DQ_BLOCK_SIZE: usize = 256;
/// Largest 8-bit code magnitude of the symmetric linear map used by double quantisation.
pub const DQ_LEVELS: f32 = 127.0;

/// NormalFloat-4: the 16 quantiles of N(0, 1) normalised to [-1, 1], exactly the table of
/// bitsandbytes (`csrc/kernels.cu`, `dDequantizeNF4` / `nf4_dequantization_lut`). Index i
/// is the 4-bit code i; the table is sorted ascending and contains an exact zero (code 7).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' FP4 (e2m1 with exponent bias 3 and one subnormal, 0.0625), normalised by
/// its largest magnitude 12 so the code spans [-1, 1]. Source: bitsandbytes
/// `csrc/kernels.cu` `dDequantizeFP4Tree` (later `fp4_dequantization_lut`), whose entries
/// for the 3 magnitude bits 0b000..0b111 are 0, 0.0052083333 (= 0.0625/12), 0.6666667
/// (8/12), 1 (12/12), 0.3333333 (4/12), 0.5 (6/12), 0.1666667 (2/12), 0.25 (3/12); bit
/// 0b1000 is the sign (so code 8 is −0). The same grid is `get_4bit_type("fp4")` in
/// bitsandbytes' `functional.py`: [0, 0.0625, 8, 12, 4, 6, 2, 3, −0, …] / 12. The index
/// layout is kept so that packed nibbles mean the same thing as in bitsandbytes.
pub const FP4_CODE: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0, // 12 / 12
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    -0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -12.0 / 12.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// FP4 magnitudes sorted ascending with their 3-bit codes (sign is bit 0b1000).
const FP4_MAG_SORTED: [(f32, u8); 8] = [
    (0.0, 0b000),
    (0.0625 / 12.0, 0b001),
    (2.0 / 12.0, 0b110),
    (3.0 / 12.0, 0b111),
    (4.0 / 12.0, 0b100),
    (6.0 / 12.0, 0b101),
    (8.0 / 12.0, 0b010),
    (1.0, 0b011), // 12 / 12
];

/// The 4-bit data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant4Kind {
    /// NormalFloat-4 (QLoRA's default; information-theoretically tuned to N(0, 1) weights).
    Nf4,
    /// bitsandbytes' 4-bit float (e2m1).
    Fp4,
}

impl Quant4Kind {
    /// The 16 code values, indexed by the 4-bit code.
    pub fn code(&self) -> &'static [f32; 16] {
        match self {
            Quant4Kind::Nf4 => &NF4_CODE,
            Quant4Kind::Fp4 => &FP4_CODE,
        }
    }

    /// Half of the largest gap between neighbouring code values: the worst-case rounding
    /// error of a normalised value in [-1, 1].
    pub fn max_half_gap(&self) -> f32 {
        let mut v: Vec<f32> = self.code().to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) * 0.5
    }

    pub fn name(&self) -> &'static str {
        match self {
            Quant4Kind::Nf4 => "nf4",
            Quant4Kind::Fp4 => "fp4",
        }
    }

    fn quantizer(&self) -> Quantizer {
        match self {
            Quant4Kind::Nf4 => {
                let mut t = [0f32; 15];
                for (i, t) in t.iter_mut().enumerate() {
                    *t = (NF4_CODE[i] + NF4_CODE[i + 1]) * 0.5;
                }
                Quantizer::Nf4(t)
            }
            Quant4Kind::Fp4 => {
                let mut t = [0f32; 7];
                for (i, t) in t.iter_mut().enumerate() {
                    *t = (FP4_MAG_SORTED[i].0 + FP4_MAG_SORTED[i + 1].0) * 0.5;
                }
                Quantizer::Fp4(t)
            }
        }
    }
}

/// Nearest-code search through the midpoints between neighbouring code values.
///
/// Ties (a value exactly on a midpoint) go to the lower code for NF4 and to the smaller
/// magnitude for FP4 — both as bitsandbytes' `dQuantizeNF4` / `dQuantizeFP4` decide
/// (`x > midpoint` moves up).
enum Quantizer {
    Nf4([f32; 15]),
    Fp4([f32; 7]),
}

impl Quantizer {
    #[inline]
    fn index(&self, x: f32) -> u8 {
        match self {
            Quantizer::Nf4(mid) => mid.partition_point(|&t| x > t) as u8,
            Quantizer::Fp4(mid) => {
                let sign = if x < 0.0 { 0b1000 } else { 0 };
                let i = mid.partition_point(|&t| x.abs() > t);
                FP4_MAG_SORTED[i].1 | sign
            }
        }
    }
}

/// The per-block scaling constants.
#[derive(Clone, PartialEq)]
pub enum Absmax {
    /// One f32 absmax per 64-value block.
    F32(Vec<f32>),
    /// Double quantisation: `absmax[i] ≈ offset + codes[i] / 127 · scales[i / 256]`.
    ///
    /// The 8-bit map is a symmetric *linear* one (codes −127..=127), not bitsandbytes'
    /// dynamic (tree) map. Why: once their mean is subtracted, the absmax constants of
    /// 64-value blocks are light-tailed (roughly Gaussian), so a uniform grid fits them
    /// better — its worst step is scale/127 ≈ 0.0079·scale, whereas the dynamic map's
    /// steps near ±1 are 0.9/64 ≈ 0.014·scale (its extra resolution near 0 is meant for
    /// heavy-tailed optimiser states). It also gives a simple, checkable error bound
    /// (|error| ≤ scale/254) and needs no 256-entry code table. Storage is identical.
    Double {
        codes: Vec<i8>,
        scales: Vec<f32>,
        offset: f32,
        /// Number of first-level blocks (absmax constants) encoded.
        len: usize,
    },
}

impl Absmax {
    /// Number of first-level blocks.
    pub fn len(&self) -> usize {
        match self {
            Absmax::F32(v) => v.len(),
            Absmax::Double { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_double(&self) -> bool {
        matches!(self, Absmax::Double { .. })
    }

    /// The absmax constants as used by dequantisation (decoded when double-quantised).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::F32(v) => v.clone(),
            Absmax::Double {
                codes,
                scales,
                offset,
                len,
            } => codes[..*len]
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    let step = scales[i / DQ_BLOCK_SIZE] / DQ_LEVELS;
                    // The true constants are ≥ 0, so clamping can only reduce the error.
                    (offset + q as f32 * step).max(0.0)
                })
                .collect(),
        }
    }

    /// The quantisation step (scale / 127) of each second-level block; empty without
    /// double quantisation.
    pub fn dq_steps(&self) -> Vec<f32> {
        match self {
            Absmax::F32(_) => Vec::new(),
            Absmax::Double { scales, .. } => scales.iter().map(|s| s / DQ_LEVELS).collect(),
        }
    }

    pub fn storage_bytes(&self) -> usize {
        match self {
            Absmax::F32(v) => v.len() * 4,
            Absmax::Double { codes, scales, .. } => codes.len() + scales.len() * 4 + 4,
        }
    }

    /// Double-quantises f32 absmax constants (mean offset, symmetric linear 8-bit map in
    /// groups of 256).
    pub fn double_quantize(absmax: &[f32]) -> Self {
        let len = absmax.len();
        let offset = if len == 0 {
            0.0
        } else {
            (absmax.iter().map(|&a| a as f64).sum::<f64>() / len as f64) as f32
        };
        let mut codes = Vec::with_capacity(len);
        let mut scales = Vec::with_capacity(len.div_ceil(DQ_BLOCK_SIZE));
        for group in absmax.chunks(DQ_BLOCK_SIZE) {
            let scale = group.iter().fold(0f32, |m, &a| m.max((a - offset).abs()));
            scales.push(scale);
            let inv = if scale > 0.0 { DQ_LEVELS / scale } else { 0.0 };
            codes.extend(
                group
                    .iter()
                    .map(|&a| ((a - offset) * inv).round().clamp(-DQ_LEVELS, DQ_LEVELS) as i8),
            );
        }
        Absmax::Double {
            codes,
            scales,
            offset,
            len,
        }
    }
}

impl std::fmt::Debug for Absmax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Absmax::F32(v) => write!(f, "Absmax::F32({} blocks)", v.len()),
            Absmax::Double {
                scales,
                offset,
                len,
                ..
            } => write!(
                f,
                "Absmax::Double({len} blocks, {} groups, offset {offset})",
                scales.len()
            ),
        }
    }
}

/// A frozen weight (out, in) stored as blockwise 4-bit codes.
#[derive(Clone)]
pub struct Quant4Tensor {
    /// (out_features, in_features).
    pub shape: (usize, usize),
    pub kind: Quant4Kind,
    /// Two 4-bit codes per byte, `ceil(numel / 64) * 32` bytes (the last block padded).
    pub packed: Vec<u8>,
    pub absmax: Absmax,
    pub block_size: usize,
    /// Dtype of the weight that was quantised: what `BaseWeight::dense` dequantises to.
    pub dtype: DType,
    /// Device of the weight that was quantised (the codes themselves live in host memory).
    pub device: Device,
    /// The codes as tensors on the device that computes with them (the generic path, see
    /// [`Quant4Tensor::dequantize_on`]), made on first use.
    device_codes: std::sync::OnceLock<DeviceCodes>,
}

/// 4-bit codes as tensors on one device: what the generic dequantisation reads.
#[derive(Clone)]
struct DeviceCodes {
    /// Two codes per byte, as `packed`, u8.
    packed: Tensor,
    /// The 16 code values, f32.
    table: Tensor,
    absmax: DeviceAbsmax,
}

#[derive(Clone)]
enum DeviceAbsmax {
    /// (blocks, 1) f32.
    F32(Tensor),
    /// u8 codes `q + 127` (groups, 256), padded with the code of the offset; f32 steps
    /// (groups, 1); the offset; the number of blocks.
    Double {
        codes: Tensor,
        steps: Tensor,
        offset: f32,
        len: usize,
    },
}

impl DeviceCodes {
    fn new(q: &Quant4Tensor, dev: &Device) -> Result<Self> {
        let absmax = match &q.absmax {
            Absmax::F32(v) => DeviceAbsmax::F32(Tensor::from_slice(v, (v.len(), 1), dev)?),
            Absmax::Double {
                codes,
                scales,
                offset,
                len,
            } => {
                let groups = scales.len();
                let mut shifted = vec![DQ_LEVELS as u8; groups * DQ_BLOCK_SIZE];
                for (d, &c) in shifted.iter_mut().zip(&codes[..*len]) {
                    *d = (c as i16 + DQ_LEVELS as i16) as u8;
                }
                DeviceAbsmax::Double {
                    codes: Tensor::from_vec(shifted, (groups, DQ_BLOCK_SIZE), dev)?,
                    steps: Tensor::from_vec(q.absmax.dq_steps(), (groups, 1), dev)?,
                    offset: *offset,
                    len: *len,
                }
            }
        };
        Ok(Self {
            packed: Tensor::from_slice(&q.packed, q.packed.len(), dev)?,
            table: Tensor::from_slice(q.kind.code(), 16, dev)?,
            absmax,
        })
    }

    /// The absmax constants (blocks, 1), decoded as [`Absmax::values`] does (the same f32
    /// operations in the same order, so the same bits).
    fn absmax(&self) -> Result<Tensor> {
        match &self.absmax {
            DeviceAbsmax::F32(t) => Ok(t.clone()),
            DeviceAbsmax::Double {
                codes,
                steps,
                offset,
                len,
            } => (codes.to_dtype(DType::F32)? - DQ_LEVELS as f64)?
                .broadcast_mul(steps)?
                .affine(1.0, *offset as f64)?
                .relu()?
                .flatten_all()?
                .narrow(0, 0, *len)?
                .reshape((*len, 1)),
        }
    }
}

impl std::fmt::Debug for Quant4Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quant4Tensor")
            .field("shape", &self.shape)
            .field("kind", &self.kind)
            .field("block_size", &self.block_size)
            .field("absmax", &self.absmax)
            .field("bits_per_param", &self.bits_per_param())
            .finish()
    }
}

impl Quant4Tensor {
    /// Quantises a rank-2 weight (out, in) blockwise to 4 bits.
    pub fn quantize(w: &Tensor, kind: Quant4Kind, double_quant: bool) -> Result<Self> {
        let (out_f, in_f) = match w.dims() {
            &[o, i] => (o, i),
            d => bail!("Quant4Tensor::quantize expects a rank-2 weight (out, in), got {d:?}"),
        };
        let data = w
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        let n = data.len();
        let nblocks = n.div_ceil(BLOCK_SIZE);
        let mut packed = vec![0u8; nblocks * BLOCK_SIZE / 2];
        let mut absmax = vec![0f32; nblocks];
        let q = kind.quantizer();
        let pad = q.index(0.0);
        packed
            .par_chunks_mut(BLOCK_SIZE / 2)
            .zip(absmax.par_iter_mut())
            .enumerate()
            .for_each(|(b, (bytes, am))| {
                let start = b * BLOCK_SIZE;
                let vals = &data[start..(start + BLOCK_SIZE).min(n)];
                let a = vals.iter().fold(0f32, |m, &x| m.max(x.abs()));
                *am = a;
                // An all-zero block stores absmax 0 and codes for 0 (no division by zero).
                let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
                for (j, byte) in bytes.iter_mut().enumerate() {
                    let hi = vals.get(2 * j).map_or(pad, |&x| q.index(x * inv));
                    let lo = vals.get(2 * j + 1).map_or(pad, |&x| q.index(x * inv));
                    *byte = (hi << 4) | lo;
                }
            });
        let absmax = if double_quant {
            Absmax::double_quantize(&absmax)
        } else {
            Absmax::F32(absmax)
        };
        Ok(Self {
            shape: (out_f, in_f),
            kind,
            packed,
            absmax,
            block_size: BLOCK_SIZE,
            dtype: w.dtype(),
            device: w.device().clone(),
            device_codes: std::sync::OnceLock::new(),
        })
    }

    /// (out_features, in_features).
    pub fn dims(&self) -> (usize, usize) {
        self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    /// The 4-bit code of element `i` (row-major).
    pub fn code_at(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0x0f
        }
    }

    /// Dequantises into `out` (row-major (out, in), `numel()` values) with plain loops,
    /// in parallel over chunks of blocks.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        let n = self.numel();
        if out.len() != n {
            bail!(
                "dequantize_into: buffer has {} values, weight has {n}",
                out.len()
            );
        }
        let bs = self.block_size;
        let absmax = self.absmax.values();
        let code = self.kind.code();
        // 64 blocks (16 KiB of f32) per rayon task.
        const BLOCKS_PER_TASK: usize = 64;
        out.par_chunks_mut(bs * BLOCKS_PER_TASK)
            .enumerate()
            .for_each(|(t, chunk)| {
                let first_block = t * BLOCKS_PER_TASK;
                for (bi, vals) in chunk.chunks_mut(bs).enumerate() {
                    let b = first_block + bi;
                    let a = absmax[b];
                    let lut: [f32; 16] = std::array::from_fn(|i| code[i] * a);
                    let bytes = &self.packed[b * bs / 2..(b + 1) * bs / 2];
                    let half = vals.len() / 2;
                    let mut pairs = vals.chunks_exact_mut(2);
                    for (pair, &byte) in (&mut pairs).zip(bytes) {
                        pair[0] = lut[(byte >> 4) as usize];
                        pair[1] = lut[(byte & 0x0f) as usize];
                    }
                    if let [last] = pairs.into_remainder() {
                        *last = lut[(bytes[half] >> 4) as usize];
                    }
                }
            });
        Ok(())
    }

    /// The dequantised weight (out, in), computed in f32 on the CPU then cast and moved.
    pub fn dequantize(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut buf = vec![0f32; self.numel()];
        self.dequantize_into(&mut buf)?;
        Tensor::from_vec(buf, self.shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// The dequantised weight (out, in) on `device`, from codes kept there (copied on
    /// first use; only they stay on the device between calls), for devices without the
    /// CPU kernel (and the CPU when the generic path is forced): on a GPU the CUDA kernel
    /// ([`Self::dequantize_with_kernel`]), elsewhere — or with the generic path forced —
    /// tensor ops ([`Self::dequantize_with_tensor_ops`]). The same values as
    /// [`Self::dequantize_into`].
    pub fn dequantize_on(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let w = if device.is_cuda() && !crate::model::generic::generic_forced() {
            self.dequantize_with_kernel(device)?
        } else {
            self.dequantize_with_tensor_ops(device)?
        };
        w.to_dtype(dtype)
    }

    /// [`Self::dequantize_on`] in f32 by the dequantisation kernel (`kernels/quant4.cu` on
    /// CUDA, its Rust body on the CPU).
    pub fn dequantize_with_kernel(&self, device: &Device) -> Result<Tensor> {
        let codes = self.codes_on(device)?;
        super::quant4_kernel::dequant4(
            &codes.packed,
            &codes.absmax()?,
            &codes.table,
            self.numel(),
            self.block_size,
        )?
        .reshape(self.shape)
    }

    /// [`Self::dequantize_on`] in f32 with candle tensor ops (any device): the generic
    /// definition.
    pub fn dequantize_with_tensor_ops(&self, device: &Device) -> Result<Tensor> {
        let codes = self.codes_on(device)?;
        let idx = {
            let bytes = codes.packed.to_dtype(DType::F32)?;
            let hi = (&bytes / 16.0)?.floor()?;
            let lo = (&bytes - (&hi * 16.0)?)?;
            drop(bytes);
            Tensor::stack(&[hi, lo], 1)?
                .flatten_all()?
                .to_dtype(DType::U32)?
        };
        let blocks = self.packed.len() * 2 / self.block_size;
        let values = codes.table.index_select(&idx, 0)?;
        drop(idx);
        values
            .reshape((blocks, self.block_size))?
            .broadcast_mul(&codes.absmax()?)?
            .flatten_all()?
            .narrow(0, 0, self.numel())?
            .reshape(self.shape)
    }

    /// The codes as tensors on `device`.
    fn codes_on(&self, device: &Device) -> Result<DeviceCodes> {
        Ok(match self.device_codes.get() {
            // By location: two handles of one GPU are one device.
            Some(c) if c.packed.device().location() == device.location() => c.clone(),
            // Kept for the first device asked for (a model computes on one device).
            _ => {
                let c = DeviceCodes::new(self, device)?;
                let _ = self.device_codes.set(c.clone());
                c
            }
        })
    }

    /// Bytes held: packed codes plus the (possibly double-quantised) absmax constants.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len() + self.absmax.storage_bytes()
    }

    /// Storage bits per weight: 4 + 32/64 = 4.5 without double quantisation, about
    /// 4 + 8/64 + 32/(64·256) ≈ 4.127 with it.
    pub fn bits_per_param(&self) -> f64 {
        if self.numel() == 0 {
            return 0.0;
        }
        self.storage_bytes() as f64 * 8.0 / self.numel() as f64
    }
}

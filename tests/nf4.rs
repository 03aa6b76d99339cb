//! Blockwise 4-bit quantisation (NF4 / FP4, double quantisation) and the frozen 4-bit
//! linear layer whose forward and backward dequantise on the fly.
mod common;
use common::max_abs_diff;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use ftlab::adapt::quantize::quantize_base;
use ftlab::model::linear::frozen::quant_matmul_t;
use ftlab::model::linear::quant4::{
    Absmax, Quant4Kind, Quant4Tensor, BLOCK_SIZE, DQ_BLOCK_SIZE, FP4_CODE, NF4_CODE,
};
use ftlab::model::linear::{BaseWeight, Linear, LoraAdapter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KINDS: [Quant4Kind; 2] = [Quant4Kind::Nf4, Quant4Kind::Fp4];

/// Deterministic N(0, 1) samples (Box–Muller).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

fn randn(shape: (usize, usize), seed: u64) -> Tensor {
    Tensor::from_vec(normal(shape.0 * shape.1, seed), shape, &Device::Cpu).unwrap()
}

#[test]
fn nf4_code_is_bitsandbytes_table() {
    // bitsandbytes csrc/kernels.cu nf4_dequantization_lut, full precision.
    let bnb: [f64; 16] = [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ];
    for (i, (&c, &r)) in NF4_CODE.iter().zip(&bnb).enumerate() {
        assert_eq!(c, r as f32, "NF4 code {i}");
    }
    // The table in CANDLE_NOTES.md (7 decimals).
    let notes: [f64; 16] = [
        -1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
        0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0,
    ];
    for (&c, &r) in NF4_CODE.iter().zip(&notes) {
        assert!((c as f64 - r).abs() < 1e-7);
    }
    assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn fp4_code_is_bitsandbytes_e2m1() {
    // bitsandbytes' FP4: index = sign·8 + e1·4 + e2·2 + p1, exponent bias 3, subnormal
    // 0.0625, normalised by the largest magnitude 12 (tests/test_functional.py
    // test_4bit_quant builds the same grid; csrc/kernels.cu dDequantizeFP4Tree stores it
    // already divided by 12).
    for idx in 0..16u32 {
        let (sign, e, p1) = (idx >> 3, (idx >> 1) & 0b11, idx & 1);
        let mag = if e == 0 {
            0.0625 * p1 as f64
        } else {
            2f64.powi(-(e as i32) + 3 + 1) * if p1 == 1 { 1.5 } else { 1.0 }
        };
        let v = if sign == 1 { -mag } else { mag } / 12.0;
        assert_eq!(FP4_CODE[idx as usize], v as f32, "FP4 code {idx}");
    }
    // The literal LUT of csrc/kernels.cu (magnitudes for codes 0b000..0b111).
    let lut: [f64; 8] = [
        0.0,
        0.005208333333,
        0.66666667,
        1.0,
        0.33333333,
        0.5,
        0.16666667,
        0.25,
    ];
    for i in 0..8 {
        assert!((FP4_CODE[i] as f64 - lut[i]).abs() < 1e-7);
        assert!((FP4_CODE[i + 8] as f64 + lut[i]).abs() < 1e-7);
    }
}

/// Quantise → dequantise: every element is the nearest code value times its block's
/// absmax, so the error is at most half the largest code gap times that absmax.
fn check_roundtrip(w: &Tensor, kind: Quant4Kind) -> f32 {
    let q = Quant4Tensor::quantize(w, kind, false).unwrap();
    let d = q.dequantize(DType::F32, &Device::Cpu).unwrap();
    assert_eq!(d.dims(), w.dims());
    let x = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let y = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let Absmax::F32(absmax) = &q.absmax else {
        panic!("expected plain absmax")
    };
    assert_eq!(absmax.len(), x.len().div_ceil(BLOCK_SIZE));
    let half_gap = kind.max_half_gap();
    let mut sum = 0f64;
    for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
        let am = absmax[i / BLOCK_SIZE];
        let block =
            &x[i / BLOCK_SIZE * BLOCK_SIZE..((i / BLOCK_SIZE + 1) * BLOCK_SIZE).min(x.len())];
        assert_eq!(am, block.iter().fold(0f32, |m, v| m.max(v.abs())));
        let err = (a - b).abs();
        assert!(
            err <= half_gap * am * (1.0 + 1e-6) + 1e-7,
            "{kind:?} elem {i}: {a} -> {b}, err {err} > {}",
            half_gap * am
        );
        // Nearest code value (up to f32 rounding of x / absmax).
        let best = kind
            .code()
            .iter()
            .map(|c| (a - c * am).abs())
            .fold(f32::INFINITY, f32::min);
        assert!(
            err <= best + 1e-6 * am.max(1e-30),
            "{kind:?} elem {i}: not nearest"
        );
        sum += err as f64;
    }
    (sum / x.len() as f64) as f32
}

#[test]
fn roundtrip_error_within_half_gap() {
    let w = randn((256, 576), 1);
    for kind in KINDS {
        let mae = check_roundtrip(&w, kind);
        println!(
            "{kind:?}: N(0,1) 256x576 mean abs error {mae:.5}, max half gap {:.4}",
            kind.max_half_gap()
        );
        // bitsandbytes' own test accepts < 0.1 for blocksize 64.
        assert!(mae < 0.1, "{kind:?} mean abs error {mae}");
    }
}

#[test]
fn non_multiple_of_64_shapes_roundtrip() {
    for (i, shape) in [(7, 13), (3, 65), (1, 1), (5, 100), (1, 63), (33, 31)]
        .into_iter()
        .enumerate()
    {
        let w = randn(shape, 100 + i as u64);
        for kind in KINDS {
            let q = Quant4Tensor::quantize(&w, kind, true).unwrap();
            let n = shape.0 * shape.1;
            assert_eq!(q.packed.len(), n.div_ceil(64) * 32);
            assert_eq!(q.dims(), shape);
            check_roundtrip(&w, kind);
        }
    }
}

#[test]
fn zero_weight_dequantises_to_zero() {
    let w = Tensor::zeros((3, 70), DType::F32, &Device::Cpu).unwrap();
    for kind in KINDS {
        for dq in [false, true] {
            let q = Quant4Tensor::quantize(&w, kind, dq).unwrap();
            let d = q.dequantize(DType::F32, &Device::Cpu).unwrap();
            let v = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|&x| x == 0.0), "{kind:?} dq={dq}");
        }
    }
}

#[test]
fn double_quant_error_within_8bit_step() {
    // 576 x 1536 = 13,824 blocks = 54 groups of 256.
    let w = randn((576, 1536), 2);
    let plain = Quant4Tensor::quantize(&w, Quant4Kind::Nf4, false).unwrap();
    let dq = Quant4Tensor::quantize(&w, Quant4Kind::Nf4, true).unwrap();
    assert_eq!(plain.packed, dq.packed, "double quant only touches absmax");
    let a = plain.absmax.values();
    let b = dq.absmax.values();
    let steps = dq.absmax.dq_steps();
    assert_eq!(steps.len(), a.len().div_ceil(DQ_BLOCK_SIZE));
    let mut worst = 0f32;
    for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
        let step = steps[i / DQ_BLOCK_SIZE];
        let err = (x - y).abs();
        // Round to nearest: half a step, plus f32 rounding.
        assert!(
            err <= 0.5 * step + 1e-6 * x,
            "block {i}: {x} -> {y}, step {step}"
        );
        assert!(err <= step);
        worst = worst.max(err / step);
    }
    println!("double quant: max |absmax error| = {worst:.3} steps (step = group scale / 127)");

    // End-to-end error stays close to the plain quantisation.
    let e_plain = max_abs_diff(&w, &plain.dequantize(DType::F32, &Device::Cpu).unwrap());
    let e_dq = max_abs_diff(&w, &dq.dequantize(DType::F32, &Device::Cpu).unwrap());
    println!("max elem error: plain {e_plain:.4}, double quant {e_dq:.4}");
    let max_step = steps.iter().fold(0f32, |m, &s| m.max(s));
    assert!(e_dq <= e_plain + 0.5 * max_step + 1e-5);
}

#[test]
fn bits_per_param() {
    let w = randn((576, 1536), 3);
    for kind in KINDS {
        let q = Quant4Tensor::quantize(&w, kind, false).unwrap();
        assert_eq!(q.bits_per_param(), 4.5);
        assert_eq!(q.storage_bytes(), 576 * 1536 / 2 + 576 * 1536 / 64 * 4);
        let q = Quant4Tensor::quantize(&w, kind, true).unwrap();
        let bpp = q.bits_per_param();
        println!("{kind:?} double quant: {bpp:.4} bits/param");
        assert!((bpp - 4.127).abs() < 0.001, "{bpp}");
        let dense_bits = 32.0;
        assert!(dense_bits / bpp > 7.7);
    }
}

/// A deterministic LoRA adapter with non-zero B (so A gets a gradient).
fn lora(in_f: usize, out_f: usize, r: usize, seed: u64) -> LoraAdapter {
    let a = (randn((r, in_f), seed) * 0.1).unwrap();
    let b = (randn((out_f, r), seed + 1) * 0.1).unwrap();
    LoraAdapter::from_tensors(a, b, 16.0, 0.0).unwrap()
}

/// Forward + backward through a 4-bit linear and through a dense linear holding the
/// dequantised weight: outputs, input gradients and LoRA gradients must agree.
fn compare_with_dense(rows: usize, in_f: usize, out_f: usize, kind: Quant4Kind, dq: bool) {
    let w = randn((out_f, in_f), 10);
    let bias = Tensor::from_vec(normal(out_f, 11), out_f, &Device::Cpu).unwrap();
    let q = Arc::new(Quant4Tensor::quantize(&w, kind, dq).unwrap());
    let wd = q.dequantize(DType::F32, &Device::Cpu).unwrap();
    let r = randn((rows, out_f), 12);
    let x0 = randn((rows, in_f), 13);

    for with_lora in [false, true] {
        let mut lq = Linear::new(BaseWeight::Quant4(q.clone()), Some(bias.clone()));
        let mut ld = Linear::new(BaseWeight::Dense(wd.clone()), Some(bias.clone()));
        assert_eq!((lq.out_features(), lq.in_features()), (out_f, in_f));
        if with_lora {
            lq.set_lora(Some(lora(in_f, out_f, 4, 20)));
            ld.set_lora(Some(lora(in_f, out_f, 4, 20)));
        }
        let xq = Var::from_tensor(&x0).unwrap();
        let xd = Var::from_tensor(&x0).unwrap();
        let yq = lq.forward(xq.as_tensor()).unwrap();
        let yd = ld.forward(xd.as_tensor()).unwrap();
        let dy = max_abs_diff(&yq, &yd);
        assert!(dy <= 1e-5, "{kind:?} output diff {dy}");

        let gq = (yq * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gd = (yd * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gxq = gq
            .get(xq.as_tensor())
            .expect("x has a gradient through the 4-bit op");
        let gxd = gd.get(xd.as_tensor()).unwrap();
        let dx = max_abs_diff(gxq, gxd);
        assert!(dx <= 1e-5, "{kind:?} input grad diff {dx}");
        assert!(
            gxq.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        if with_lora {
            let (aq, ad) = (lq.lora().unwrap(), ld.lora().unwrap());
            for (vq, vd, name) in [(&aq.a, &ad.a, "A"), (&aq.b, &ad.b, "B")] {
                let g1 = gq.get(vq.as_tensor()).expect("LoRA grad");
                let g2 = gd.get(vd.as_tensor()).unwrap();
                let d = max_abs_diff(g1, g2);
                assert!(d <= 1e-5, "{kind:?} LoRA {name} grad diff {d}");
                assert!(
                    g1.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        > 0.0
                );
            }
        }
    }
}

#[test]
fn quant_linear_matches_dense_with_lora() {
    compare_with_dense(16, 192, 96, Quant4Kind::Nf4, false);
    compare_with_dense(16, 192, 96, Quant4Kind::Nf4, true);
    compare_with_dense(9, 128, 64, Quant4Kind::Fp4, true);
}

#[test]
fn quant_linear_odd_shapes_match_dense() {
    compare_with_dense(5, 13, 7, Quant4Kind::Nf4, true);
    compare_with_dense(3, 65, 3, Quant4Kind::Fp4, false);
}

#[test]
fn quant_matmul_strided_input_and_bad_width() {
    // A transposed (non-contiguous) input and the dense fallback agree.
    let w = randn((40, 24), 30);
    let q = Arc::new(Quant4Tensor::quantize(&w, Quant4Kind::Nf4, false).unwrap());
    let wd = q.dequantize(DType::F32, &Device::Cpu).unwrap();
    let xt = randn((24, 6), 31).t().unwrap();
    let y = quant_matmul_t(&xt, &q).unwrap();
    let yd = xt.matmul(&wd.t().unwrap()).unwrap();
    assert!(max_abs_diff(&y, &yd) <= 1e-5);
    // A wrong width is an error, not a panic.
    assert!(quant_matmul_t(&randn((2, 23), 32), &q).is_err());
}

#[test]
fn quantize_base_and_dense_view() {
    let w = randn((64, 96), 40);
    let mut lin = Linear::new(BaseWeight::Dense(w.clone()), None);
    quantize_base(&mut lin, Quant4Kind::Nf4, true).unwrap();
    assert!(matches!(lin.base(), BaseWeight::Quant4(_)));
    assert_eq!((lin.out_features(), lin.in_features()), (64, 96));
    let d = lin.base().dense().unwrap();
    assert_eq!(d.dims(), &[64, 96]);
    assert_eq!(d.dtype(), DType::F32);
    // 4-bit error scale on N(0,1) weights.
    assert!(max_abs_diff(&d, &w) < 0.6);
    // Other compute dtypes go through the op too.
    let x = randn((3, 96), 41).to_dtype(DType::F64).unwrap();
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    let yd = x
        .matmul(&d.to_dtype(DType::F64).unwrap().t().unwrap())
        .unwrap();
    let diff = (y - yd)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(diff < 1e-9);
}

/// One (1×256 rows, 576 → 1536) forward + backward, 4-bit vs dense. Timing is reported,
/// not asserted (shared 2-core CI machines vary).
#[test]
fn timing_quant_vs_dense() {
    let (rows, in_f, out_f) = (256, 576, 1536);
    let w = randn((out_f, in_f), 50);
    let q = Arc::new(Quant4Tensor::quantize(&w, Quant4Kind::Nf4, true).unwrap());
    let wd = q.dequantize(DType::F32, &Device::Cpu).unwrap();
    let x0 = randn((rows, in_f), 51);
    let r = randn((rows, out_f), 52);
    let lq = Linear::new(BaseWeight::Quant4(q.clone()), None);
    let ld = Linear::new(BaseWeight::Dense(wd), None);
    let time = |lin: &Linear| {
        let mut best = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let x = Var::from_tensor(&x0).unwrap();
            let t0 = Instant::now();
            let y = lin.forward(x.as_tensor()).unwrap();
            let t1 = Instant::now();
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(g.get(x.as_tensor()).is_some());
            let t2 = Instant::now();
            best.0 = best.0.min((t1 - t0).as_secs_f64());
            best.1 = best.1.min((t2 - t1).as_secs_f64());
        }
        best
    };
    let t = Instant::now();
    let mut scratch = vec![0f32; out_f * in_f];
    for _ in 0..10 {
        q.dequantize_into(&mut scratch).unwrap();
    }
    let deq = t.elapsed().as_secs_f64() / 10.0;
    let (qf, qb) = time(&lq);
    let (df, db) = time(&ld);
    println!(
        "576->1536, 256 rows: 4-bit fwd {:.2} ms bwd {:.2} ms | dense fwd {:.2} ms bwd {:.2} ms | \
         dequantise {:.2} ms | storage {} KiB vs {} KiB",
        qf * 1e3,
        qb * 1e3,
        df * 1e3,
        db * 1e3,
        deq * 1e3,
        q.storage_bytes() / 1024,
        out_f * in_f * 4 / 1024
    );
}

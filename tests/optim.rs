//! Optimisers, gradient clipping and LR schedules of the training engine.
//!
//! Run in release (`cargo test --release --test optim`); the 135M-parameter timing is
//! `cargo test --release --test optim -- --ignored --nocapture bench_adamw_135m`.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use ftlab::train::optim::{clip_grad_norm, grad_norm, AdamW, AdamW8bit, AdamWConfig, Optimizer};
use ftlab::train::schedule::{LrSchedule, ScheduleKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

fn var_from(data: &[f32], shape: &[usize]) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::from_slice(
        data,
        shape,
        &Device::Cpu,
    )?)?)
}

fn values(v: &Var) -> Result<Vec<f32>> {
    Ok(v.as_tensor().flatten_all()?.to_vec1()?)
}

/// max |a - b| / max |b|, over all elements.
fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    num / den
}

/// float64 AdamW with the formulas of `torch.optim.AdamW` (per-parameter step).
struct RefAdamW {
    cfg: AdamWConfig,
    p: Vec<Vec<f64>>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    t: Vec<i32>,
}

impl RefAdamW {
    fn new(cfg: AdamWConfig, params: &[Vec<f32>]) -> Self {
        let p: Vec<Vec<f64>> = params
            .iter()
            .map(|x| x.iter().map(|&y| y as f64).collect())
            .collect();
        let zeros: Vec<Vec<f64>> = p.iter().map(|x| vec![0.0; x.len()]).collect();
        Self {
            cfg,
            m: zeros.clone(),
            v: zeros,
            t: vec![0; p.len()],
            p,
        }
    }

    fn step(&mut self, grads: &[Option<Vec<f32>>], lr: f64, scale: f64) {
        let c = self.cfg;
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            self.t[i] += 1;
            let t = self.t[i];
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            let step_size = lr / bc1;
            let (p, m, v) = (&mut self.p[i], &mut self.m[i], &mut self.v[i]);
            for (j, &g) in g.iter().enumerate() {
                let gj = g as f64 * scale;
                p[j] *= 1.0 - lr * c.weight_decay;
                m[j] += (1.0 - c.beta1) * (gj - m[j]); // lerp_
                v[j] = c.beta2 * v[j] + (1.0 - c.beta2) * gj * gj;
                let denom = v[j].sqrt() / bc2.sqrt() + c.eps;
                p[j] -= step_size * m[j] / denom;
            }
        }
    }
}

#[test]
fn adamw_matches_f64_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    // 51_200 elements exercises the rayon chunking; the others the serial path.
    let shapes: Vec<Vec<usize>> = vec![vec![256, 200], vec![37], vec![3, 5, 7]];
    let init: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| rand_vec(&mut rng, s.iter().product(), 1.0))
        .collect();
    let vars: Vec<Var> = init
        .iter()
        .zip(&shapes)
        .map(|(d, s)| var_from(d, s))
        .collect::<Result<_>>()?;
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.clone(), cfg)?;
    let mut reference = RefAdamW::new(cfg, &init);
    for step in 0..20 {
        let lr = 1e-2 * (1.0 + 0.05 * step as f64);
        let scale = if step % 3 == 0 { 0.5 } else { 1.0 };
        let grads: Vec<Option<Vec<f32>>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // Variable 2 skips every fourth step (no gradient): per-variable step.
                (!(i == 2 && step % 4 == 1))
                    .then(|| rand_vec(&mut rng, s.iter().product(), 0.1 + i as f32))
            })
            .collect();
        let gt: Vec<Option<Tensor>> = grads
            .iter()
            .zip(&shapes)
            .map(|(g, s)| {
                g.as_ref()
                    .map(|g| Tensor::from_slice(g, s.as_slice(), &Device::Cpu))
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        opt.step(&gt, lr, scale)?;
        reference.step(&grads, lr, scale);
    }
    assert_eq!(opt.step_count(), 20);
    for (i, v) in vars.iter().enumerate() {
        let err = max_rel(&values(v)?, &reference.p[i]);
        println!("adamw vs f64 reference, var {i}: max rel err {err:.3e}");
        assert!(err < 1e-5, "var {i}: max relative error {err}");
    }
    Ok(())
}

#[test]
fn adamw_matches_candle_nn() -> Result<()> {
    use candle_nn::Optimizer as _;
    let mut rng = StdRng::seed_from_u64(2);
    let shapes: Vec<Vec<usize>> = vec![vec![128, 300], vec![50]];
    let init: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| rand_vec(&mut rng, s.iter().product(), 1.0))
        .collect();
    let mk = || -> Result<Vec<Var>> {
        init.iter()
            .zip(&shapes)
            .map(|(d, s)| var_from(d, s))
            .collect()
    };
    let (ours_vars, theirs_vars) = (mk()?, mk()?);
    let (lr, wd) = (3e-3, 0.01);
    let mut ours = AdamW::new(
        ours_vars.clone(),
        AdamWConfig {
            weight_decay: wd,
            ..Default::default()
        },
    )?;
    let mut theirs = candle_nn::AdamW::new(
        theirs_vars.clone(),
        candle_nn::ParamsAdamW {
            lr,
            weight_decay: wd,
            ..Default::default()
        },
    )?;
    for _ in 0..10 {
        let grads: Vec<Tensor> = shapes
            .iter()
            .map(|s| {
                Tensor::from_vec(
                    rand_vec(&mut rng, s.iter().product(), 1.0),
                    s.as_slice(),
                    &Device::Cpu,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        let mut store = candle_core::backprop::GradStore::default();
        for (v, g) in theirs_vars.iter().zip(&grads) {
            store.insert(v.as_tensor(), g.clone());
        }
        theirs.step(&store)?;
        let gs: Vec<Option<Tensor>> = grads.into_iter().map(Some).collect();
        ours.step(&gs, lr, 1.0)?;
    }
    for (i, (a, b)) in ours_vars.iter().zip(&theirs_vars).enumerate() {
        let b: Vec<f64> = values(b)?.into_iter().map(f64::from).collect();
        let err = max_rel(&values(a)?, &b);
        println!("adamw vs candle_nn::AdamW, var {i}: max rel diff {err:.3e}");
        assert!(err < 1e-5, "var {i}: {err}");
    }
    Ok(())
}

/// Least squares `mean((X W + b - Y)^2)`, W 128×128 (16,384 params → 8-bit state),
/// b 128 (f32 state). Returns (loss before steps 0, 25, 50, 100, 200 and after 400, W, b).
fn least_squares_run(eight_bit: bool) -> Result<(Vec<f64>, Vec<f32>, Vec<f32>)> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(3);
    let (n, d) = (512, 128);
    let x = Tensor::from_vec(rand_vec(&mut rng, n * d, 1.0), (n, d), &dev)?;
    let w_true = Tensor::from_vec(rand_vec(&mut rng, d * d, 0.5), (d, d), &dev)?;
    let b_true = Tensor::from_vec(rand_vec(&mut rng, d, 1.0), d, &dev)?;
    let noise = Tensor::from_vec(rand_vec(&mut rng, n * d, 0.01), (n, d), &dev)?;
    let y = ((x.matmul(&w_true)?.broadcast_add(&b_true))? + noise)?;
    let w = Var::zeros((d, d), DType::F32, &dev)?;
    let b = Var::zeros(d, DType::F32, &dev)?;
    let vars = vec![w.clone(), b.clone()];
    let cfg = AdamWConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt: Box<dyn Optimizer> = if eight_bit {
        let o = AdamW8bit::new(vars, cfg, 256, 4096)?;
        assert!(o.is_quantized(0) && !o.is_quantized(1));
        Box::new(o)
    } else {
        Box::new(AdamW::new(vars, cfg)?)
    };
    let sched = LrSchedule::new(ScheduleKind::Cosine, 2e-2, 20, 400);
    let loss_of = |w: &Var, b: &Var| -> Result<Tensor> {
        let r = (x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())? - &y)?;
        Ok(r.sqr()?.mean_all()?)
    };
    let mut trace = Vec::new();
    for step in 0..400 {
        let loss = loss_of(&w, &b)?;
        if [0, 25, 50, 100, 200].contains(&step) {
            trace.push(loss.to_scalar::<f32>()? as f64);
        }
        let gs = loss.backward()?;
        let grads = vec![gs.get(&w).cloned(), gs.get(&b).cloned()];
        let (_, scale) = clip_grad_norm(&grads, 10.0)?;
        opt.step(&grads, sched.lr_at(step), scale)?;
    }
    trace.push(loss_of(&w, &b)?.to_scalar::<f32>()? as f64);
    Ok((trace, values(&w)?, values(&b)?))
}

#[test]
fn adamw8bit_tracks_adamw() -> Result<()> {
    let (tr32, w32, b32) = least_squares_run(false)?;
    let (tr8, w8, b8) = least_squares_run(true)?;
    assert_eq!(tr32[0], tr8[0]);
    let (init32, loss32, loss8) = (tr32[0], tr32[5], tr8[5]);
    let rel_l2 = |a: &[f32], b: &[f32]| {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    };
    let dw = rel_l2(&w8, &w32);
    let db = rel_l2(&b8, &b32);
    let loss_rel = (loss8 - loss32).abs() / loss32;
    println!(
        "least squares 400 steps: initial loss {init32:.4}, AdamW {loss32:.6}, AdamW8bit {loss8:.6} \
         (rel diff {loss_rel:.4}); params rel L2 distance W {dw:.3e}, b {db:.3e}"
    );
    for (k, step) in [0, 25, 50, 100, 200, 400].iter().enumerate() {
        println!(
            "  loss at step {step:>3}: AdamW {:.6}  AdamW8bit {:.6}  rel diff {:.4}",
            tr32[k],
            tr8[k],
            (tr8[k] - tr32[k]).abs() / tr32[k]
        );
    }
    // Along the trajectory too, not only at the optimum.
    for k in 1..5 {
        let d = (tr8[k] - tr32[k]).abs() / tr32[k];
        assert!(d < 0.1, "loss trajectories differ by {d} at checkpoint {k}");
    }
    assert!(loss32 < init32 * 1e-3, "32-bit run did not converge");
    assert!(loss_rel < 0.05, "8-bit final loss differs by {loss_rel}");
    assert!(dw < 0.02 && db < 0.02, "parameters diverged: {dw} {db}");
    Ok(())
}

#[test]
fn adamw8bit_state_is_about_a_quarter() -> Result<()> {
    let n = 1 << 20;
    let big = Var::zeros(n, DType::F32, &Device::Cpu)?;
    let small = Var::zeros(1000, DType::F32, &Device::Cpu)?;
    let g = Tensor::ones(n, DType::F32, &Device::Cpu)?;
    let gs = Tensor::ones(1000, DType::F32, &Device::Cpu)?;
    let cfg = AdamWConfig::default();
    let mut a32 = AdamW::new(vec![big.clone()], cfg)?;
    let mut a8 = AdamW8bit::new(vec![big.clone()], cfg, 256, 4096)?;
    assert_eq!(a8.state_bytes(), 0, "state is allocated lazily");
    a32.step(&[Some(g.clone())], 1e-3, 1.0)?;
    a8.step(&[Some(g.clone())], 1e-3, 1.0)?;
    let ratio = a8.state_bytes() as f64 / a32.state_bytes() as f64;
    println!(
        "state bytes for {n} params: AdamW {} , AdamW8bit {} (ratio {ratio:.4})",
        a32.state_bytes(),
        a8.state_bytes()
    );
    assert!((0.25..=0.30).contains(&ratio), "ratio {ratio}");
    assert_eq!(a32.state_bytes(), a32.full_state_bytes());
    assert_eq!(a8.state_bytes(), a8.full_state_bytes());
    // Small tensors keep f32 state.
    let mut s8 = AdamW8bit::new(vec![small], cfg, 256, 4096)?;
    s8.step(&[Some(gs)], 1e-3, 1.0)?;
    assert_eq!(s8.state_bytes(), 8 * 1000);
    Ok(())
}

fn roundtrip_case(eight_bit: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rng = StdRng::seed_from_u64(4);
    // 5000 elements (8-bit, last block partial), 300 (f32 state), 77 (never gets a
    // gradient, so it has no state).
    let shapes: Vec<Vec<usize>> = vec![vec![50, 100], vec![300], vec![7, 11]];
    let init: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| rand_vec(&mut rng, s.iter().product(), 1.0))
        .collect();
    let vars_a: Vec<Var> = init
        .iter()
        .zip(&shapes)
        .map(|(d, s)| var_from(d, s))
        .collect::<Result<_>>()?;
    let cfg = AdamWConfig {
        weight_decay: 0.05,
        ..Default::default()
    };
    let mk = |vars: Vec<Var>| -> Result<Box<dyn Optimizer>> {
        Ok(if eight_bit {
            Box::new(AdamW8bit::new(vars, cfg, 256, 4096)?)
        } else {
            Box::new(AdamW::new(vars, cfg)?)
        })
    };
    let grads_for = |rng: &mut StdRng| -> Result<Vec<Option<Tensor>>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 2 {
                    return Ok(None);
                }
                let n: usize = s.iter().product();
                Ok(Some(Tensor::from_vec(
                    rand_vec(rng, n, 1.0),
                    s.as_slice(),
                    &Device::Cpu,
                )?))
            })
            .collect()
    };
    let mut a = mk(vars_a.clone())?;
    for _ in 0..5 {
        let g = grads_for(&mut rng)?;
        a.step(&g, 1e-2, 0.7)?;
    }
    // Checkpoint through a safetensors file, as the trainer will.
    let path = dir.path().join("optim.safetensors");
    let state: HashMap<String, Tensor> = a.state_tensors()?.into_iter().collect();
    assert!(!state.keys().any(|k| k.starts_with("2.")));
    candle_core::safetensors::save(&state, &path)?;
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let vars_b: Vec<Var> = vars_a
        .iter()
        .map(|v| Ok(Var::from_tensor(&v.as_tensor().copy()?)?))
        .collect::<Result<_>>()?;
    let mut b = mk(vars_b.clone())?;
    b.load_state_tensors(&loaded)?;
    assert_eq!(b.step_count(), 5);
    assert_eq!(b.state_bytes(), a.state_bytes());
    for _ in 0..3 {
        let g = grads_for(&mut rng)?;
        a.step(&g, 1e-2, 0.7)?;
        b.step(&g, 1e-2, 0.7)?;
    }
    for (va, vb) in vars_a.iter().zip(&vars_b) {
        let (x, y) = (values(va)?, values(vb)?);
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "resumed optimizer diverged"
        );
    }
    // Loading into an optimizer for a different model fails loudly.
    let other = Var::zeros(10, DType::F32, &Device::Cpu)?;
    assert!(mk(vec![other])?.load_state_tensors(&loaded).is_err());
    Ok(())
}

#[test]
fn state_roundtrip_is_bit_identical_adamw() -> Result<()> {
    roundtrip_case(false)
}

#[test]
fn state_roundtrip_is_bit_identical_adamw8bit() -> Result<()> {
    roundtrip_case(true)
}

#[test]
fn non_f32_cpu_vars_use_the_staged_path() -> Result<()> {
    // bf16 parameters: staged through f32; result equals the f32 run rounded to bf16
    // after one step (from identical bf16-representable values).
    let data: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
    let g: Vec<f32> = (0..64)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0)
        .collect();
    let v32 = var_from(&data, &[64])?;
    let v16 =
        Var::from_tensor(&Tensor::from_slice(&data, 64, &Device::Cpu)?.to_dtype(DType::BF16)?)?;
    let g16 = Tensor::from_slice(&g, 64, &Device::Cpu)?.to_dtype(DType::BF16)?;
    let cfg = AdamWConfig::default();
    AdamW::new(vec![v32.clone()], cfg)?.step(&[Some(g16.to_dtype(DType::F32)?)], 0.1, 1.0)?;
    AdamW::new(vec![v16.clone()], cfg)?.step(&[Some(g16)], 0.1, 1.0)?;
    let a: Vec<f32> = v32
        .as_tensor()
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let b: Vec<f32> = v16.as_tensor().to_dtype(DType::F32)?.to_vec1()?;
    assert_eq!(a, b);
    Ok(())
}

#[test]
fn clip_grad_norm_matches_hand_computation() -> Result<()> {
    let dev = Device::Cpu;
    let grads = vec![
        Some(Tensor::new(&[3f32, 0.0], &dev)?),
        None,
        Some(Tensor::new(&[[4f32], [12.0]], &dev)?),
    ];
    assert!((grad_norm(&grads)? - 13.0).abs() < 1e-12);
    let (norm, scale) = clip_grad_norm(&grads, 6.5)?;
    assert!((norm - 13.0).abs() < 1e-12);
    assert!((scale - 6.5 / (13.0 + 1e-6)).abs() < 1e-15);
    let (_, scale) = clip_grad_norm(&grads, 100.0)?;
    assert_eq!(scale, 1.0);
    // Larger tensor (parallel path) and a non-contiguous one vs f64 by hand.
    let mut rng = StdRng::seed_from_u64(5);
    let big = rand_vec(&mut rng, 100_000, 1.0);
    let hand: f64 = big.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    let t = Tensor::from_slice(&big, (1000, 100), &dev)?;
    let tt = t.t()?; // non-contiguous
    let n1 = grad_norm(&[Some(t)])?;
    let n2 = grad_norm(&[Some(tt)])?;
    assert!((n1 - hand.sqrt()).abs() / hand.sqrt() < 1e-12, "{n1}");
    assert!((n2 - hand.sqrt()).abs() / hand.sqrt() < 1e-12, "{n2}");
    // Clipping then stepping with grad_scale = scale equals stepping on clipped grads.
    let nan = vec![Some(Tensor::new(&[f32::NAN], &dev)?)];
    let (n, s) = clip_grad_norm(&nan, 1.0)?;
    assert!(n.is_nan() && s.is_nan());
    Ok(())
}

#[test]
fn grad_scale_equals_prescaled_gradients() -> Result<()> {
    let data: Vec<f32> = (0..5000).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    let g: Vec<f32> = (0..5000).map(|i| ((i % 31) as f32 - 15.0) / 3.0).collect();
    let gt = Tensor::from_slice(&g, 5000, &Device::Cpu)?;
    let half = (&gt * 0.25)?;
    for eight in [false, true] {
        let a = var_from(&data, &[5000])?;
        let b = var_from(&data, &[5000])?;
        let mk = |v: Var| -> Result<Box<dyn Optimizer>> {
            Ok(if eight {
                Box::new(AdamW8bit::new(vec![v], AdamWConfig::default(), 256, 4096)?)
            } else {
                Box::new(AdamW::new(vec![v], AdamWConfig::default())?)
            })
        };
        let (mut oa, mut ob) = (mk(a.clone())?, mk(b.clone())?);
        for _ in 0..3 {
            oa.step(&[Some(gt.clone())], 1e-2, 0.25)?;
            ob.step(&[Some(half.clone())], 1e-2, 1.0)?;
        }
        assert_eq!(values(&a)?, values(&b)?);
    }
    Ok(())
}

#[test]
fn schedules_match_hf_values() -> Result<()> {
    let base = 1e-3;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    // warmup 10, total 110 → decay over 100 steps.
    let lin = LrSchedule::new(ScheduleKind::Linear, base, 10, 110);
    assert_eq!(lin.lr_at(0), 0.0);
    assert!(close(lin.lr_at(5), 0.5e-3));
    assert!(close(lin.lr_at(10), 1e-3));
    assert!(close(lin.lr_at(35), 0.75e-3));
    assert!(close(lin.lr_at(60), 0.5e-3));
    assert_eq!(lin.lr_at(110), 0.0);
    assert_eq!(lin.lr_at(500), 0.0);

    let cos = LrSchedule::new(ScheduleKind::Cosine, base, 10, 110);
    assert_eq!(cos.lr_at(0), 0.0);
    assert!(close(cos.lr_at(10), 1e-3));
    assert!(close(cos.lr_at(60), 0.5e-3));
    // quarter: 0.5 * (1 + cos(pi/4))
    assert!(close(
        cos.lr_at(35),
        1e-3 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)
    ));
    assert!(cos.lr_at(110).abs() < 1e-18);
    assert!(cos.lr_at(1000).abs() < 1e-18, "stays at the end value");

    let cos_min = cos.clone().with_min_lr_ratio(0.1);
    assert_eq!(cos_min.lr_at(0), 0.0, "warmup still starts at 0");
    assert!(close(cos_min.lr_at(10), 1e-3));
    assert!(close(cos_min.lr_at(60), 1e-3 * (0.5 * 0.9 + 0.1)));
    assert!(close(cos_min.lr_at(110), 1e-4));
    let lin_min = lin.clone().with_min_lr_ratio(0.1);
    assert!(close(lin_min.lr_at(110), 1e-4));
    assert!(close(lin_min.lr_at(60), 1e-3 * 0.55));

    let cst = LrSchedule::new(ScheduleKind::Constant, base, 4, 100);
    assert_eq!(cst.lr_at(0), 0.0);
    assert!(close(cst.lr_at(1), 0.25e-3));
    assert_eq!(cst.lr_at(4), 1e-3);
    assert_eq!(cst.lr_at(1000), 1e-3);
    // No warmup: full LR from the first step.
    assert_eq!(
        LrSchedule::new(ScheduleKind::Linear, base, 0, 10).lr_at(0),
        1e-3
    );

    // serde: lowercase kind names, defaults for warmup and min ratio.
    assert_eq!(serde_json::to_string(&ScheduleKind::Cosine)?, "\"cosine\"");
    let s: LrSchedule =
        serde_json::from_str(r#"{"kind":"linear","base_lr":0.001,"total_steps":50}"#)?;
    assert_eq!(s, LrSchedule::new(ScheduleKind::Linear, 1e-3, 0, 50));
    Ok(())
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Timing only (no assertions on time): one optimizer step over 135M f32 parameters.
#[test]
#[ignore]
fn bench_adamw_135m() -> Result<()> {
    use candle_nn::Optimizer as _;
    let dev = Device::Cpu;
    let per = 5_000_000;
    let n_vars = 27; // 135M parameters
    let vars: Vec<Var> = (0..n_vars)
        .map(|_| Ok(Var::from_tensor(&Tensor::randn(0f32, 0.02, per, &dev)?)?))
        .collect::<Result<_>>()?;
    let grads: Vec<Tensor> = (0..n_vars)
        .map(|_| Ok(Tensor::randn(0f32, 1e-3, per, &dev)?))
        .collect::<Result<_>>()?;
    let grads_opt: Vec<Option<Tensor>> = grads.iter().cloned().map(Some).collect();
    println!(
        "135M params: {} threads; RSS with params+grads {:.0} MiB",
        rayon::current_num_threads(),
        rss_mib()
    );
    let steps = 3;
    {
        let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
        let t = Instant::now();
        opt.step(&grads_opt, 1e-4, 1.0)?;
        let first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..steps {
            opt.step(&grads_opt, 1e-4, 1.0)?;
        }
        println!(
            "ftlab AdamW: first step {first:.3} s (allocates state), then {:.3} s/step; \
             RSS {:.0} MiB, state {} MiB",
            t.elapsed().as_secs_f64() / steps as f64,
            rss_mib(),
            opt.state_bytes() >> 20
        );
    }
    {
        let mut opt = AdamW8bit::new(vars.clone(), AdamWConfig::default(), 256, 4096)?;
        opt.step(&grads_opt, 1e-4, 1.0)?;
        let t = Instant::now();
        for _ in 0..steps {
            opt.step(&grads_opt, 1e-4, 1.0)?;
        }
        println!(
            "ftlab AdamW8bit: {:.3} s/step; RSS {:.0} MiB, state {} MiB",
            t.elapsed().as_secs_f64() / steps as f64,
            rss_mib(),
            opt.state_bytes() >> 20
        );
    }
    {
        let mut store = candle_core::backprop::GradStore::default();
        for (v, g) in vars.iter().zip(&grads) {
            store.insert(v.as_tensor(), g.clone());
        }
        let mut opt = candle_nn::AdamW::new(
            vars.clone(),
            candle_nn::ParamsAdamW {
                lr: 1e-4,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        opt.step(&store)?;
        let t = Instant::now();
        for _ in 0..steps {
            opt.step(&store)?;
        }
        println!(
            "candle_nn AdamW: {:.3} s/step; RSS {:.0} MiB",
            t.elapsed().as_secs_f64() / steps as f64,
            rss_mib()
        );
    }
    Ok(())
}

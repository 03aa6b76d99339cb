//! `ftlab check-kernels`: each memory-saving op as it runs on a device — the generic
//! definitions, and the CUDA dequantisation kernel — against the CPU kernels on the CPU,
//! on the same random inputs: values and gradients, and the optimisers' updates. The check
//! to run first on a GPU machine (scripts/gpu-check.sh does); with `--device cpu` it runs
//! the generic definitions on the CPU.
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::device::DeviceArgs;
use crate::model::fused::{log_softmax, scaled_masked_softmax};
use crate::model::generic::with_generic_kernels;
use crate::model::head_loss::linear_cross_entropy;
use crate::model::linear::frozen::{frozen_matmul_t, quant_matmul_t};
use crate::model::linear::{Quant4Kind, Quant4Tensor};
use crate::model::ops::{causal_mask, grouped_attention};
use crate::train::optim::{AdamW, AdamW8bit, AdamWConfig, Optimizer};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// One JSON line per check instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One comparison: the largest difference over its tensors, relative to their magnitude
/// (at least 1), against its tolerance.
struct Row {
    name: &'static str,
    diff: f64,
    tol: f64,
}

/// Deterministic inputs: a varied pattern, the same on every run and device.
fn input(shape: &[usize], seed: f64, scale: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::arange(0u32, n as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .affine(0.7548776662 + seed, seed)?
        .sin()?
        .affine(scale, 0.0)?
        .reshape(shape)?)
}

/// Runs `f` on the CPU with the CPU kernels and on `dev` as a GPU runs (the generic path;
/// forced when `dev` is the CPU), and returns the largest relative difference.
fn compare(dev: &Device, f: impl Fn(&Device) -> Result<Vec<Tensor>>) -> Result<f64> {
    let reference = with_generic_kernels(false, || f(&Device::Cpu))?;
    let other = with_generic_kernels(true, || f(dev))?;
    let mut worst = 0f64;
    for (a, b) in reference.iter().zip(&other) {
        let a = a.to_dtype(DType::F64)?.flatten_all()?;
        let b = b
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?;
        let scale = a.abs()?.max(0)?.to_scalar::<f64>()?.max(1.0);
        let d = (a - b)?.abs()?.max(0)?.to_scalar::<f64>()? / scale;
        worst = worst.max(if d.is_nan() { f64::INFINITY } else { d });
    }
    Ok(worst)
}

/// y and dL/dx of L = Σ y ⊙ r for y = op(x).
fn with_grad(
    x: &Tensor,
    dev: &Device,
    op: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    with_grads(&[x], dev, |xs| op(&xs[0]))
}

/// y and the gradient of L = Σ y ⊙ r for each input, for y = op(inputs).
fn with_grads(
    inputs: &[&Tensor],
    dev: &Device,
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars = inputs
        .iter()
        .map(|x| Ok(Var::from_tensor(&x.to_device(dev)?)?))
        .collect::<Result<Vec<_>>>()?;
    let y = op(&vars
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect::<Vec<_>>())?;
    let r = input(y.dims(), 0.3, 1.0)?.to_device(dev)?;
    let g = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in &vars {
        out.push(
            g.get(v.as_tensor())
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no gradient reached an input"))?,
        );
    }
    Ok(out)
}

/// RMSNorm, the rotary embedding and SwiGLU (`fused_rows`' kernels against their generic
/// definitions, `generic_rows`), with every input's gradient.
fn row_op_checks(dev: &Device, tol: f64) -> Result<Vec<Row>> {
    use crate::model::fused_rows::{rms_norm, rope, swiglu};
    let x = input(&[2, 3, 7, 16], 7.0, 1.5)?;
    let w = input(&[16], 8.0, 0.5)?.affine(1.0, 1.0)?;
    let up = input(&[2, 3, 7, 16], 9.0, 1.0)?;
    let (cos, sin) =
        crate::model::ops::Rope::new(16, 10_000.0, 64, DType::F32, &Device::Cpu)?.tables(2, 7)?;
    Ok(vec![
        Row {
            name: "RMSNorm: y, dL/dx, dL/dw",
            diff: compare(dev, |d| {
                with_grads(&[&x, &w], d, |t| Ok(rms_norm(&t[0], &t[1], 1e-6)?))
            })?,
            tol,
        },
        Row {
            name: "rotary embedding: y, dL/dx",
            diff: compare(dev, |d| {
                let (c, s) = (cos.to_device(d)?, sin.to_device(d)?);
                with_grad(&x, d, |t| Ok(rope(t, &c, &s)?))
            })?,
            tol,
        },
        Row {
            name: "SwiGLU: y, dL/dgate, dL/dup",
            diff: compare(dev, |d| {
                with_grads(&[&x, &up], d, |t| Ok(swiglu(&t[0], &t[1])?))
            })?,
            tol,
        },
    ])
}

/// Grouped-query causal attention (6 query heads over 2 key/value heads, 70 tokens: two
/// query blocks of the CPU kernel) and the gradients of its three inputs.
fn attention_with_grads(dev: &Device) -> Result<Vec<Tensor>> {
    let (q, k, v) = (
        input(&[1, 6, 70, 16], 6.0, 1.0)?,
        input(&[1, 2, 70, 16], 7.0, 1.0)?,
        input(&[1, 2, 70, 16], 8.0, 1.0)?,
    );
    let mask = causal_mask(70, 0, DType::F32, dev)?;
    with_grads(&[&q, &k, &v], dev, |t| {
        Ok(grouped_attention(&t[0], &t[1], &t[2], Some(&mask), 0.25)?)
    })
}

fn optimiser_steps(dev: &Device, eight_bit: bool) -> Result<Vec<Tensor>> {
    let vars: Vec<Var> = [(50usize, 100usize), (30, 10)]
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            Ok(Var::from_tensor(
                &input(&[s.0, s.1], i as f64, 1.0)?.to_device(dev)?,
            )?)
        })
        .collect::<Result<_>>()?;
    let cfg = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut opt: Box<dyn Optimizer> = if eight_bit {
        Box::new(AdamW8bit::new(vars.clone(), cfg, 256, 4096)?)
    } else {
        Box::new(AdamW::new(vars.clone(), cfg)?)
    };
    for step in 0..3 {
        let grads = vars
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Ok(Some(
                    input(v.dims(), 1.0 + i as f64 + step as f64, 1.0)?.to_device(dev)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        opt.step(&grads, 1e-2, 0.7)?;
    }
    Ok(vars.iter().map(|v| v.as_tensor().clone()).collect())
}

fn checks(dev: &Device) -> Result<Vec<Row>> {
    let w = input(&[48, 200], 2.0, 0.05)?;
    let x = input(&[37, 200], 1.0, 1.0)?;
    let q = Quant4Tensor::quantize(&w, Quant4Kind::Nf4, true)?;
    let q = std::sync::Arc::new(q);
    let mut rows = Vec::new();
    // The 4-bit dequantisation, kernel and tensor ops, against the CPU one: the same bits.
    let mut cpu = vec![0f32; q.numel()];
    q.dequantize_into(&mut cpu)?;
    let cpu = Tensor::from_vec(cpu, q.dims(), &Device::Cpu)?;
    for (name, t) in [
        (
            "4-bit dequantisation kernel",
            q.dequantize_with_kernel(dev)?,
        ),
        (
            "4-bit dequantisation, tensor ops",
            q.dequantize_with_tensor_ops(dev)?,
        ),
    ] {
        let d = (t.to_device(&Device::Cpu)? - &cpu)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        rows.push(Row {
            name,
            diff: d as f64,
            tol: 0.0,
        });
    }
    // Matmul results may be summed in another order on a GPU (cuBLAS).
    let tol = 1e-4;
    let diff = compare(dev, |d| {
        with_grad(&x, d, |x| Ok(frozen_matmul_t(x, &w.to_device(d)?)?))
    })?;
    rows.push(Row {
        name: "frozen matmul: y, dL/dx",
        diff,
        tol,
    });
    let diff = compare(dev, |d| with_grad(&x, d, |x| Ok(quant_matmul_t(x, &q)?)))?;
    rows.push(Row {
        name: "4-bit matmul: y, dL/dx",
        diff,
        tol,
    });
    let scores = input(&[2, 3, 9, 9], 4.0, 3.0)?;
    let diff = compare(dev, |d| {
        let mask = causal_mask(9, 0, DType::F32, d)?;
        with_grad(&scores, d, |s| {
            Ok(scaled_masked_softmax(s, Some(&mask), 0.37)?)
        })
    })?;
    rows.push(Row {
        name: "attention softmax: p, dL/dscores",
        diff,
        tol,
    });
    let diff = compare(dev, attention_with_grads)?;
    rows.push(Row {
        name: "attention: y, dq, dk, dv",
        diff,
        tol,
    });
    rows.extend(row_op_checks(dev, tol)?);
    let logits = input(&[6, 300], 5.0, 8.0)?;
    let diff = compare(dev, |d| with_grad(&logits, d, |l| Ok(log_softmax(l)?)))?;
    rows.push(Row {
        name: "log-softmax: y, dL/dx",
        diff,
        tol,
    });
    let head = input(&[500, 200], 6.0, 0.1)?;
    let diff = compare(dev, |d| {
        let h = Var::from_tensor(&x.to_device(d)?)?;
        let wv = Var::from_tensor(&head.to_device(d)?)?;
        let targets: Vec<u32> = (0..37u32).map(|i| (i * 37 + 5) % 500).collect();
        let mask: Vec<f32> = (0..37)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
            .collect();
        let (loss, _) = linear_cross_entropy(
            h.as_tensor(),
            wv.as_tensor(),
            &Tensor::new(targets, d)?,
            &Tensor::new(mask, d)?,
        )?;
        let g = loss.backward()?;
        let get = |v: &Var| g.get(v.as_tensor()).cloned();
        match (get(&h), get(&wv)) {
            (Some(dh), Some(dw)) => Ok(vec![loss, dh, dw]),
            _ => bail!("the head loss gave no gradient"),
        }
    })?;
    rows.push(Row {
        name: "chunked head loss: loss, dL/dh, dL/dW",
        diff,
        tol,
    });
    for (name, eight) in [("AdamW: 3 steps", false), ("8-bit AdamW: 3 steps", true)] {
        rows.push(Row {
            name,
            diff: compare(dev, |d| optimiser_steps(d, eight))?,
            tol: 1e-5,
        });
    }
    Ok(rows)
}

pub fn run(args: CheckArgs) -> Result<()> {
    let dev = args.device.device.resolve()?;
    let name = crate::config::device_name(&dev);
    let rows = checks(&dev)?;
    let mut failed = Vec::new();
    for r in &rows {
        let ok = r.diff <= r.tol;
        if !ok {
            failed.push(r.name);
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({"check": r.name, "device": name, "max_rel_diff": r.diff, "tolerance": r.tol, "ok": ok})
            );
        } else {
            println!(
                "{:<40} {:>10.2e}  (≤ {:.0e})  {}",
                r.name,
                r.diff,
                r.tol,
                if ok { "ok" } else { "DIFFERS" }
            );
        }
    }
    if !failed.is_empty() {
        bail!(
            "on {name}, {} of {} checks differ from the CPU kernels: {}",
            failed.len(),
            rows.len(),
            failed.join("; ")
        );
    }
    if !args.json {
        println!(
            "all {} checks on {name} agree with the CPU kernels",
            rows.len()
        );
    }
    Ok(())
}

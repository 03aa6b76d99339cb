//! The device-generic path — what every device but the CPU runs (CUDA) — run on the CPU,
//! forced as `FTLAB_KERNELS=generic` forces it: every technique's gradients equal the CPU
//! kernels' within 1e-5 (full fine-tuning, gradient checkpointing, LoRA, QLoRA; LLaMA,
//! GPT-NeoX and Gemma 3 with its chunked head loss), both optimisers update the same and
//! read each other's checkpoints, and `ftlab bench` on the real SmolLM2 keeps the memory
//! order of the techniques: QLoRA < LoRA < checkpointing < full fine-tuning.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use ftlab::adapt::peft::{apply_lora, LoraConfig, TargetModules};
use ftlab::config::RunConfig;
use ftlab::model::generic::with_generic_kernels;
use ftlab::model::linear::Quant4Kind;
use ftlab::model::load::RandomSource;
use ftlab::model::{ArchConfig, CausalLm, LoadOptions};
use ftlab::train::data::sft::Batch;
use ftlab::train::optim::{AdamW, AdamW8bit, AdamWConfig, Optimizer};
use ftlab::train::setup;
use ftlab::train::sft_task;
use ftlab::train::step::{forward_backward, Checkpointing};

type Grads = (f64, Vec<(String, Tensor)>);

/// Loss and gradients of one batch, on the CPU kernels or the generic definitions.
fn grads(
    model: &CausalLm,
    params: &[(String, Var)],
    batch: &Batch,
    ckpt: impl Into<Checkpointing>,
    generic: bool,
) -> Grads {
    let ckpt = ckpt.into();
    with_generic_kernels(generic, || {
        let mut acc = vec![None; params.len()];
        let (loss, _) = forward_backward(model, params, batch, ckpt, None, &mut acc).unwrap();
        let g = params
            .iter()
            .zip(acc)
            .map(|((n, _), g)| (n.clone(), g.unwrap_or_else(|| panic!("{n}: no gradient"))))
            .collect();
        (loss, g)
    })
}

fn assert_same(what: &str, kernels: &Grads, generic: &Grads) {
    assert!(
        (kernels.0 - generic.0).abs() < 1e-5,
        "{what}: loss {} (kernels) vs {} (generic)",
        kernels.0,
        generic.0
    );
    assert_eq!(kernels.1.len(), generic.1.len());
    for ((name, a), (_, b)) in kernels.1.iter().zip(&generic.1) {
        let d = max_abs_diff(a, b);
        assert!(d < 1e-5, "{what}: gradient of {name} differs by {d}");
        assert!(
            a.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0,
            "{what}: {name} has a zero gradient"
        );
    }
}

#[test]
fn every_technique_has_the_cpu_kernels_gradients_on_the_generic_path() {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let data = common::small_sft(root.path(), 8);
    let lora = "[lora]\nr = 8\nalpha = 16\ndropout = 0.0\n";
    for (name, extra) in [
        ("full fine-tuning", ""),
        ("gradient checkpointing", ""),
        ("lora", lora),
        ("qlora", lora),
        ("qlora, selective checkpointing", lora),
    ] {
        let preset = common::preset(root.path(), &model, &data, extra);
        let mut cfg = RunConfig::load(&preset, &[]).unwrap();
        match name {
            "gradient checkpointing" => cfg.model.gradient_checkpointing = true,
            "qlora" => {
                cfg.model.quant = ftlab::config::QuantKind::Nf4;
                cfg.model.gradient_checkpointing = true;
            }
            "qlora, selective checkpointing" => {
                cfg.model.quant = ftlab::config::QuantKind::Nf4;
                cfg.model.gradient_checkpointing = true;
                cfg.model.selective_checkpointing = true;
            }
            _ => {}
        }
        let (lm, tm) = setup::prepare(&cfg, &Device::Cpu).unwrap();
        // LoRA's B starts at zero, which makes every A gradient zero: move it.
        for (i, (n, v)) in tm
            .params
            .iter()
            .filter(|(n, _)| n.contains("lora_B"))
            .enumerate()
        {
            let b = common::seeded_normal(v.dims(), 0.1, i as u64);
            v.set(&b).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        let (train, _) = sft_task::build(&cfg.data, &lm, std::path::Path::new(".")).unwrap();
        let batch = &train.batches(0, 4, 1).unwrap()[0];
        let ckpt = Checkpointing::of(&cfg.model);
        let kernels = grads(&tm.model, &tm.params, batch, ckpt, false);
        let generic = grads(&tm.model, &tm.params, batch, ckpt, true);
        assert_same(&format!("tiny LLaMA, {name}"), &kernels, &generic);
    }
}

/// GPT-NeoX (untied head) and Gemma 3 (tied, sliding window, the chunked head loss):
/// fully trainable, and 4-bit bases with LoRA on every linear layer.
#[test]
fn other_architectures_and_4bit_bases_have_the_same_gradients_too() {
    let ids: Vec<Vec<u32>> = vec![(0..9).map(|i| (i * 7 + 3) % 61).collect(); 2];
    let labels = [0u8, 0, 0, 1, 1, 1, 1, 1, 1];
    let rows: Vec<(&[u32], &[u8])> = ids.iter().map(|r| (r.as_slice(), &labels[..])).collect();
    let batch = Batch::from_rows(&rows, 0, &Device::Cpu).unwrap();
    let cases: [(&str, ArchConfig); 2] = [
        ("gpt-neox", common::tiny_neox(true, 0.25, false)),
        ("gemma3", common::tiny_gemma3(3)),
    ];
    for (name, cfg) in cases {
        let full = CausalLm::build(
            &RandomSource::new(1.0),
            &cfg,
            &LoadOptions {
                trainable: true,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        for ckpt in [false, true] {
            let k = grads(&full.model, &full.params, &batch, ckpt, false);
            let g = grads(&full.model, &full.params, &batch, ckpt, true);
            assert_same(&format!("{name} full (ckpt {ckpt})"), &k, &g);
        }
        for kind in [Quant4Kind::Nf4, Quant4Kind::Fp4] {
            let mut q = CausalLm::build(
                &RandomSource::new(1.0),
                &cfg,
                &LoadOptions {
                    quant4: Some((kind, true)),
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            let lora = LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: TargetModules::Preset("all-linear".into()),
                modules_to_save: vec![],
            };
            let params = apply_lora(&mut q.model, &lora, DType::F32, &Device::Cpu, 3).unwrap();
            // LoRA's B starts at zero, which would make every A gradient zero: move it.
            for (i, (_, v)) in params.iter().enumerate() {
                v.set(&common::seeded_normal(v.dims(), 0.1, i as u64))
                    .unwrap();
            }
            for mode in [Checkpointing::Full, Checkpointing::Selective] {
                let k = grads(&q.model, &params, &batch, mode, false);
                let g = grads(&q.model, &params, &batch, mode, true);
                assert_same(&format!("{name} 4-bit {kind:?} + LoRA ({mode:?})"), &k, &g);
            }
        }
    }
}

fn run_steps(opt: &mut dyn Optimizer, vars: &[Var], steps: std::ops::Range<u64>) {
    for s in steps {
        let grads: Vec<Option<Tensor>> = vars
            .iter()
            .enumerate()
            .map(|(i, v)| {
                // Varied gradients, a zero block in the big variable, one skipped step.
                if i == 1 && s == 1 {
                    return None;
                }
                // Deterministic: both optimisers must see the same gradients.
                let n = v.elem_count() as u32;
                let g = Tensor::arange(0u32, n, &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .affine(0.37 + i as f64, s as f64)
                    .unwrap()
                    .sin()
                    .unwrap()
                    .reshape(v.shape())
                    .unwrap();
                let g = (g * (1.0 + s as f64)).unwrap();
                Some(if i == 0 {
                    let g = g.flatten_all().unwrap();
                    let zero = Tensor::zeros(256, DType::F32, &Device::Cpu).unwrap();
                    let rest = g.narrow(0, 256, g.elem_count() - 256).unwrap();
                    Tensor::cat(&[zero, rest], 0)
                        .unwrap()
                        .reshape(v.shape())
                        .unwrap()
                } else {
                    g
                })
            })
            .collect();
        opt.step(&grads, 1e-2, 0.7).unwrap();
    }
}

fn vars() -> Vec<Var> {
    // 8-bit state for the first (5,000 elements: the last block padded), f32 for the
    // others (under 4,096).
    [(50, 100), (30, 10), (7, 1)]
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let t = Tensor::randn(0f32, 1.0, s, &Device::Cpu).unwrap();
            Var::from_tensor(&(t + i as f64).unwrap()).unwrap()
        })
        .collect()
}

fn copy(vars: &[Var]) -> Vec<Var> {
    vars.iter()
        .map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
        .collect()
}

type MakeOpt = fn(Vec<Var>) -> Box<dyn Optimizer>;

#[test]
fn optimisers_update_the_same_on_the_generic_path_and_read_each_others_checkpoints() {
    let makers: [(&str, MakeOpt); 2] = [
        ("AdamW", |v| {
            let cfg = AdamWConfig {
                weight_decay: 0.01,
                ..AdamWConfig::default()
            };
            Box::new(AdamW::new(v, cfg).unwrap())
        }),
        ("AdamW8bit", |v| {
            let cfg = AdamWConfig {
                weight_decay: 0.01,
                ..AdamWConfig::default()
            };
            Box::new(AdamW8bit::new(v, cfg, 256, 4096).unwrap())
        }),
    ];
    for (name, make) in makers {
        let start = vars();
        let (a, b) = (copy(&start), copy(&start));
        let mut kernels = make(a.clone());
        let mut generic = make(b.clone());
        run_steps(kernels.as_mut(), &a, 0..3);
        with_generic_kernels(true, || run_steps(generic.as_mut(), &b, 0..3));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = max_abs_diff(x.as_tensor(), y.as_tensor());
            assert!(d < 1e-6, "{name}: variable {i} differs by {d}");
        }
        // The generic 8-bit state pads the last block of the big variable: 2 × 120 bytes.
        let (kb, gb) = (kernels.state_bytes(), generic.state_bytes());
        assert!(
            gb >= kb && gb - kb <= 2 * 256,
            "{name}: {kb} vs {gb} bytes of state"
        );
        // The same state, key by key (8-bit codes equal).
        let (sk, sg) = (
            kernels.state_tensors().unwrap(),
            with_generic_kernels(true, || generic.state_tensors().unwrap()),
        );
        assert_eq!(sk.len(), sg.len(), "{name}");
        for ((k1, t1), (k2, t2)) in sk.iter().zip(&sg) {
            assert_eq!(k1, k2);
            assert_eq!(t1.dims(), t2.dims(), "{name}: {k1}");
            let d = max_abs_diff(
                &t1.to_dtype(DType::F32).unwrap(),
                &t2.to_dtype(DType::F32).unwrap(),
            );
            // 8-bit codes exactly equal; f32 values within rounding.
            let tol = if k1.ends_with("_q") { 0.0 } else { 1e-6 };
            assert!(d <= tol, "{name}: state {k1} differs by {d}");
        }
        // A checkpoint of either kind resumes on the other: one more step agrees.
        let as_map = |v: Vec<(String, Tensor)>| v.into_iter().collect();
        let (c, d) = (copy(&a), copy(&b));
        let mut resumed_k = make(c.clone());
        let mut resumed_g = make(d.clone());
        resumed_k.load_state_tensors(&as_map(sg)).unwrap();
        with_generic_kernels(true, || {
            resumed_g.load_state_tensors(&as_map(sk)).unwrap();
            run_steps(resumed_g.as_mut(), &d, 3..4);
        });
        run_steps(resumed_k.as_mut(), &c, 3..4);
        for (i, (x, y)) in c.iter().zip(&d).enumerate() {
            let diff = max_abs_diff(x.as_tensor(), y.as_tensor());
            assert!(
                diff < 1e-5,
                "{name}: resumed variable {i} differs by {diff}"
            );
        }
    }
}

/// Peak memory of the four techniques under `ftlab bench` with the generic kernels, on
/// the real SmolLM2: the order the lab exists to show holds on the path a GPU runs.
#[test]
fn the_memory_order_of_the_techniques_holds_on_the_generic_path() {
    let _ = common::smollm2();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["bench", "--steps", "1", "--seq-len", "128", "--json"])
        .args(["--set", "model.device=cpu"])
        .env("FTLAB_KERNELS", "generic")
        .output()
        .unwrap();
    common::assert_success(&out);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let peak = |i: usize| rows[i]["train_peak_bytes"].as_u64().unwrap();
    for r in &rows {
        assert_eq!(r["generic_kernels"], true, "{r}");
        assert_eq!(r["device"], "cpu", "{r}");
    }
    let mib = |b: u64| b >> 20;
    eprintln!(
        "generic path, SmolLM2 1×128: full {} MiB, checkpointing {} MiB, LoRA {} MiB, QLoRA {} MiB",
        mib(peak(0)),
        mib(peak(1)),
        mib(peak(2)),
        mib(peak(3))
    );
    // Rows: baseline, grad-ckpt, lora, qlora.
    assert!(
        peak(3) < peak(2) && peak(2) < peak(1) && peak(1) < peak(0),
        "QLoRA < LoRA < checkpointing < full does not hold: {:?}",
        (0..4).map(|i| mib(peak(i))).collect::<Vec<_>>()
    );
}

/// A whole run on the generic path stops and resumes exactly: full fine-tuning with 8-bit
/// AdamW (its 8-bit state on the "device", saved and read back through the checkpoint),
/// 6 steps straight against 3 + a resume to 6; and the run's start event says where it ran.
#[test]
fn a_generic_run_resumes_from_its_checkpoint_to_the_same_losses() {
    use ftlab::train::events::TrainEvent;
    use ftlab::train::sft_task::SftTask;
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let data = common::small_sft(root.path(), 24);
    let preset = common::preset(root.path(), &model, &data, "optimizer = \"adamw8bit\"\n");
    let mut cfg = RunConfig::load(&preset, &[]).unwrap();
    cfg.train.save_every = 3;
    cfg.train.eval_every = 0;
    let run = |cfg: &RunConfig, dir: &std::path::Path, resume: bool| {
        with_generic_kernels(true, || {
            let task = SftTask::from_config(cfg, std::path::Path::new("."), &Device::Cpu).unwrap();
            let mut steps = Vec::new();
            let mut device = None;
            common::run_trainer(cfg, task, dir, resume, |l, _| match &l.event {
                TrainEvent::Step { step, loss, .. } => steps.push((*step, *loss)),
                TrainEvent::Start {
                    device: d, dtype, ..
                } => device = Some(format!("{d} {dtype}")),
                _ => {}
            });
            (steps, device)
        })
    };
    cfg.train.max_steps = 6;
    let (straight, device) = run(&cfg, &root.path().join("a"), false);
    assert_eq!(
        device.as_deref(),
        Some("cpu f32"),
        "the start event's device and dtype"
    );
    let mut first = cfg.clone();
    first.train.max_steps = 3;
    let (mut resumed, _) = run(&first, &root.path().join("b"), false);
    resumed.extend(run(&cfg, &root.path().join("b"), true).0);
    assert_eq!(straight.len(), 6);
    assert_eq!(
        straight.iter().map(|s| s.0).collect::<Vec<_>>(),
        resumed.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for ((s, a), (_, b)) in straight.iter().zip(&resumed) {
        assert!(
            (a - b).abs() < 1e-6,
            "step {s}: {a} straight vs {b} resumed"
        );
    }
}

//! The training engine on a tiny LLaMA built in the test (SmolLM2's tokenizer, ftlab's own
//! SFT data): every technique lowers the loss, gradient checkpointing is exact, LoRA merges
//! and reloads exactly, and resume continues the same loss curve.
mod common;

use common::max_abs_diff;
use std::sync::atomic::Ordering;

use candle_core::{Device, Tensor};
use ftlab::adapt::peft::{
    apply_lora, load_adapter, merge_adapters, save_adapter, LoraConfig, TargetModules,
};
use ftlab::config::RunConfig;
use ftlab::infer::LanguageModel;
use ftlab::model::LoadOptions;
use ftlab::train::events::TrainEvent;
use ftlab::train::setup;
use ftlab::train::sft_task::{self, SftTask};
use ftlab::train::step::{forward_backward, Checkpointing};
use ftlab::train::trainer::{Summary, TrainTask};

fn run_training(
    cfg: &RunConfig,
    dir: &std::path::Path,
    resume: bool,
    stop_at: Option<usize>,
) -> (Summary, Vec<(usize, f64)>, f64) {
    let task =
        SftTask::from_config(cfg, std::path::Path::new("."), &candle_core::Device::Cpu).unwrap();
    let initial = task.evaluate(4, 0).unwrap().unwrap().loss;
    let mut steps = Vec::new();
    let summary = common::run_trainer(cfg, task, dir, resume, |l, stop| {
        if let TrainEvent::Step { step, loss, .. } = l.event {
            steps.push((step, loss));
            if Some(step) == stop_at {
                stop.store(true, Ordering::SeqCst);
            }
        }
    });
    (summary, steps, initial)
}

/// Trains `cfg` into `dir` and checks that the eval loss fell by a tenth at least.
fn assert_loss_falls(cfg: &RunConfig, dir: &std::path::Path, what: &str) {
    let (summary, steps, initial) = run_training(cfg, dir, false, None);
    let last = summary.eval_losses.last().unwrap().1;
    assert!(
        last < initial * 0.9,
        "{what}: eval loss {initial:.4} → {last:.4}; {steps:?}"
    );
}

fn tiny_setup(extra: &str) -> (tempfile::TempDir, RunConfig) {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let data = common::small_sft(root.path(), 16);
    let preset = common::preset(root.path(), &model, &data, extra);
    let cfg = RunConfig::load(&preset, &[]).unwrap();
    (root, cfg)
}

#[test]
fn every_technique_lowers_the_eval_loss_of_a_tiny_model() {
    let cases = [
        ("baseline", ""),
        ("grad-ckpt", ""),
        ("lora", "[lora]\nr = 8\nalpha = 16\n"),
        ("qlora", "[lora]\nr = 8\nalpha = 16\n"),
    ];
    for (name, lora) in cases {
        let (root, mut cfg) = tiny_setup(lora);
        match name {
            "grad-ckpt" => cfg.model.gradient_checkpointing = true,
            "qlora" => {
                // As the shipped preset: selective checkpointing, 8-bit AdamW.
                cfg.model.quant = ftlab::config::QuantKind::Nf4;
                cfg.model.gradient_checkpointing = true;
                cfg.model.selective_checkpointing = true;
                cfg.train.optimizer = ftlab::config::OptimizerKind::Adamw8bit;
            }
            _ => {}
        }
        if cfg.lora.is_some() {
            cfg.train.lr = 1e-2;
        }
        let (summary, steps, initial) = run_training(&cfg, &root.path().join("run"), false, None);
        let last = summary.eval_losses.last().unwrap().1;
        eprintln!(
            "{name}: eval loss {initial:.4} → {last:.4}; train loss {:?}",
            steps.iter().map(|s| s.1).collect::<Vec<_>>()
        );
        assert!(
            last < initial * 0.9,
            "{name}: eval loss {initial:.4} → {last:.4}"
        );
        assert!(
            steps.last().unwrap().1 < steps[0].1,
            "{name}: train loss did not fall: {steps:?}"
        );
        assert!(root.path().join("run/summary.json").exists());
    }
}

/// Full and selective recomputation give plain backward's loss and gradients: full fine-
/// tuning, LoRA on a dense frozen base, and LoRA on a 4-bit base (QLoRA).
#[test]
fn checkpointed_gradients_equal_plain_gradients() {
    let lora = "[lora]\nr = 4\nalpha = 8\ndropout = 0.0\n";
    for (name, extra, quant) in [
        ("full", "", false),
        ("lora", lora, false),
        ("qlora", lora, true),
    ] {
        let (_root, mut cfg) = tiny_setup(extra);
        if quant {
            cfg.model.quant = ftlab::config::QuantKind::Nf4;
        }
        let (lm, tm) = setup::prepare(&cfg, &candle_core::Device::Cpu).unwrap();
        // LoRA's B starts at zero, which makes every A gradient zero: move it.
        for (_, v) in tm.params.iter().filter(|(n, _)| n.contains("lora_B")) {
            let b = Tensor::randn(0f32, 0.1, v.shape(), &Device::Cpu).unwrap();
            v.set(&b).unwrap();
        }
        let (train, _) = sft_task::build(&cfg.data, &lm, std::path::Path::new(".")).unwrap();
        let batch = &train.batches(0, 4, 1).unwrap()[0];
        let run = |mode: Checkpointing| {
            let mut acc = vec![None; tm.params.len()];
            let (l, _) = forward_backward(&tm.model, &tm.params, batch, mode, None, &mut acc)
                .unwrap_or_else(|e| panic!("{name} {mode:?}: {e:#}"));
            (l, acc)
        };
        let (l_plain, plain) = run(Checkpointing::Off);
        let mut modes = vec![Checkpointing::Full];
        if !extra.is_empty() {
            modes.push(Checkpointing::Selective);
        }
        for mode in modes {
            let (l, grads) = run(mode);
            assert_eq!(l_plain, l, "{name} {mode:?}: loss");
            for ((p, _), (a, b)) in tm.params.iter().zip(plain.iter().zip(&grads)) {
                let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
                let d = max_abs_diff(a, b);
                let scale = a
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(scale > 0.0, "{name}: {p} has a zero gradient");
                assert!(
                    d <= 1e-6 * scale.max(1.0),
                    "{name} {mode:?}: {p}: max diff {d}"
                );
            }
        }
    }
}

fn logits(lm: &LanguageModel) -> Tensor {
    let ids = Tensor::new(&[[1u32, 520, 9531, 198, 504, 3575, 282]], &Device::Cpu).unwrap();
    lm.model.forward(&ids, 0, None).unwrap()
}

#[test]
fn lora_merge_and_peft_save_reload_give_the_same_logits() {
    let root = tempfile::tempdir().unwrap();
    let dir = common::tiny_model(root.path());
    let spec = dir.display().to_string();
    let mut lm = LanguageModel::load_spec(&spec, &LoadOptions::default()).unwrap();
    let base = logits(&lm);
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: TargetModules::Names(vec![
            "q_proj".into(),
            "v_proj".into(),
            "down_proj".into(),
        ]),
        modules_to_save: vec![],
    };
    let vars = apply_lora(
        &mut lm.model,
        &cfg,
        candle_core::DType::F32,
        &Device::Cpu,
        3,
    )
    .unwrap();
    assert_eq!(
        vars.len(),
        2 * 3 * 2,
        "A and B for 3 module kinds in 2 layers"
    );
    assert_eq!(
        max_abs_diff(&base, &logits(&lm)),
        0.0,
        "B = 0 must leave the model unchanged"
    );
    // Give the adapters non-zero values, as after training.
    for (_, v) in &vars {
        v.set(&Tensor::randn(0f32, 0.2, v.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let adapted = logits(&lm);
    assert!(max_abs_diff(&base, &adapted) > 1e-3);
    let adapter_dir = root.path().join("adapter");
    save_adapter(&adapter_dir, &mut lm.model, &cfg, &spec, &vars).unwrap();
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["r"], 4);
    let names =
        candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(
        names.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
        "PEFT tensor names"
    );
    // The training model's output is tracked for the backward pass.
    assert!(adapted.track_op());
    // Reload onto a fresh base: identical logits.
    let mut fresh = LanguageModel::load_spec(&spec, &LoadOptions::default()).unwrap();
    load_adapter(&adapter_dir, &mut fresh.model).unwrap();
    assert_eq!(max_abs_diff(&adapted, &logits(&fresh)), 0.0);
    // Loaded for inference (`apply_run`, as generate/eval/RAG/the dashboard do): the same
    // logits, and no autograd graph behind them (a tracked adapter keeps every activation
    // of a forward pass alive).
    let mut inference = LanguageModel::load_spec(&spec, &LoadOptions::default()).unwrap();
    inference.apply_run(&adapter_dir).unwrap();
    let out = logits(&inference);
    assert_eq!(max_abs_diff(&adapted, &out), 0.0);
    assert!(!out.track_op(), "inference logits are tracked for autograd");
    // Merge: same logits (up to float rounding), no adapters left.
    assert_eq!(merge_adapters(&mut lm.model).unwrap(), 6);
    let d = max_abs_diff(&adapted, &logits(&lm));
    assert!(d < 1e-4, "merged vs unmerged max diff {d}");
}

#[test]
fn a_trained_tied_embedding_is_saved_for_peft_to_keep_the_head_tied() {
    // peft's default would untie a tied head from a trained embedding (`modules_to_save`);
    // ftlab trains them as one table, so the adapter asks peft ≥ 0.18 to keep them tied
    // (`ensure_weight_tying`) and carries the head's copy under the head's name.
    let root = tempfile::tempdir().unwrap();
    let dir = common::tiny_model(root.path());
    let spec = dir.display().to_string();
    let mut lm = LanguageModel::load_spec(&spec, &LoadOptions::default()).unwrap();
    assert!(lm.model.shape().tied_embeddings);
    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: TargetModules::Names(vec!["q_proj".into()]),
        modules_to_save: vec!["embed_tokens".into()],
    };
    let vars = apply_lora(
        &mut lm.model,
        &cfg,
        candle_core::DType::F32,
        &Device::Cpu,
        3,
    )
    .unwrap();
    for (_, v) in &vars {
        let moved =
            (v.as_tensor() + Tensor::randn(0f32, 0.2, v.shape(), &Device::Cpu).unwrap()).unwrap();
        v.set(&moved).unwrap();
    }
    let adapted = logits(&lm);
    let adapter_dir = root.path().join("adapter");
    save_adapter(&adapter_dir, &mut lm.model, &cfg, &spec, &vars).unwrap();
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["ensure_weight_tying"], true);
    let t =
        candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let embed = &t["base_model.model.model.embed_tokens.weight"];
    assert_eq!(
        max_abs_diff(embed, &t["base_model.model.lm_head.weight"]),
        0.0
    );
    // ftlab reads it back as one table: the same logits, one variable for it.
    let mut fresh = LanguageModel::load_spec(&spec, &LoadOptions::default()).unwrap();
    let loaded = load_adapter(&adapter_dir, &mut fresh.model).unwrap();
    assert_eq!(loaded.len(), vars.len());
    assert_eq!(max_abs_diff(&adapted, &logits(&fresh)), 0.0);
    // A head copy that differs from the table is refused, naming the file.
    let mut bad = t.clone();
    bad.insert(
        "base_model.model.lm_head.weight".into(),
        (embed + 1.0).unwrap(),
    );
    candle_core::safetensors::save(&bad, adapter_dir.join("adapter_model.safetensors")).unwrap();
    let mut fresh = LanguageModel::load_spec(&spec, &LoadOptions::default()).unwrap();
    let err = load_adapter(&adapter_dir, &mut fresh.model)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("differs"),
        "{err}"
    );
}

#[test]
fn resume_continues_the_same_loss_curve() {
    let (root, cfg) = tiny_setup("[lora]\nr = 4\nalpha = 8\n");
    let (_, straight, _) = run_training(&cfg, &root.path().join("a"), false, None);
    let (s1, first, _) = run_training(&cfg, &root.path().join("b"), false, Some(6));
    assert_eq!(s1.reason, "stopped");
    assert_eq!(s1.steps, 6);
    let (s2, second, _) = run_training(&cfg, &root.path().join("b"), true, None);
    assert_eq!(s2.steps, 12);
    let resumed: Vec<(usize, f64)> = first.into_iter().chain(second).collect();
    assert_eq!(resumed.len(), straight.len());
    for ((s, a), (_, b)) in straight.iter().zip(&resumed) {
        assert!((a - b).abs() < 1e-5, "step {s}: {a} vs {b}");
    }
    // The run directory keeps the adapter (PEFT layout) and the metrics of both sessions.
    assert!(root
        .path()
        .join("b/adapter/adapter_model.safetensors")
        .exists());
    let metrics = std::fs::read_to_string(root.path().join("b/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"event\":\"start\""))
            .count(),
        2
    );
}

/// The loss and every gradient of `forward_backward` (which goes through the fused,
/// chunked LM-head loss) equal those of the logits path (`CausalLm::forward` + the
/// composed masked cross entropy) for tied and untied LLaMA and GPT-NeoX heads and Gemma 3's, with
/// the head trainable (full fine-tuning), plainly and checkpointed.
#[test]
fn the_fused_head_loss_equals_the_logits_path_on_every_head_kind() {
    use ftlab::model::load::RandomSource;
    use ftlab::model::ops::masked_cross_entropy;
    use ftlab::model::{ArchConfig, CausalLm};
    use ftlab::train::data::sft::Batch;
    use ftlab::train::step::accumulate;

    let llama = |tie| {
        let mut c = ftlab::model::tiny::tiny_llama_config(61);
        c.tie_word_embeddings = tie;
        ArchConfig::from(c)
    };
    let neox = |tie| common::tiny_neox(true, 0.25, tie);
    let ids: Vec<Vec<u32>> = vec![(0..9).map(|i| (i * 7 + 3) % 61).collect(); 2];
    let labels = [0u8, 0, 0, 1, 1, 1, 1, 1, 1];
    let rows: Vec<(&[u32], &[u8])> = ids.iter().map(|r| (r.as_slice(), &labels[..])).collect();
    let batch = Batch::from_rows(&rows, 0, &Device::Cpu).unwrap();
    for (name, cfg) in [
        ("llama tied", llama(true)),
        ("llama untied", llama(false)),
        ("gpt-neox tied", neox(true)),
        ("gpt-neox untied", neox(false)),
        ("gemma3 tied, sliding window 3", common::tiny_gemma3(3)),
    ] {
        let opts = LoadOptions {
            trainable: true,
            ..LoadOptions::default()
        };
        let lm = CausalLm::build(&RandomSource::new(1.0), &cfg, &opts).unwrap();
        let (model, params) = (&lm.model, &lm.params);
        let mut composed = vec![None; params.len()];
        let logits = model.forward(&batch.input_ids, 0, None).unwrap();
        let (b, t, v) = logits.dims3().unwrap();
        let logits = logits
            .narrow(1, 0, t - 1)
            .unwrap()
            .reshape((b * (t - 1), v));
        let (loss, _) =
            masked_cross_entropy(&logits.unwrap(), &batch.targets, &batch.loss_mask).unwrap();
        accumulate(&mut loss.backward().unwrap().into(), params, &mut composed).unwrap();
        let expected = loss.to_scalar::<f32>().unwrap() as f64;
        for ckpt in [false, true] {
            let mut fused = vec![None; params.len()];
            let (l, _) = forward_backward(model, params, &batch, ckpt, None, &mut fused).unwrap();
            assert!(
                (l - expected).abs() < 1e-5,
                "{name}: loss {l} vs {expected}"
            );
            for ((p, _), (a, b)) in params.iter().zip(fused.iter().zip(&composed)) {
                let d = max_abs_diff(a.as_ref().unwrap(), b.as_ref().unwrap());
                assert!(d < 1e-5, "{name} (ckpt {ckpt}): {p} differs by {d}");
            }
        }
    }
}

/// Full fine-tuning in bf16, as `model.dtype = "auto"` gives it on a GPU, run here on the
/// CPU (plain and checkpointed): the model's tensors are bf16 variables, the optimiser
/// updates f32 masters of them, training lowers the loss, and the run's weights are the
/// masters: f32 values that a bf16 tensor cannot hold, which reload into the model rounded.
#[test]
fn bf16_full_fine_tuning_trains_f32_masters() {
    use candle_core::DType;
    for ckpt in [false, true] {
        let (root, mut cfg) = tiny_setup("");
        cfg.model.dtype = ftlab::config::ComputeDtype::Bf16;
        cfg.model.gradient_checkpointing = ckpt;
        cfg.train.lr = 1e-3;
        let (lm, tm) = setup::prepare(&cfg, &Device::Cpu).unwrap();
        assert!(!tm.params.is_empty());
        assert!(tm.params.iter().all(|(_, v)| v.dtype() == DType::BF16));
        drop((lm, tm));
        let dir = root.path().join("run");
        assert_loss_falls(&cfg, &dir, &format!("bf16 full (ckpt {ckpt})"));
        let saved = candle_core::safetensors::load(
            ftlab::runs::layout::RunDir::new(&dir)
                .model()
                .join(ftlab::runs::layout::FULL_WEIGHTS),
            &Device::Cpu,
        )
        .unwrap();
        let off_grid = saved
            .values()
            .filter(|t| common::off_the_bf16_grid(t))
            .count();
        assert!(
            off_grid * 2 > saved.len(),
            "{off_grid} of {} saved tensors hold more than bf16: the masters were not saved",
            saved.len()
        );
    }
}

/// Mixed precision as `model.dtype = "auto"` gives it on a GPU, with a frozen base:
/// the base computes in bf16, the adapters stay f32 (their gradients come back through the
/// cast in f32), and training lowers the loss. With `modules_to_save` the (tied) embedding
/// is a bf16 variable trained through an f32 master, which the adapter file holds. Run
/// here on the CPU.
#[test]
fn bf16_lora_keeps_f32_master_adapters_and_learns() {
    use candle_core::DType;
    for (quant, save_embed) in [(false, false), (true, false), (false, true)] {
        let extra = if save_embed {
            "modules_to_save = [\"embed_tokens\"]\n"
        } else {
            ""
        };
        let (root, mut cfg) = tiny_setup(&format!(
            "[lora]\nr = 8\nalpha = 16\ndropout = 0.0\n{extra}"
        ));
        cfg.model.dtype = ftlab::config::ComputeDtype::Bf16;
        if quant {
            cfg.model.quant = ftlab::config::QuantKind::Nf4;
            cfg.model.gradient_checkpointing = true;
        }
        cfg.train.lr = 1e-2;
        let (lm, tm) = setup::prepare(&cfg, &Device::Cpu).unwrap();
        assert_eq!(lm.model.embed_weight().dtype(), DType::BF16);
        let is_table = |name: &str| name.ends_with("embed_tokens.weight");
        assert_eq!(tm.params.iter().any(|(n, _)| is_table(n)), save_embed);
        for (name, v) in &tm.params {
            let table = is_table(name);
            let want = if table { DType::BF16 } else { DType::F32 };
            assert_eq!(v.dtype(), want, "{name}");
        }
        drop((lm, tm));
        let dir = root.path().join("run");
        let what = format!("bf16 (4-bit: {quant}, embedding trained: {save_embed})");
        assert_loss_falls(&cfg, &dir, &what);
        if save_embed {
            let adapter = ftlab::runs::layout::RunDir::new(&dir).adapter();
            let t = candle_core::safetensors::load(
                adapter.join("adapter_model.safetensors"),
                &Device::Cpu,
            )
            .unwrap();
            assert!(
                common::off_the_bf16_grid(&t["base_model.model.model.embed_tokens.weight"]),
                "the saved table is the f32 master, not the bf16 variable"
            );
        }
    }
}

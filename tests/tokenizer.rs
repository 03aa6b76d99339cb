//! The tokenizer rebuilt from GGUF metadata, against transformers' ids for the same file
//! (tests/fixtures/smollm2_tok/, from scripts/reference/tokenizer_cases.py), plus error cases on
//! GGUF files written here.
//!
//! The real model is found with `ftlab::hub::resolve("smollm2")` (fetched into the cache when
//! missing), or at `FTLAB_SMOLLM2_GGUF` when that is set.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Value;
use ftlab::hub::{resolve, ModelSource};
use ftlab::infer::chat_template::ChatTemplate;
use ftlab::model::load::tokenizer::{
    chat_template_from_gguf, chat_template_from_hf_dir, special_tokens_from_gguf,
    special_tokens_from_hf_dir, tokenizer_from_file, tokenizer_from_gguf, SpecialTokens,
};
use gguf_tok::{strings, write_gguf, Real};
use serde::Deserialize;
use tokenizers::Tokenizer;

mod gguf_tok;

fn smollm2_gguf() -> PathBuf {
    if let Ok(p) = std::env::var("FTLAB_SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    match resolve("smollm2").expect("resolve smollm2").source {
        ModelSource::Gguf { path } => path,
        other => panic!("smollm2 resolved to {other:?}, expected a GGUF file"),
    }
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| Real::load(smollm2_gguf()))
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
    decoded_skip_special: String,
}

#[derive(Deserialize)]
struct TokFixture {
    cases: Vec<TokCase>,
    special: Special,
}

#[derive(Deserialize)]
struct Special {
    bos_token_id: u32,
    eos_token_id: u32,
    pad_token_id: u32,
    added_tokens: std::collections::BTreeMap<String, u32>,
}

#[derive(Deserialize)]
struct ChatCase {
    rendered: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct ChatFixture {
    chat_template: String,
    cases: Vec<ChatCase>,
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2_tok")
        .join(name)
}

fn tok_fixture() -> TokFixture {
    let text = std::fs::read_to_string(fixture_path("tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn chat_fixture() -> ChatFixture {
    let text = std::fs::read_to_string(fixture_path("chat_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(tok: &Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tok.encode(text, add_special).unwrap().get_ids().to_vec()
}

#[test]
fn ids_match_transformers_for_every_case() {
    let r = real();
    let fx = tok_fixture();
    assert!(fx.cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &fx.cases {
        let got = ids(&r.tokenizer, &case.text, false);
        if got != case.ids {
            failures.push(format!(
                "{:?}\n  want {:?}\n  got  {:?}",
                case.text, case.ids, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decode_round_trips_every_case() {
    let r = real();
    for case in &tok_fixture().cases {
        let enc = ids(&r.tokenizer, &case.text, false);
        let back = r.tokenizer.decode(&enc, false).unwrap();
        assert_eq!(back, case.text, "round trip");
        let skipped = r.tokenizer.decode(&enc, true).unwrap();
        assert_eq!(skipped, case.decoded_skip_special, "skip_special_tokens");
    }
    let ja = "東京は日本の首都です。富士山の高さは3776メートルです。";
    let enc = ids(&r.tokenizer, ja, false);
    assert_eq!(r.tokenizer.decode(&enc, false).unwrap(), ja);
}

#[test]
fn special_tokens_are_single_ids() {
    let r = real();
    let t = &r.tokenizer;
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(ids(t, "<|im_start|>", false), vec![1]);
    assert_eq!(ids(t, "<|im_end|>", false), vec![2]);
    assert_eq!(
        ids(t, "<|im_start|>user\nHi<|im_end|>\n", false),
        vec![1, 4093, 198, 26843, 2, 198]
    );
    // Every token the file marks as control is matched whole, at its own id.
    let fx = tok_fixture();
    assert_eq!(fx.special.added_tokens.len(), 17);
    for (content, id) in &fx.special.added_tokens {
        assert_eq!(ids(t, content, false), vec![*id], "{content}");
        assert_eq!(t.id_to_token(*id).as_deref(), Some(content.as_str()));
    }
    assert_eq!(t.get_vocab_size(true), 49152);
}

#[test]
fn no_bos_is_added_when_the_file_says_not_to() {
    // SmolLM2's GGUF has tokenizer.ggml.add_bos_token = false.
    let r = real();
    assert_eq!(
        ids(&r.tokenizer, "Hello world", true),
        ids(&r.tokenizer, "Hello world", false)
    );
}

#[test]
fn chat_fixture_ids_match() {
    let r = real();
    for case in &chat_fixture().cases {
        assert_eq!(
            ids(&r.tokenizer, &case.rendered, false),
            case.ids,
            "{:?}",
            case.rendered
        );
    }
}

#[test]
fn special_tokens_and_template_from_gguf() {
    let r = real();
    let fx = tok_fixture();
    let st = special_tokens_from_gguf(&r.content, &r.path).unwrap();
    assert_eq!(st.bos, Some(fx.special.bos_token_id));
    assert_eq!(st.eos, Some(fx.special.eos_token_id));
    assert_eq!(st.pad, Some(fx.special.pad_token_id));
    assert_eq!(st.bos, Some(1));
    assert_eq!(st.eos, Some(2));
    // <|endoftext|> (0) and <|im_end|> (2) both end generation.
    assert_eq!(st.eos_tokens, vec![0, 2]);
    assert!(st.is_eos(2) && st.is_eos(0) && !st.is_eos(1));

    let tmpl = chat_template_from_gguf(&r.content).expect("SmolLM2 has a chat template");
    assert_eq!(tmpl, chat_fixture().chat_template);
    // It compiles and renders with the token strings the file names.
    let bos = r.tokenizer.id_to_token(st.bos.unwrap()).unwrap();
    let eos = r.tokenizer.id_to_token(st.eos.unwrap()).unwrap();
    let ct = ChatTemplate::new(&tmpl, &bos, &eos).unwrap();
    assert!(ct
        .render(&[], true)
        .unwrap()
        .ends_with("<|im_start|>assistant\n"));
}

// ---- GGUF files written here -------------------------------------------------------------

/// A tiny byte-level vocabulary: "h", "i", "Ġ", "hi", "Ġhi", plus <s> and </s>.
fn tiny_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["<s>", "</s>", "h", "i", "Ġ", "hi", "Ġhi"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array([3, 3, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.merges", strings(&["h i", "Ġ hi"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
    ]
}

#[test]
fn missing_tokens_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let md: Vec<_> = tiny_metadata()
        .into_iter()
        .filter(|(k, _)| *k != "tokenizer.ggml.tokens")
        .collect();
    let (path, content) = write_gguf(dir.path(), "no-tokens.gguf", &md);
    let err = tokenizer_from_gguf(&content, &path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");
}

#[test]
fn malformed_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut md = tiny_metadata();
    for (k, v) in md.iter_mut() {
        if *k == "tokenizer.ggml.merges" {
            *v = Value::U32(7);
        }
    }
    let (path, content) = write_gguf(dir.path(), "bad-merges.gguf", &md);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(msg.contains("bad-merges.gguf"), "{msg}");
    assert!(msg.contains("tokenizer.ggml.merges"), "{msg}");

    let md: Vec<_> = tiny_metadata()
        .into_iter()
        .filter(|(k, _)| *k != "tokenizer.ggml.model")
        .collect();
    let (path, content) = write_gguf(dir.path(), "no-model.gguf", &md);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(
        msg.contains("no-model.gguf") && msg.contains("tokenizer.ggml.model"),
        "{msg}"
    );
}

#[test]
fn unsupported_tokenizer_model_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let mut md = tiny_metadata();
    md[1].1 = Value::String("bert".into());
    let (path, content) = write_gguf(dir.path(), "wordpiece.gguf", &md);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(msg.contains("wordpiece.gguf"), "{msg}");
    assert!(
        msg.contains("\"bert\"") && msg.contains("WordPiece"),
        "{msg}"
    );
    assert!(msg.contains("gpt2") && msg.contains("llama"), "{msg}");

    let mut md = tiny_metadata();
    md[2].1 = Value::String("no-such-pre".into());
    let (path, content) = write_gguf(dir.path(), "pre.gguf", &md);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(
        msg.contains("no-such-pre") && msg.contains("smollm"),
        "{msg}"
    );
}

#[test]
fn gguf_tok_tokenizer_and_bos_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (path, content) = write_gguf(dir.path(), "tiny.gguf", &tiny_metadata());
    let tok = tokenizer_from_gguf(&content, &path).unwrap();
    assert_eq!(ids(&tok, "hi hi", false), vec![5, 6]);
    assert_eq!(
        ids(&tok, "hi hi", true),
        vec![5, 6],
        "no add_bos_token key: no BOS"
    );
    assert_eq!(ids(&tok, "<s>hi</s>", false), vec![0, 5, 1]);
    assert_eq!(tok.decode(&[0, 5, 6, 1], true).unwrap(), "hi hi");

    let mut md = tiny_metadata();
    md.push(("tokenizer.ggml.add_bos_token", Value::Bool(true)));
    let (path, content) = write_gguf(dir.path(), "tiny-bos.gguf", &md);
    let tok = tokenizer_from_gguf(&content, &path).unwrap();
    assert_eq!(ids(&tok, "hi hi", true), vec![0, 5, 6]);
    assert_eq!(ids(&tok, "hi hi", false), vec![5, 6]);

    let st = special_tokens_from_gguf(&content, &path).unwrap();
    assert_eq!(
        st,
        SpecialTokens {
            bos: Some(0),
            eos: Some(1),
            eos_tokens: vec![1],
            pad: None
        }
    );
    assert_eq!(chat_template_from_gguf(&content), None);
}

#[test]
fn each_pre_tokenizer_style_builds() {
    let dir = tempfile::tempdir().unwrap();
    for pre in ["default", "llama-bpe", "qwen2", "gpt-2", "smollm", "gpt-4o"] {
        let mut md = tiny_metadata();
        md[2].1 = Value::String(pre.into());
        let (path, content) = write_gguf(dir.path(), &format!("{pre}.gguf"), &md);
        let tok = tokenizer_from_gguf(&content, &path).unwrap_or_else(|e| panic!("{pre}: {e:#}"));
        assert_eq!(ids(&tok, "hi hi", false), vec![5, 6], "{pre}");
        assert_eq!(
            tok.decode(&ids(&tok, "hi hi", false), false).unwrap(),
            "hi hi"
        );
    }
    // No tokenizer.ggml.pre at all: llama.cpp's default split.
    let md: Vec<_> = tiny_metadata()
        .into_iter()
        .filter(|(k, _)| *k != "tokenizer.ggml.pre")
        .collect();
    let (path, content) = write_gguf(dir.path(), "nopre.gguf", &md);
    let tok = tokenizer_from_gguf(&content, &path).unwrap();
    assert_eq!(ids(&tok, "hi hi", false), vec![5, 6]);
}

// ---- Hugging Face folders --------------------------------------------------------------------

#[test]
fn tokenizer_json_round_trip_and_errors() {
    let r = real();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenizer.json");
    r.tokenizer.save(&file, false).unwrap();
    let loaded = tokenizer_from_file(&file).unwrap();
    for case in &tok_fixture().cases {
        assert_eq!(ids(&loaded, &case.text, false), case.ids, "{:?}", case.text);
    }

    let missing = dir.path().join("nope/tokenizer.json");
    let msg = format!("{:#}", tokenizer_from_file(&missing).unwrap_err());
    assert!(msg.contains("nope/tokenizer.json"), "{msg}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{not json").unwrap();
    let msg = format!("{:#}", tokenizer_from_file(&broken).unwrap_err());
    assert!(msg.contains("broken.json"), "{msg}");
}

#[test]
fn special_tokens_from_an_hf_folder() {
    let r = real();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    r.tokenizer.save(d.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": true},
            "pad_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}"}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": 2}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("generation_config.json"),
        r#"{"eos_token_id": [2, 5]}"#,
    )
    .unwrap();
    let st = special_tokens_from_hf_dir(d).unwrap();
    assert_eq!(st.bos, Some(1));
    assert_eq!(st.eos, Some(2));
    assert_eq!(st.pad, Some(2));
    // generation_config's extra id, and <|endoftext|> (0) as a special end-of-turn token.
    assert_eq!(st.eos_tokens, vec![0, 2, 5]);
    assert_eq!(
        chat_template_from_hf_dir(d).unwrap().as_deref(),
        Some("{{ messages[0]['content'] }}")
    );

    // Only config.json: ids from there.
    let d2 = tempfile::tempdir().unwrap();
    std::fs::write(
        d2.path().join("config.json"),
        r#"{"bos_token_id": 128000, "eos_token_id": [128001, 128009], "pad_token_id": null}"#,
    )
    .unwrap();
    let st = special_tokens_from_hf_dir(d2.path()).unwrap();
    assert_eq!(st.bos, Some(128000));
    assert_eq!(st.eos, Some(128001));
    assert_eq!(st.eos_tokens, vec![128001, 128009]);
    assert_eq!(st.pad, None);
    assert_eq!(chat_template_from_hf_dir(d2.path()).unwrap(), None);

    // A broken file is an error naming it.
    std::fs::write(d2.path().join("generation_config.json"), "{oops").unwrap();
    let msg = format!("{:#}", special_tokens_from_hf_dir(d2.path()).unwrap_err());
    assert!(msg.contains("generation_config.json"), "{msg}");
}

#[test]
fn chat_template_forms_in_an_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    )
    .unwrap();
    assert_eq!(chat_template_from_hf_dir(d).unwrap().as_deref(), Some("D"));
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#,
    )
    .unwrap();
    assert_eq!(chat_template_from_hf_dir(d).unwrap().as_deref(), Some("R"));
    std::fs::write(d.join("chat_template.json"), r#"{"chat_template": "J"}"#).unwrap();
    assert_eq!(chat_template_from_hf_dir(d).unwrap().as_deref(), Some("J"));
    std::fs::write(d.join("chat_template.jinja"), "{{ 'X' }}").unwrap();
    assert_eq!(
        chat_template_from_hf_dir(d).unwrap().as_deref(),
        Some("{{ 'X' }}")
    );

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("tokenizer_config.json"),
        r#"{"chat_template": 42}"#,
    )
    .unwrap();
    let msg = format!("{:#}", chat_template_from_hf_dir(bad.path()).unwrap_err());
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("chat_template"),
        "{msg}"
    );
}

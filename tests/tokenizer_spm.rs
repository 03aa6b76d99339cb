//! SentencePiece tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.model = "llama"`).
//!
//! The real Gemma 3 270M vocabulary (262,144 tokens) against transformers' ids and decodings for
//! the same file (tests/fixtures/gemma3_tok/cases.json, from
//! scripts/reference/gemma3_tokenizer_cases.py), and tiny vocabularies written here that show
//! byte fallback, how scores (or, for Gemma, file order) choose between segmentations, the
//! prefix space, and the errors for malformed metadata.
//!
//! The real model is read from `FTLAB_GEMMA3_GGUF`, else from the ftlab cache
//! (`<cache>/models/gemma3/gemma-3-270m-q4_k_m.gguf`); the real-model tests fail, naming the
//! path, when it is in neither place.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Value;
use ftlab::hub::cache_dir;
use ftlab::model::load::tokenizer::{special_tokens_from_gguf, tokenizer_from_gguf};
use gguf_tok::{strings, write_gguf, Real};
use serde::Deserialize;
use tokenizers::Tokenizer;

mod gguf_tok;

fn gemma3_gguf() -> PathBuf {
    let path = match std::env::var("FTLAB_GEMMA3_GGUF") {
        Ok(p) => PathBuf::from(p),
        Err(_) => cache_dir()
            .expect("ftlab cache directory")
            .join("models/gemma3/gemma-3-270m-q4_k_m.gguf"),
    };
    assert!(
        path.is_file(),
        "the Gemma 3 270M GGUF is not at {} (set FTLAB_GEMMA3_GGUF to its path)",
        path.display()
    );
    path
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| Real::load(gemma3_gguf()))
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_with_special: Vec<u32>,
    decoded: String,
    decoded_with_special_skipped: String,
    round_trips: bool,
}

#[derive(Deserialize)]
struct Special {
    bos_token_id: u32,
    eos_token_id: u32,
    pad_token_id: u32,
    unk_token_id: u32,
    vocab_size: usize,
    selected_added_tokens: std::collections::BTreeMap<String, u32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    special: Special,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_tok/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(tok: &Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tok.encode(text, add_special).unwrap().get_ids().to_vec()
}

#[test]
fn gemma3_ids_match_transformers_for_every_case() {
    let r = real();
    let fx = fixture();
    assert!(fx.cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &fx.cases {
        for (add_special, want) in [(false, &case.ids), (true, &case.ids_with_special)] {
            let got = ids(&r.tokenizer, &case.text, add_special);
            if &got != want {
                failures.push(format!(
                    "{:?} (add_special_tokens={add_special})\n  want {want:?}\n  got  {got:?}",
                    case.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gemma3_decoding_matches_transformers_and_round_trips() {
    let r = real();
    for case in &fixture().cases {
        let back = r.tokenizer.decode(&case.ids, false).unwrap();
        assert_eq!(back, case.decoded, "decode of {:?}", case.text);
        if case.round_trips {
            assert_eq!(back, case.text);
        }
        let skipped = r.tokenizer.decode(&case.ids_with_special, true).unwrap();
        assert_eq!(
            skipped, case.decoded_with_special_skipped,
            "decode skipping special tokens, {:?}",
            case.text
        );
    }
}

#[test]
fn gemma3_special_ids_and_end_of_turn() {
    let r = real();
    let sp = fixture().special;
    assert_eq!(r.tokenizer.get_vocab_size(true), sp.vocab_size);
    for (token, id) in &sp.selected_added_tokens {
        assert_eq!(r.tokenizer.token_to_id(token), Some(*id), "{token:?}");
        assert_eq!(ids(&r.tokenizer, token, false), vec![*id], "{token:?}");
    }
    assert_eq!(r.tokenizer.token_to_id("<unk>"), Some(sp.unk_token_id));

    let st = special_tokens_from_gguf(&r.content, &r.path).unwrap();
    assert_eq!(st.bos, Some(sp.bos_token_id));
    assert_eq!(st.eos, Some(sp.eos_token_id));
    assert_eq!(st.pad, Some(sp.pad_token_id));
    // Generation in Gemma's turn format stops at <end_of_turn> as well as at <eos>; the
    // user-defined HTML token "</s>" (strikethrough) does not end anything.
    let end_of_turn = sp.selected_added_tokens["<end_of_turn>"];
    let mut want = vec![sp.eos_token_id, end_of_turn];
    want.sort_unstable();
    assert_eq!(st.eos_tokens, want);
    assert!(st.is_eos(end_of_turn));
    assert!(!st.is_eos(sp.selected_added_tokens["</s>"]));
}

// ---- tiny SentencePiece vocabularies written here ------------------------------------------

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Ids of the tiny vocabulary's pieces.
const SPACE: u32 = 259;
const A: u32 = 260;
const B: u32 = 261;
const C: u32 = 262;
const AB: u32 = 263;
const BC: u32 = 264;
const SPACE_A: u32 = 265;
const TWO_SPACES: u32 = 266;
/// The id of the byte-fallback token `<0xNN>`.
fn byte_id(b: u8) -> u32 {
    3 + b as u32
}

/// `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then "▁", "a", "b", "c", "ab", "bc", "▁a" and
/// a user-defined token of two real spaces (as Gemma files store them). `ab_first` gives "ab" a
/// better score than "bc" (and the reverse otherwise).
fn tiny_spm(arch: &str, ab_first: bool) -> Vec<(&'static str, Value)> {
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    let mut tokens = vec!["<unk>", "<s>", "</s>"];
    tokens.extend(bytes.iter().map(String::as_str));
    tokens.extend(["▁", "a", "b", "c", "ab", "bc", "▁a", "  "]);
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    types.extend([BYTE; 256]);
    types.extend([NORMAL; 7]);
    types.push(USER_DEFINED);
    let (ab, bc) = if ab_first { (-1.0, -2.0) } else { (-2.0, -1.0) };
    let mut scores = vec![0.0f32; 3 + 256];
    scores.extend([-10.0, -11.0, -12.0, -13.0, ab, bc, -3.0, -4.0]);
    assert_eq!(tokens.len(), TWO_SPACES as usize + 1);
    let arch: &'static str = if arch == "gemma3" { "gemma3" } else { "llama" };
    vec![
        ("general.architecture", Value::String(arch.into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ]
}

fn with(
    mut md: Vec<(&'static str, Value)>,
    key: &'static str,
    v: Value,
) -> Vec<(&'static str, Value)> {
    md.retain(|(k, _)| *k != key);
    md.push((key, v));
    md
}

fn build(dir: &Path, name: &str, md: &[(&str, Value)]) -> Tokenizer {
    let (path, content) = write_gguf(dir, name, md);
    tokenizer_from_gguf(&content, &path).unwrap()
}

#[test]
fn scores_choose_between_segmentations() {
    let dir = tempfile::tempdir().unwrap();
    let no_prefix = |md| with(md, "tokenizer.ggml.add_space_prefix", Value::Bool(false));
    // "abc" is "ab"+"c" or "a"+"bc": the merge making the better-scored token wins.
    let tok = build(dir.path(), "ab.gguf", &no_prefix(tiny_spm("llama", true)));
    assert_eq!(ids(&tok, "abc", false), vec![AB, C]);
    let tok = build(dir.path(), "bc.gguf", &no_prefix(tiny_spm("llama", false)));
    assert_eq!(ids(&tok, "abc", false), vec![A, BC]);
    assert_eq!(tok.decode(&[A, BC], false).unwrap(), "abc");
    // For Gemma the file order ranks the merges ("ab" is listed before "bc"), not the scores.
    let tok = build(dir.path(), "gemma.gguf", &tiny_spm("gemma3", false));
    assert_eq!(ids(&tok, "abc", false), vec![AB, C]);
}

#[test]
fn byte_fallback_spells_missing_characters_and_decodes_them() {
    let dir = tempfile::tempdir().unwrap();
    let md = with(
        tiny_spm("llama", true),
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(false),
    );
    let tok = build(dir.path(), "bytes.gguf", &md);
    // "é" is U+00E9, UTF-8 C3 A9; "日" is E6 97 A5: none is in the vocabulary.
    assert_eq!(
        ids(&tok, "aé日", false),
        vec![
            A,
            byte_id(0xC3),
            byte_id(0xA9),
            byte_id(0xE6),
            byte_id(0x97),
            byte_id(0xA5)
        ]
    );
    for text in ["aé日", "c\u{1F600}b", "\u{0}\u{7f}"] {
        assert_eq!(tok.decode(&ids(&tok, text, false), false).unwrap(), text);
    }
}

#[test]
fn add_space_prefix_puts_a_space_in_front_and_decoding_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    // No key: a Llama-style vocabulary gets the prefix space, as llama.cpp and transformers do.
    let tok = build(dir.path(), "prefix.gguf", &tiny_spm("llama", true));
    assert_eq!(ids(&tok, "abc", false), vec![SPACE, AB, C]);
    assert_eq!(ids(&tok, "a b", false), vec![SPACE_A, SPACE, B]);
    assert_eq!(tok.decode(&[SPACE, AB, C], false).unwrap(), "abc");
    assert_eq!(
        ids(&tok, "abc", true),
        vec![1, SPACE, AB, C],
        "BOS by default"
    );

    let md = with(
        tiny_spm("llama", true),
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(false),
    );
    let md = with(md, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    let tok = build(dir.path(), "no-prefix.gguf", &md);
    assert_eq!(ids(&tok, "abc", true), vec![AB, C]);
    assert_eq!(ids(&tok, "a b", false), vec![A, SPACE, B]);
    assert_eq!(
        tok.decode(&[SPACE, AB, C], false).unwrap(),
        " abc",
        "no space is taken off"
    );

    // Gemma: no prefix without the key, and its token of two real spaces is reached by merging.
    let tok = build(dir.path(), "gemma-spaces.gguf", &tiny_spm("gemma3", true));
    assert_eq!(ids(&tok, "a  b", false), vec![A, TWO_SPACES, B]);
    assert_eq!(tok.decode(&[A, TWO_SPACES, B], false).unwrap(), "a  b");
    assert_eq!(ids(&tok, "<s>ab</s>", false), vec![1, AB, 2]);
    assert_eq!(tok.decode(&[1, AB, 2], true).unwrap(), "ab");
}

#[test]
fn malformed_scores_are_named_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let short = with(
        tiny_spm("llama", true),
        "tokenizer.ggml.scores",
        Value::Array(vec![Value::F32(0.0); 5]),
    );
    let (path, content) = write_gguf(dir.path(), "short-scores.gguf", &short);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(msg.contains("short-scores.gguf"), "{msg}");
    assert!(
        msg.contains("tokenizer.ggml.scores") && msg.contains("5 entries"),
        "{msg}"
    );

    let mut missing = tiny_spm("llama", true);
    missing.retain(|(k, _)| *k != "tokenizer.ggml.scores");
    let (path, content) = write_gguf(dir.path(), "no-scores.gguf", &missing);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(msg.contains("no-scores.gguf"), "{msg}");
    assert!(msg.contains("tokenizer.ggml.scores"), "{msg}");

    let wrong = with(
        tiny_spm("llama", true),
        "tokenizer.ggml.scores",
        strings(&["x"]),
    );
    let (path, content) = write_gguf(dir.path(), "text-scores.gguf", &wrong);
    let msg = format!("{:#}", tokenizer_from_gguf(&content, &path).unwrap_err());
    assert!(
        msg.contains("text-scores.gguf") && msg.contains("tokenizer.ggml.scores"),
        "{msg}"
    );
}

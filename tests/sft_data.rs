//! The instruction-SFT data pipeline: JSONL loading and error reports, prompt templates,
//! response-only masks with SmolLM2's real tokenizer, truncation, batching, packing, NEFTune,
//! and token statistics of ftlab's own dataset (data/sft/).
//!
//! The SmolLM2 tokenizer comes from `LanguageModel::load_spec("smollm2", ...)`, which fetches
//! the model into the cache when it is missing.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var};
use ftlab::infer::chat_template::ChatMessage;
use ftlab::infer::LanguageModel;
use ftlab::model::load::tokenizer::SpecialTokens;
use ftlab::plan::SteadyRows;
use ftlab::train::data::{
    load_files, load_jsonl, neftune_magnitude, neftune_noise, parse_jsonl, Batch, Batching,
    DataError, DataFormat, Example, PromptTemplate, Record, SftConfig, SftDataset, SftSample,
    SftTokenizer,
};
use tokenizers::Tokenizer;

// ---------------------------------------------------------------------------------------------
// Helpers

fn write_tmp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

fn data_error(e: &anyhow::Error) -> &DataError {
    e.downcast_ref::<DataError>()
        .unwrap_or_else(|| panic!("expected a DataError, got: {e:#}"))
}

struct Smol {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
}

fn smol() -> &'static Smol {
    static S: OnceLock<Smol> = OnceLock::new();
    S.get_or_init(|| {
        let lm = LanguageModel::load_spec("smollm2", &Default::default()).expect("load smollm2");
        Smol {
            tokenizer: lm.tokenizer.clone(),
            special: lm.special.clone(),
            chat_template: lm.chat_template.clone(),
        }
    })
}

fn smol_tok(template: PromptTemplate) -> SftTokenizer {
    let s = smol();
    SftTokenizer::from_parts(
        s.tokenizer.clone(),
        s.special.clone(),
        s.chat_template.as_deref(),
        template,
    )
    .expect("SftTokenizer")
}

fn decode(tok: &SftTokenizer, ids: &[u32]) -> String {
    tok.tokenizer().decode(ids, false).unwrap()
}

/// (decoded masked-in tokens, decoded masked-out tokens) of a sample.
fn split_decode(tok: &SftTokenizer, s: &SftSample) -> (String, String) {
    let inn: Vec<u32> = s
        .input_ids
        .iter()
        .zip(&s.labels_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    let out: Vec<u32> = s
        .input_ids
        .iter()
        .zip(&s.labels_mask)
        .filter(|(_, &m)| m == 0)
        .map(|(&i, _)| i)
        .collect();
    (decode(tok, &inn), decode(tok, &out))
}

/// The masked-in tokens form one contiguous run at the end (single-turn samples).
fn assert_mask_is_suffix(s: &SftSample) {
    let first = s
        .labels_mask
        .iter()
        .position(|&m| m == 1)
        .expect("a response");
    assert!(
        s.labels_mask[first..].iter().all(|&m| m == 1),
        "mask not a suffix: {:?}",
        s.labels_mask
    );
}

fn records(examples: Vec<Example>) -> Vec<Record> {
    examples
        .into_iter()
        .enumerate()
        .map(|(i, e)| Record::in_memory(e, i))
        .collect()
}

fn library_example() -> Example {
    Example::instruction(
        "What time will the library close on Friday, March 14?",
        "The Maple Street Library will close early at 4 p.m. on Friday, March 14, for staff \
         training.",
        "It will close at 4 p.m. for staff training.",
    )
}

// ---------------------------------------------------------------------------------------------
// Loading

#[test]
fn dolly_lines_parse_with_extra_fields() {
    let text = r#"{"instruction": "Q1?", "context": "Some passage.", "response": "A1.", "lang": "en", "category": "closed_qa", "short_answer": "A1"}
{"instruction": "Q2?", "context": "", "response": "A2.", "lang": "ja", "category": "open_qa", "short_answer": "A2"}
"#;
    let recs = parse_jsonl(text, "d.jsonl", DataFormat::Auto).unwrap();
    assert_eq!(recs.len(), 2);
    match &recs[0].example {
        Example::Instruction {
            instruction,
            context,
            response,
            extra,
        } => {
            assert_eq!(instruction, "Q1?");
            assert_eq!(context, "Some passage.");
            assert_eq!(response, "A1.");
            assert_eq!(extra.len(), 3);
        }
        other => panic!("expected an instruction example, got {other:?}"),
    }
    assert_eq!(recs[0].example.short_answer(), Some("A1"));
    assert_eq!(recs[1].example.extra_str("lang"), Some("ja"));
    assert_eq!(recs[1].example.extra_str("category"), Some("open_qa"));
    assert_eq!((recs[1].file.as_str(), recs[1].line), ("d.jsonl", 2));
    assert_eq!(recs[1].origin(), "d.jsonl:2");
}

#[test]
fn alpaca_lines_parse() {
    let text = r#"{"instruction": "Translate to French.", "input": "cat", "output": "chat"}
{"instruction": "Name a colour.", "output": "Blue.", "id": 7}
"#;
    let recs = parse_jsonl(text, "a.jsonl", DataFormat::Auto).unwrap();
    assert_eq!(
        recs[0].example,
        Example::instruction("Translate to French.", "cat", "chat")
    );
    match &recs[1].example {
        Example::Instruction { context, extra, .. } => {
            assert_eq!(context, "", "a missing input is an empty context");
            assert_eq!(extra.get("id"), Some(&serde_json::json!(7)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn chat_lines_parse() {
    let text = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "source": "x"}
{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
"#;
    let recs = parse_jsonl(text, "c.jsonl", DataFormat::Auto).unwrap();
    match &recs[0].example {
        Example::Chat { messages, extra } => {
            assert_eq!(
                messages,
                &vec![
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hi"),
                    ChatMessage::assistant("Hello.")
                ]
            );
            assert_eq!(extra.get("source"), Some(&serde_json::json!("x")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(recs[1].example.response(), "4");
}

#[test]
fn format_is_detected_per_file_and_can_be_forced() {
    let dir = tempfile::tempdir().unwrap();
    let dolly = write_tmp(
        &dir,
        "dolly.jsonl",
        "{\"instruction\": \"i\", \"context\": \"c\", \"response\": \"r\"}\n",
    );
    let alpaca = write_tmp(
        &dir,
        "alpaca.jsonl",
        "{\"instruction\": \"i\", \"input\": \"c\", \"output\": \"r\"}\n",
    );
    let chat = write_tmp(
        &dir,
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
    );
    let recs = load_files(&[&dolly, &alpaca, &chat], DataFormat::Auto).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].example, Example::instruction("i", "c", "r"));
    assert_eq!(recs[1].example, Example::instruction("i", "c", "r"));
    assert!(matches!(recs[2].example, Example::Chat { .. }));

    // Forcing dolly on the alpaca file: each line misses `response`, reported as such.
    let err = load_jsonl(&alpaca, DataFormat::Dolly).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("alpaca.jsonl:1"), "{msg}");
    assert!(msg.contains("missing field `response`"), "{msg}");

    // Names parse.
    assert_eq!("alpaca".parse::<DataFormat>().unwrap(), DataFormat::Alpaca);
    assert_eq!("messages".parse::<DataFormat>().unwrap(), DataFormat::Chat);
    assert!("csv".parse::<DataFormat>().is_err());

    // Fields that fit no format.
    let unknown = write_tmp(
        &dir,
        "unknown.jsonl",
        "{\"question\": \"q\", \"answer\": \"a\"}\n",
    );
    let msg = load_jsonl(&unknown, DataFormat::Auto)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown.jsonl:1"), "{msg}");
    assert!(msg.contains("cannot tell the data format"), "{msg}");
}

#[test]
fn every_bad_line_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"instruction": "i", "context": "", "response": "r"}"#;
    let mut lines = vec![good.to_string(); 8];
    lines[2] = r#"{"instruction": "i", "context": "", "response": "r""#.to_string(); // line 3: bad JSON
    lines[6] = r#"{"instruction": "i", "context": ""}"#.to_string(); // line 7: no response
    let path = write_tmp(&dir, "bad.jsonl", &(lines.join("\n") + "\n"));
    let err = load_jsonl(&path, DataFormat::Auto).unwrap_err();
    let de = data_error(&err);
    assert_eq!(de.problems.len(), 2, "{err}");
    assert_eq!(de.problems[0].line, Some(3));
    assert_eq!(de.problems[1].line, Some(7));
    let msg = err.to_string();
    let file = path.display().to_string();
    assert!(msg.contains(&format!("{file}:3: not valid JSON")), "{msg}");
    assert!(
        msg.contains(&format!("{file}:7: missing field `response`")),
        "{msg}"
    );
    // It says what was expected.
    assert!(msg.contains(r#""response": string"#), "{msg}");
}

#[test]
fn wrong_types_empty_responses_and_unknown_roles_are_reported() {
    let text = [
        r#"{"instruction": "i", "context": 5, "response": "r"}"#,
        r#"{"instruction": "i", "context": "", "response": "  "}"#,
        r#"[1, 2]"#,
        r#"{"instruction": "i", "context": "", "response": "ok"}"#,
    ]
    .join("\n");
    let err = parse_jsonl(&text, "t.jsonl", DataFormat::Auto).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("t.jsonl:1: field `context` should be a string, found a number"),
        "{msg}"
    );
    assert!(msg.contains("t.jsonl:2: `response` is empty"), "{msg}");
    assert!(
        msg.contains("t.jsonl:3: expected a JSON object, found an array"),
        "{msg}"
    );
    assert_eq!(data_error(&err).problems.len(), 3);

    let chat = [
        r#"{"messages": [{"role": "user", "content": "u"}, {"role": "bot", "content": "a"}]}"#,
        r#"{"messages": [{"role": "user", "content": "u"}]}"#,
        r#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}"#,
        r#"{"messages": "hi"}"#,
    ]
    .join("\n");
    let err = parse_jsonl(&chat, "c.jsonl", DataFormat::Chat).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("c.jsonl:1: messages[1].role is \"bot\""),
        "{msg}"
    );
    assert!(
        msg.contains("c.jsonl:2: the last message is from \"user\""),
        "{msg}"
    );
    assert!(
        msg.contains("c.jsonl:3: messages[0]: missing field `content`"),
        "{msg}"
    );
    assert!(
        msg.contains("c.jsonl:4: field `messages` should be an array, found a string"),
        "{msg}"
    );
}

#[test]
fn empty_files_and_long_problem_lists() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_tmp(&dir, "empty.jsonl", "\n  \n");
    let msg = load_jsonl(&empty, DataFormat::Auto)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("empty.jsonl: the file has no examples"),
        "{msg}"
    );

    let missing = dir.path().join("nope.jsonl");
    let msg = load_jsonl(&missing, DataFormat::Auto)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.jsonl: cannot read the file"), "{msg}");

    // 30 bad lines: all are collected, 20 are listed.
    let text = "{\"instruction\": \"i\", \"response\": \"\"}\n".repeat(30);
    let err = parse_jsonl(&text, "many.jsonl", DataFormat::Dolly).unwrap_err();
    assert_eq!(data_error(&err).problems.len(), 30);
    let msg = err.to_string();
    assert!(
        msg.starts_with("30 problems loading training data:"),
        "{msg}"
    );
    assert!(msg.contains("many.jsonl:20:"), "{msg}");
    assert!(!msg.contains("many.jsonl:21:"), "{msg}");
    assert!(msg.contains("... and 10 more"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Templates and masks (SmolLM2's real tokenizer)

#[test]
fn chat_template_masks_cover_exactly_the_response_and_end_of_turn() {
    let tok = smol_tok(PromptTemplate::Chat);
    let ex = library_example();
    let recs = records(vec![ex.clone()]);
    let ds = SftDataset::build(&recs, &tok, &SftConfig::default()).unwrap();
    let s = &ds.samples()[0];
    assert_mask_is_suffix(s);
    let (inn, out) = split_decode(&tok, s);
    assert_eq!(inn, "It will close at 4 p.m. for staff training.<|im_end|>");

    // The prompt is what the model's chat template renders with add_generation_prompt.
    let Example::Instruction {
        instruction,
        context,
        ..
    } = &ex
    else {
        unreachable!()
    };
    let user = format!("{instruction}\n\nContext:\n{context}");
    let smol = smol();
    let ct = ftlab::infer::chat_template::ChatTemplate::new(
        smol.chat_template.as_deref().unwrap(),
        "",
        "<|im_end|>",
    )
    .unwrap();
    let prompt = ct.render(&[ChatMessage::user(user)], true).unwrap();
    assert_eq!(out, prompt);
    assert_eq!(tok.prompt_text(&ex).unwrap(), prompt);
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    // The prompt tokens are those of the prompt alone (what generation sees).
    let n_prompt = s.labels_mask.iter().filter(|&&m| m == 0).count();
    assert_eq!(
        &s.input_ids[..n_prompt],
        tok.prompt_ids(&ex).unwrap().as_slice()
    );
    // The last token is the end-of-turn token, counted.
    let im_end = tok.tokenizer().token_to_id("<|im_end|>").unwrap();
    assert_eq!(*s.input_ids.last().unwrap(), im_end);
    assert_eq!(*s.labels_mask.last().unwrap(), 1);
    assert!(smol.special.is_eos(im_end));
    assert_eq!(ds.stats().boundary_merges, 0);
}

#[test]
fn chat_template_system_prompt_and_multi_turn() {
    let tok = smol_tok(PromptTemplate::Chat).with_system_prompt(Some("Answer briefly.".into()));
    let ex = Example::instruction("Name a fruit.", "", "An apple.");
    let t = tok.tokenize(&ex).unwrap();
    let s = SftSample {
        labels_mask: t.response_mask.clone(),
        input_ids: t.input_ids.clone(),
        example_index: 0,
        full_len: t.input_ids.len(),
        truncated: false,
    };
    let (inn, out) = split_decode(&tok, &s);
    assert_eq!(inn, "An apple.<|im_end|>");
    assert_eq!(
        out,
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"
    );

    // Two assistant turns: both are trained on, the user turns are not.
    let tok = smol_tok(PromptTemplate::Chat);
    let ex = Example::chat(vec![
        ChatMessage::user("1+1?"),
        ChatMessage::assistant("2"),
        ChatMessage::user("2+2?"),
        ChatMessage::assistant("4"),
    ]);
    let t = tok.tokenize(&ex).unwrap();
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut prev = 0;
    for (&id, &m) in t.input_ids.iter().zip(&t.response_mask) {
        if m == 1 {
            if prev == 0 {
                runs.push(Vec::new());
            }
            runs.last_mut().unwrap().push(id);
        }
        prev = m;
    }
    let runs: Vec<String> = runs.iter().map(|r| decode(&tok, r)).collect();
    assert_eq!(runs, vec!["2<|im_end|>", "4<|im_end|>"]);
    let all = decode(&tok, &t.input_ids);
    assert!(all.contains("<|im_start|>user\n2+2?<|im_end|>"), "{all}");
    assert!(all.ends_with("<|im_start|>assistant\n4<|im_end|>"), "{all}");
}

#[test]
fn plain_ja_template_and_eos() {
    let tok = smol_tok(PromptTemplate::PlainJa);
    let ex = Example::instruction(
        "図書館は何時に閉まりますか。",
        "図書館は午後4時に閉まります。",
        "午後4時です。",
    );
    assert_eq!(
        tok.prompt_text(&ex).unwrap(),
        "### 指示:\n図書館は何時に閉まりますか。\n\n### 入力:\n図書館は午後4時に閉まります。\n\n### 回答:\n"
    );
    let ds = SftDataset::build(&records(vec![ex]), &tok, &SftConfig::default()).unwrap();
    let s = &ds.samples()[0];
    assert_mask_is_suffix(s);
    let (inn, out) = split_decode(&tok, s);
    let eos_text = tok.tokenizer().id_to_token(tok.eos_id()).unwrap();
    assert_eq!(inn, format!("午後4時です。{eos_text}"));
    assert!(out.ends_with("### 回答:\n"), "{out:?}");
    assert_eq!(*s.input_ids.last().unwrap(), tok.eos_id());

    // No context: no 入力 section.
    let ex = Example::instruction("日本の首都はどこですか。", "", "東京です。");
    assert_eq!(
        tok.prompt_text(&ex).unwrap(),
        "### 指示:\n日本の首都はどこですか。\n\n### 回答:\n"
    );

    let tok = smol_tok(PromptTemplate::PlainEn);
    assert_eq!(
        tok.prompt_text(&library_example()).unwrap(),
        "### Instruction:\nWhat time will the library close on Friday, March 14?\n\n### Input:\n\
         The Maple Street Library will close early at 4 p.m. on Friday, March 14, for staff \
         training.\n\n### Response:\n"
    );
}

#[test]
fn custom_template_splits_at_the_response() {
    let tmpl = "Q: {{ instruction }}{% if input %} ({{ input }}){% endif %} [{{ lang }}]\nA: {{ response }}\n";
    let tok = smol_tok(tmpl.parse::<PromptTemplate>().unwrap());
    assert!(matches!(tok.template(), PromptTemplate::Custom(_)));
    let mut ex = Example::instruction("Capital of France?", "geography", "Paris.");
    if let Example::Instruction { extra, .. } = &mut ex {
        extra.insert("lang".into(), serde_json::json!("en"));
    }
    assert_eq!(
        tok.prompt_text(&ex).unwrap(),
        "Q: Capital of France? (geography) [en]\nA: "
    );
    let t = tok.tokenize(&ex).unwrap();
    let inn: Vec<u32> = t
        .input_ids
        .iter()
        .zip(&t.response_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    let eos_text = tok.tokenizer().id_to_token(tok.eos_id()).unwrap();
    // "A: " + "Paris." tokenises with " Paris" as one token: the token spanning the boundary
    // is counted as response, and the sample is flagged.
    assert!(t.boundary_merge);
    assert_eq!(decode(&tok, &inn), format!(" Paris.\n{eos_text}"));
    // With the response on a line of its own the split is exact.
    let tok = smol_tok(PromptTemplate::Custom(
        "Q: {{ instruction }}\nA:\n{{ response }}".into(),
    ));
    let t = tok.tokenize(&ex).unwrap();
    assert!(!t.boundary_merge);
    let inn: Vec<u32> = t
        .input_ids
        .iter()
        .zip(&t.response_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(decode(&tok, &inn), format!("Paris.{eos_text}"));

    // A misspelt variable is an error naming the file and line, collected before training.
    let bad = smol_tok(PromptTemplate::Custom(
        "{{ instrucion }} {{ response }}".into(),
    ));
    let err = SftDataset::build(&records(vec![ex]), &bad, &SftConfig::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("<memory>:1:"), "{msg}");
    assert!(msg.contains("undefined"), "{msg}");

    // A syntax error is reported when the template is compiled.
    let s = smol();
    let err = SftTokenizer::from_parts(
        s.tokenizer.clone(),
        s.special.clone(),
        None,
        PromptTemplate::Custom("{% if %}".into()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    assert!("plain-ja".parse::<PromptTemplate>().unwrap() == PromptTemplate::PlainJa);
    assert!("nonsense".parse::<PromptTemplate>().is_err());
}

#[test]
fn truncation_keeps_the_prompt_and_drops_responseless_samples() {
    let tok = smol_tok(PromptTemplate::Chat);
    let long = Example::instruction(
        "Summarize.",
        "",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    );
    let full = tok.tokenize(&long).unwrap();
    let prompt_len = full.response_mask.iter().filter(|&&m| m == 0).count();
    let cfg = SftConfig {
        max_seq_len: prompt_len + 3,
        ..Default::default()
    };
    // A second example whose prompt alone is longer than max_seq_len.
    let huge = Example::instruction("word ".repeat(200), "", "ok");
    let recs = records(vec![long.clone(), huge, library_example()]);
    let mut recs_cut = recs.clone();
    recs_cut.truncate(2);
    let ds = SftDataset::build(&recs_cut, &tok, &cfg).unwrap();
    let st = ds.stats();
    assert_eq!(
        (st.examples, st.kept, st.dropped, st.truncated),
        (2, 1, 1, 1)
    );
    assert_eq!(st.warnings.len(), 1);
    assert!(
        st.warnings[0].starts_with("<memory>:2: dropped"),
        "{:?}",
        st.warnings
    );
    let s = &ds.samples()[0];
    assert_eq!(s.len(), prompt_len + 3);
    assert!(s.truncated);
    assert_eq!(s.full_len, full.input_ids.len());
    assert_eq!(&s.input_ids[..], &full.input_ids[..prompt_len + 3]);
    assert_eq!(&s.labels_mask[..prompt_len], &vec![0u8; prompt_len][..]);
    assert_eq!(&s.labels_mask[prompt_len..], &[1, 1, 1]);
    let (inn, _) = split_decode(&tok, s);
    assert!(
        "one two three".starts_with(&inn) && !inn.is_empty(),
        "{inn:?}"
    );
    assert!(st.to_string().contains("1 dropped"), "{st}");

    // Every sample dropped: an error, not an empty dataset.
    let cfg = SftConfig {
        max_seq_len: 8,
        ..Default::default()
    };
    assert!(SftDataset::build(&recs, &tok, &cfg).is_err());

    // response_only = false: every token counts, truncation rules unchanged.
    let cfg = SftConfig {
        response_only: false,
        ..Default::default()
    };
    let ds = SftDataset::build(&recs, &tok, &cfg).unwrap();
    for s in ds.samples() {
        assert!(s.labels_mask.iter().all(|&m| m == 1));
    }
    assert_eq!(
        ds.stats().response_tokens,
        ds.stats().total_tokens - ds.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Batching

fn synthetic(lens: &[usize]) -> Vec<SftSample> {
    lens.iter()
        .enumerate()
        .map(|(k, &n)| SftSample {
            input_ids: (0..n as u32).map(|i| 1000 * (k as u32 + 1) + i).collect(),
            // first half prompt, second half response
            labels_mask: (0..n).map(|i| u8::from(i >= n / 2)).collect(),
            example_index: k,
            full_len: n,
            truncated: false,
        })
        .collect()
}

#[test]
fn batch_targets_are_inputs_shifted_and_padding_is_masked() {
    let pad = 7;
    let samples = synthetic(&[5, 3, 8]);
    let ds = SftDataset::from_samples(samples.clone(), pad, &SftConfig::default()).unwrap();
    let b = ds.make_batch(&[0, 1, 2]).unwrap();
    assert_eq!(b.shape(), (3, 8));
    assert_eq!(b.input_ids.dtype(), DType::U32);
    assert_eq!(b.targets.dims(), &[3 * 7]);
    assert_eq!(b.loss_mask.dtype(), DType::F32);
    let input: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
    let targets: Vec<u32> = b.targets.to_vec1().unwrap();
    let mask: Vec<f32> = b.loss_mask.to_vec1().unwrap();
    let mut counted = 0;
    for (r, s) in samples.iter().enumerate() {
        let n = s.len();
        assert_eq!(&input[r][..n], &s.input_ids[..]);
        assert!(input[r][n..].iter().all(|&x| x == pad));
        for i in 0..7 {
            let t = targets[r * 7 + i];
            let m = mask[r * 7 + i];
            if i + 1 < n {
                assert_eq!(t, input[r][i + 1], "target = next input");
                assert_eq!(m, f32::from(s.labels_mask[i + 1]));
                counted += s.labels_mask[i + 1] as usize;
            } else {
                assert_eq!(m, 0.0, "padding is masked");
            }
        }
    }
    assert_eq!(b.tokens, counted);
    assert_eq!(mask.iter().sum::<f32>() as usize, counted);
}

#[test]
fn batches_are_deterministic_per_seed_and_epoch() {
    let lens: Vec<usize> = (0..40).map(|i| 4 + (i * 7) % 23).collect();
    let ds = SftDataset::from_samples(synthetic(&lens), 0, &SftConfig::default()).unwrap();
    assert_eq!(ds.len(), 40);
    assert_eq!(ds.num_batches(6), 7);
    let plan = |e, s| ds.batch_plan(e, 6, s);
    assert_eq!(plan(0, 1), plan(0, 1));
    assert_ne!(plan(0, 1), plan(1, 1));
    assert_ne!(plan(0, 1), plan(0, 2));
    let mut all: Vec<usize> = plan(3, 9).concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..40).collect::<Vec<_>>(),
        "each sample once per epoch"
    );
    let batches = ds.batches(0, 6, 1).unwrap();
    assert_eq!(batches.len(), 7);
    let again = ds.batches(0, 6, 1).unwrap();
    for (a, b) in batches.iter().zip(&again) {
        assert_eq!(
            a.input_ids.to_vec2::<u32>().unwrap(),
            b.input_ids.to_vec2::<u32>().unwrap()
        );
    }
    assert!(ds.batches(0, 0, 1).is_err());
}

/// Mean over batches of (padded tokens / real tokens).
fn padding_ratio(ds: &SftDataset, batch_size: usize, seed: u64) -> f64 {
    let plan = ds.batch_plan(0, batch_size, seed);
    let mut pad = 0usize;
    let mut real = 0usize;
    for b in &plan {
        let lens: Vec<usize> = b.iter().map(|&i| ds.samples()[i].len()).collect();
        let max = *lens.iter().max().unwrap();
        pad += lens.iter().map(|l| max - l).sum::<usize>();
        real += lens.iter().sum::<usize>();
    }
    pad as f64 / real as f64
}

#[test]
fn group_by_length_batches_have_similar_lengths() {
    let lens: Vec<usize> = (0..400).map(|i| 10 + (i * 37) % 200).collect();
    let mk = |batching| {
        SftDataset::from_samples(
            synthetic(&lens),
            0,
            &SftConfig {
                batching,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let grouped = mk(Batching::GroupByLength);
    let shuffled = mk(Batching::Shuffled);
    let (g, s) = (
        padding_ratio(&grouped, 8, 3),
        padding_ratio(&shuffled, 8, 3),
    );
    eprintln!("padding / real tokens: grouped {g:.3}, shuffled {s:.3}");
    assert!(g < s / 5.0, "grouped {g} vs shuffled {s}");
    // The first batch holds the longest sample.
    let plan = grouped.batch_plan(0, 8, 3);
    let longest = (0..400).max_by_key(|&i| lens[i]).unwrap();
    assert!(
        plan[0].iter().any(|&i| lens[i] == lens[longest]),
        "{:?}",
        plan[0]
    );
    let mut all = plan.concat();
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
    assert_ne!(grouped.batch_plan(0, 8, 3), grouped.batch_plan(1, 8, 3));
}

#[test]
fn packing_fills_rows() {
    let lens = [5usize, 9, 3, 12, 7, 6];
    let total: usize = lens.iter().sum(); // 42
    let cfg = SftConfig {
        max_seq_len: 8,
        batching: Batching::Packed,
        ..Default::default()
    };
    let samples = synthetic(&lens);
    let ds = SftDataset::from_samples(samples.clone(), 0, &cfg).unwrap();
    assert_eq!(ds.len(), total.div_ceil(8)); // 6 rows: 5 full, one of 2
    let rows = ds.packed_rows(0, 5);
    assert_eq!(rows.len(), 6);
    for (ids, _) in &rows[..5] {
        assert_eq!(ids.len(), 8, "rows are full");
    }
    assert_eq!(rows[5].0.len(), total - 40);
    // The stream is every sample, whole and in some order.
    let stream: Vec<u32> = rows.iter().flat_map(|(ids, _)| ids.clone()).collect();
    assert_eq!(stream.len(), total);
    let mut sorted = stream.clone();
    sorted.sort_unstable();
    let mut expect: Vec<u32> = samples.iter().flat_map(|s| s.input_ids.clone()).collect();
    expect.sort_unstable();
    assert_eq!(sorted, expect);
    // Masks travel with their tokens.
    let labels: Vec<u8> = rows.iter().flat_map(|(_, m)| m.clone()).collect();
    for (id, m) in stream.iter().zip(&labels) {
        let s = &samples[(id / 1000 - 1) as usize];
        let pos = (id % 1000) as usize;
        assert_eq!(*m, s.labels_mask[pos]);
    }
    let batches = ds.batches(0, 4, 5).unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].shape(), (4, 8));
    assert_eq!(batches[1].shape(), (2, 8));
    let mask: Vec<f32> = batches[1].loss_mask.to_vec1().unwrap();
    // Row 2 of the last batch has 2 tokens: one target, then padding (masked).
    assert!(mask[7 + 1..].iter().all(|&m| m == 0.0));
    assert_eq!(ds.batch_plan(0, 4, 5), vec![vec![0, 1, 2, 3], vec![4, 5]]);
}

// ---------------------------------------------------------------------------------------------
// NEFTune

#[test]
fn neftune_noise_is_bounded_centred_and_free_at_zero() {
    let dev = Device::Cpu;
    let (b, t, d) = (4, 32, 64);
    let embeds = Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
    let alpha = 5.0;
    let noisy = neftune_noise(&embeds, alpha, 42).unwrap();
    let noise: Vec<f32> = (&noisy - &embeds)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mag = neftune_magnitude(alpha, t, d);
    assert!((mag - 5.0 / (32.0f64 * 64.0).sqrt()).abs() < 1e-12);
    let max = noise.iter().fold(0f32, |m, &x| m.max(x.abs())) as f64;
    assert!(max <= mag * (1.0 + 1e-5), "max {max} > bound {mag}");
    assert!(
        max > mag * 0.95,
        "noise uses its range: max {max}, bound {mag}"
    );
    let mean = noise.iter().map(|&x| x as f64).sum::<f64>() / noise.len() as f64;
    // Uniform on ±mag: std of the mean = mag / sqrt(3 n).
    let se = mag / (3.0 * noise.len() as f64).sqrt();
    assert!(mean.abs() < 5.0 * se, "mean {mean}, se {se}");
    let var = noise.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / noise.len() as f64;
    assert!(
        (var / (mag * mag / 3.0) - 1.0).abs() < 0.05,
        "variance {var}"
    );

    // Seeded: the same seed gives the same noise, another seed another.
    let again = neftune_noise(&embeds, alpha, 42).unwrap();
    let other = neftune_noise(&embeds, alpha, 43).unwrap();
    let v = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&noisy), v(&again));
    assert_ne!(v(&noisy), v(&other));

    // alpha = 0: the embeddings themselves.
    let same = neftune_noise(&embeds, 0.0, 1).unwrap();
    assert_eq!(v(&same), v(&embeds));
    assert!(neftune_noise(&embeds, -1.0, 1).is_err());

    // Differentiable: the gradient passes through unchanged.
    let var = Var::from_tensor(&embeds).unwrap();
    let out = neftune_noise(var.as_tensor(), alpha, 7).unwrap();
    let loss = (out.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("a gradient for the embeddings");
    assert_eq!(v(g), v(&out), "d(0.5·Σ out²)/d embeds = out");

    // Other dtypes keep theirs.
    let bf = embeds.to_dtype(DType::BF16).unwrap();
    assert_eq!(neftune_noise(&bf, alpha, 1).unwrap().dtype(), DType::BF16);
}

// ---------------------------------------------------------------------------------------------
// ftlab's own dataset

#[test]
fn ftlab_sft_dataset_token_statistics() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sft");
    let train = load_jsonl(root.join("train.jsonl"), DataFormat::Auto).unwrap();
    let heldout = load_jsonl(root.join("heldout.jsonl"), DataFormat::Auto).unwrap();
    assert_eq!(train.len(), 498);
    assert_eq!(heldout.len(), 104);
    for r in train.iter().chain(&heldout) {
        assert!(matches!(r.example, Example::Instruction { .. }));
        let sa = r.example.short_answer().expect("short_answer");
        assert!(r.example.response().contains(sa), "{}", r.origin());
        assert!(matches!(r.example.extra_str("lang"), Some("en" | "ja")));
        assert!(r.example.extra_str("category").is_some());
    }

    let cfg = SftConfig {
        max_seq_len: 256,
        ..Default::default()
    };
    for template in [PromptTemplate::Chat, PromptTemplate::PlainJa] {
        let tok = smol_tok(template.clone());
        for (name, recs) in [("train", &train), ("heldout", &heldout)] {
            let ds = SftDataset::build(recs, &tok, &cfg).unwrap();
            let st = ds.stats();
            println!(
                "data/sft/{name}.jsonl, {} template, SmolLM2 tokenizer: {st}",
                template.name()
            );
            for w in &st.warnings {
                println!("  {w}");
            }
            for lang in ["en", "ja"] {
                let lens: Vec<usize> = ds
                    .samples()
                    .iter()
                    .filter(|s| recs[s.example_index].example.extra_str("lang") == Some(lang))
                    .map(|s| s.full_len)
                    .collect();
                let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
                println!(
                    "  {lang}: {} samples, mean {mean:.1} tokens, max {}",
                    lens.len(),
                    lens.iter().max().unwrap()
                );
            }
            assert_eq!(st.kept + st.dropped, recs.len());
            assert_eq!(st.kept, ds.len());
            assert!(
                st.kept * 10 >= recs.len() * 9,
                "most examples fit 256 tokens"
            );
            assert!(st.max_len >= st.p95_len && st.p95_len as f64 >= st.mean_len);
            assert!(ds.samples().iter().all(|s| s.len() <= 256));
            assert_eq!(st.boundary_merges, 0);
            let batches = ds.batches(0, 8, 0).unwrap();
            assert_eq!(batches.len(), ds.num_batches(8));
            let counted: usize = batches.iter().map(|b| b.tokens).sum();
            assert_eq!(counted, st.response_tokens);
        }
    }
}

#[test]
fn languages_keep_only_their_examples_and_an_empty_result_names_the_file() {
    let text = r#"{"instruction": "a", "response": "b", "lang": "en"}
{"instruction": "い", "response": "ろ", "lang": "ja"}
{"instruction": "c", "response": "d"}
{"instruction": "は", "response": "に", "lang": "ja"}
"#;
    let records = parse_jsonl(text, "mixed.jsonl", DataFormat::Auto).unwrap();
    let path = std::path::Path::new("mixed.jsonl");
    let all = ftlab::train::data::keep_languages(records.clone(), &[], path).unwrap();
    assert_eq!(all.len(), 4);
    let ja = ftlab::train::data::keep_languages(records.clone(), &["ja".into()], path).unwrap();
    assert_eq!(ja.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 4]);
    let err = ftlab::train::data::keep_languages(records, &["de".into()], path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mixed.jsonl") && err.contains("\"de\"") && err.contains("en, ja"),
        "{err}"
    );
}

#[test]
fn micro_batches_hold_exactly_the_rows_of_their_batch_in_every_batching() {
    // Rows as the model sees them: each row's ids without its padding (pad 0 is no id here).
    let rows = |b: &Batch| -> Vec<Vec<u32>> {
        b.input_ids
            .to_vec2::<u32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().filter(|&x| x != 0).collect())
            .collect()
    };
    let lens: Vec<usize> = (0..30).map(|i| 4 + (i * 7) % 23).collect();
    for batching in [
        Batching::Shuffled,
        Batching::GroupByLength,
        Batching::Packed,
    ] {
        let cfg = SftConfig {
            max_seq_len: 16,
            batching,
            ..Default::default()
        };
        let ds = SftDataset::from_samples(synthetic(&lens), 0, &cfg).unwrap();
        let whole = ds.batches(1, 6, 3).unwrap();
        let split = ds.split_batches(1, 6, 2, 3).unwrap();
        assert_eq!(
            split.len(),
            whole.len(),
            "{batching:?}: one group per batch"
        );
        for (w, micro) in whole.iter().zip(&split) {
            assert!(micro.iter().all(|m| m.shape().0 <= 2), "{batching:?}");
            let joined: Vec<Vec<u32>> = micro.iter().flat_map(&rows).collect();
            assert_eq!(joined, rows(w), "{batching:?}: the batch's rows, in order");
            let tokens: usize = micro.iter().map(|m| m.tokens).sum();
            assert_eq!(tokens, w.tokens, "{batching:?}: the same counted targets");
        }
    }
}

/// The memory plan's row lengths walk the micro-batches the run takes: the first
/// micro-batch of each optimiser step (no accumulated gradients alive), the later ones, and
/// evaluation — read here from `batch_plan`, a separate path from the plan's.
#[test]
fn plan_row_lengths_follow_the_runs_micro_batches() {
    use ftlab::config::RunConfig;
    use ftlab::train::setup::row_lengths;
    use ftlab::train::sft_task::SftData;
    let lens: Vec<usize> = (0..40).map(|i| 4 + (i * 7) % 23).collect();
    let longest = *lens.iter().max().unwrap();
    let grouped = SftConfig {
        batching: Batching::GroupByLength,
        max_seq_len: 64,
        ..SftConfig::default()
    };
    let train = SftDataset::from_samples(synthetic(&lens), 0, &grouped).unwrap();
    let eval_lens = [5, 9, 7];
    let eval = SftDataset::from_samples(synthetic(&eval_lens), 0, &SftConfig::default()).unwrap();
    let run = |train: &str| {
        RunConfig::from_toml_str(&format!(
            "name = \"t\"\n[model]\nspec = \"smollm2\"\n[data]\ntrain = \"x.jsonl\"\n[train]\nlr = 1e-4\nseed = 3\n{train}"
        ))
        .unwrap()
    };
    let data = SftData {
        train: train.clone(),
        eval: Some(eval),
    };
    let max_of = |idx: &[usize]| idx.iter().map(|&i| lens[i]).max().unwrap();
    let plan = train.batch_plan(0, 4, 3);

    // One batch per step: the longest batch comes first (group by length); nothing later.
    let r = row_lengths(&run("batch_size = 4\nmax_steps = 1"), &data).unwrap();
    assert_eq!((r.first, r.later, r.eval), (longest, 0, 9));
    assert_eq!(r.steady, SteadyRows::default());
    assert_eq!(max_of(&plan[0]), longest);

    // Three steps: the steps after the first (run with the optimiser's state) start with
    // the second and third batches.
    let r = row_lengths(&run("batch_size = 4\nmax_steps = 3"), &data).unwrap();
    assert_eq!(
        (r.first, r.steady.first, r.steady.later),
        (longest, max_of(&plan[1]).max(max_of(&plan[2])), 0)
    );

    // Two batches per step: the second batch runs with the first one's gradients alive.
    let r = row_lengths(&run("batch_size = 4\ngrad_accum = 2\nmax_steps = 1"), &data).unwrap();
    assert_eq!((r.first, r.later), (longest, max_of(&plan[1])));
    assert_eq!(r.steady, SteadyRows::default());

    // Two steps of two batches: the second step starts with the third batch and
    // accumulates the fourth.
    let r = row_lengths(&run("batch_size = 4\ngrad_accum = 2\nmax_steps = 2"), &data).unwrap();
    assert_eq!(
        (r.steady.first, r.steady.later),
        (max_of(&plan[2]), max_of(&plan[3]))
    );

    // Micro-batches of 2: each batch is split; its second half is a later micro-batch.
    let r = row_lengths(
        &run("batch_size = 4\nmicro_batch_size = 2\nmax_steps = 1"),
        &data,
    )
    .unwrap();
    assert_eq!(
        (r.first, r.later),
        (max_of(&plan[0][..2]), max_of(&plan[0][2..]))
    );

    // A whole epoch meets every sample.
    let r = row_lengths(
        &run("batch_size = 4\ngrad_accum = 2\nepochs = 1\nmax_steps = 0"),
        &data,
    )
    .unwrap();
    assert_eq!(r.first.max(r.later), longest);

    // Packed rows are max_seq_len long.
    let packed = SftConfig {
        batching: Batching::Packed,
        max_seq_len: 16,
        ..SftConfig::default()
    };
    let data = SftData {
        train: SftDataset::from_samples(synthetic(&lens), 0, &packed).unwrap(),
        eval: None,
    };
    let r = row_lengths(
        &run("batch_size = 2\nmicro_batch_size = 1\nmax_steps = 1"),
        &data,
    )
    .unwrap();
    assert_eq!((r.first, r.later, r.eval), (16, 16, 0));
}

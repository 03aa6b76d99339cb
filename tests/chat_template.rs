//! Chat templates rendered by ftlab against transformers' `apply_chat_template` output
//! (tests/fixtures/smollm2_tok/chat_cases.json, from scripts/reference/tokenizer_cases.py).

use ftlab::infer::chat_template::{ChatMessage, ChatTemplate, FALLBACK_CHAT_TEMPLATE};
use serde::Deserialize;

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct ExtraCase {
    name: String,
    template: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct RaiseCase {
    template: String,
    messages: Vec<ChatMessage>,
    message: String,
}

#[derive(Deserialize)]
struct ChatFixture {
    chat_template: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<ChatCase>,
    extra_template_cases: Vec<ExtraCase>,
    raise_exception_case: RaiseCase,
}

fn fixture() -> ChatFixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_tok/chat_cases.json"
    );
    let text = std::fs::read_to_string(path).expect("read chat_cases.json");
    serde_json::from_str(&text).expect("parse chat_cases.json")
}

#[test]
fn smollm2_template_matches_transformers() {
    let fx = fixture();
    let tmpl = ChatTemplate::new(&fx.chat_template, &fx.bos_token, &fx.eos_token).unwrap();
    assert_eq!(fx.cases.len(), 8);
    for case in &fx.cases {
        let got = tmpl
            .render(&case.messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(
            got, case.rendered,
            "messages {:?}, add_generation_prompt {}",
            case.messages, case.add_generation_prompt
        );
    }
}

#[test]
fn generation_prompt_is_the_only_difference() {
    let fx = fixture();
    let tmpl = ChatTemplate::new(&fx.chat_template, &fx.bos_token, &fx.eos_token).unwrap();
    let msgs = [ChatMessage::user("Hi")];
    let with = tmpl.render(&msgs, true).unwrap();
    let without = tmpl.render(&msgs, false).unwrap();
    assert_eq!(with, format!("{without}<|im_start|>assistant\n"));
    // The default system prompt comes from the model's template, not from ftlab.
    assert!(without.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
}

#[test]
fn template_features_match_transformers() {
    let fx = fixture();
    assert!(!fx.extra_template_cases.is_empty());
    let mut failures = Vec::new();
    for case in &fx.extra_template_cases {
        let tmpl = ChatTemplate::new(&case.template, &fx.bos_token, &fx.eos_token)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        match tmpl.render(&case.messages, case.add_generation_prompt) {
            Ok(got) if got == case.rendered => {}
            Ok(got) => failures.push(format!(
                "{} (agp {}):\n  want {:?}\n  got  {:?}",
                case.name, case.add_generation_prompt, case.rendered, got
            )),
            Err(e) => failures.push(format!("{}: error {e:#}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn syntax_error_is_reported_clearly() {
    let err = ChatTemplate::new(
        "{% for message in messages %}{{ message['content'] }}",
        "<s>",
        "</s>",
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("chat template has a syntax error"), "{msg}");
    assert!(msg.contains("line 1") || msg.contains(":1"), "{msg}");

    let err = ChatTemplate::new("{{ messages[0]['content'] }", "<s>", "</s>").unwrap_err();
    assert!(format!("{err:#}").contains("syntax error"), "{err:#}");
}

#[test]
fn raise_exception_surfaces_its_message() {
    let fx = fixture();
    let case = &fx.raise_exception_case;
    let tmpl = ChatTemplate::new(&case.template, "<s>", "</s>").unwrap();
    let err = tmpl.render(&case.messages, false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("raised an exception"), "{msg}");
    assert!(
        msg.contains(&case.message),
        "{msg} lacks {:?}",
        case.message
    );
    // Valid roles render.
    let ok = tmpl
        .render(
            &[ChatMessage::user("a"), ChatMessage::assistant("b")],
            false,
        )
        .unwrap();
    assert_eq!(ok, "ab");
}

#[test]
fn render_error_names_the_problem() {
    let tmpl = ChatTemplate::new("{{ messages[0].content.nope() }}", "<s>", "</s>").unwrap();
    let err = tmpl.render(&[ChatMessage::user("x")], false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("chat template failed to render"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn bos_and_eos_tokens_are_variables() {
    let tmpl = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
        "<s>",
        "</s>",
    )
    .unwrap();
    let out = tmpl
        .render(
            &[ChatMessage::user("a"), ChatMessage::assistant("b")],
            false,
        )
        .unwrap();
    assert_eq!(out, "<s>a</s>b</s>");
}

#[test]
fn strftime_now_is_available() {
    let tmpl = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
    let year: i32 = tmpl.render(&[], false).unwrap().parse().unwrap();
    assert!((2024..3000).contains(&year));
}

#[test]
fn fallback_template_is_plain() {
    let tmpl = ChatTemplate::fallback("<s>", "</s>").unwrap();
    let msgs = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello."),
        ChatMessage::user("Bye"),
    ];
    assert_eq!(
        tmpl.render(&msgs, true).unwrap(),
        "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
    );
    assert_eq!(tmpl.render(&msgs[1..2], false).unwrap(), "User: Hi\n\n");
    assert!(!FALLBACK_CHAT_TEMPLATE.contains("im_start"));
}

#[test]
fn chat_message_serde_round_trip() {
    let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"こんにちは"}"#).unwrap();
    assert_eq!(m, ChatMessage::user("こんにちは"));
    let back = serde_json::to_string(&m).unwrap();
    assert_eq!(back, r#"{"role":"user","content":"こんにちは"}"#);
}

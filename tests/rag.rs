//! Retrieval-augmented generation: the recursive splitter (sizes, overlaps, nothing lost or
//! duplicated, English and Japanese), prompt templates, document folders, retrieval with
//! the real all-MiniLM-L6-v2 on ftlab's documents, and an answer streamed from SmolLM2.
mod common;
use common::repo;
use std::path::Path;
use std::sync::OnceLock;

use ftlab::infer::corpus::{chunk_documents, load_documents};
use ftlab::infer::embed::Embedder;
use ftlab::infer::rag::{fill_template, Rag, RagOptions, Retriever, DEFAULT_TEMPLATE};
use ftlab::infer::search::{load_encoder, Hit};
use ftlab::infer::split::{split_text, Chunk, SplitConfig};
use ftlab::infer::LanguageModel;
use ftlab::model::LoadOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cfg(chunk_size: usize, chunk_overlap: usize) -> SplitConfig {
    SplitConfig {
        chunk_size,
        chunk_overlap,
    }
}

/// The splitter's contract: every chunk fits, consecutive chunks touch or overlap by at most
/// `chunk_overlap` characters, chunks advance, and the text is exactly the first chunk
/// followed by what each next chunk adds.
fn check_contract(text: &str, c: &SplitConfig, chunks: &[Chunk]) {
    if text.is_empty() {
        assert!(chunks.is_empty());
        return;
    }
    assert_eq!(chunks[0].start, 0);
    assert_eq!(chunks.last().unwrap().end, text.len());
    let mut rebuilt = String::new();
    for (i, ch) in chunks.iter().enumerate() {
        assert_eq!(ch.text, &text[ch.start..ch.end]);
        let n = ch.chars();
        assert!(
            n <= c.chunk_size,
            "chunk {i} has {n} > {} chars: {:?}",
            c.chunk_size,
            ch.text
        );
        assert!(n > 0);
        if i == 0 {
            rebuilt.push_str(&ch.text);
            continue;
        }
        let prev = &chunks[i - 1];
        assert!(ch.start > prev.start, "chunk {i} does not advance");
        assert!(ch.start <= prev.end, "gap before chunk {i}: text lost");
        assert!(ch.end > prev.end, "chunk {i} adds nothing");
        let overlap = text[ch.start..prev.end].chars().count();
        assert!(
            overlap <= c.chunk_overlap,
            "chunks {} and {i} overlap by {overlap} > {} chars",
            i - 1,
            c.chunk_overlap
        );
        rebuilt.push_str(&text[prev.end..ch.end]);
    }
    assert_eq!(rebuilt, text, "text lost or duplicated");
}

const EN: &str = "The library opens at nine. It closes at six on weekdays! On Sundays it is closed.\n\n\
Members may borrow twelve books at a time. Loans last three weeks; they can be renewed twice online, \
by phone or at the desk. Overdue books cost 20p a day.\n\n\
The café on the ground floor serves tea, coffee and cakes. Is it open late? No: it closes at four.";

const JA: &str = "市民体育館は午前九時から午後九時まで開いています。休館日は毎月第二月曜日です！\n\n\
トレーニングルームの料金は一回三百五十円です。中学生以下と七十歳以上の方は半額になります。初めての方は講習会を受ける必要がありますか？はい、必要です。\n\n\
「予約は不要です。」と係の人が言いました。メインアリーナは二か月前から予約できます。";

#[test]
fn english_chunks_respect_size_overlap_and_lose_nothing() {
    for (size, overlap) in [
        (40, 0),
        (60, 15),
        (100, 30),
        (150, 40),
        (400, 80),
        (1000, 100),
    ] {
        let c = cfg(size, overlap);
        let chunks = split_text(EN, &c).unwrap();
        check_contract(EN, &c, &chunks);
    }
    // Sentences shorter than the chunk size are never cut: with a size that holds the
    // longest sentence, every chunk starts at a sentence start.
    let chunks = split_text(EN, &cfg(120, 40)).unwrap();
    for ch in &chunks {
        let first = ch.text.chars().next().unwrap();
        assert!(
            first.is_uppercase(),
            "chunk starts mid-sentence: {:?}",
            ch.text
        );
    }
    // A size that holds the whole paragraph keeps paragraphs whole.
    let chunks = split_text(EN, &cfg(200, 0)).unwrap();
    assert_eq!(chunks.len(), 3, "{chunks:#?}");
    assert!(chunks[0].text.starts_with("The library") && chunks[0].text.ends_with("\n\n"));
}

#[test]
fn japanese_chunks_split_at_sentence_ends() {
    for (size, overlap) in [(10, 0), (25, 5), (40, 20), (80, 30), (300, 60)] {
        let c = cfg(size, overlap);
        let chunks = split_text(JA, &c).unwrap();
        check_contract(JA, &c, &chunks);
    }
    // Every Japanese sentence here is under 50 characters: chunks end at 。！？ or a
    // closing bracket (plus any whitespace), never inside a sentence.
    let chunks = split_text(JA, &cfg(50, 0)).unwrap();
    for ch in &chunks[..chunks.len() - 1] {
        let last = ch.text.trim_end().chars().last().unwrap();
        assert!(
            "。！？」".contains(last),
            "chunk ends mid-sentence: {:?}",
            ch.text
        );
    }
    assert!(chunks
        .iter()
        .any(|c| c.text.starts_with("「予約は不要です。」")));
}

#[test]
fn long_runs_without_boundaries_fall_back_to_characters() {
    let text = "あ".repeat(95) + &"x".repeat(30);
    let c = cfg(20, 5);
    let chunks = split_text(&text, &c).unwrap();
    check_contract(&text, &c, &chunks);
    assert!(chunks
        .iter()
        .all(|ch| ch.chars() == 20 || ch.end == text.len()));
}

/// Random texts of words, sentence ends (Latin and Japanese), newlines and runs without
/// spaces: the contract holds for every size and overlap.
#[test]
fn the_contract_holds_on_random_texts() {
    let mut rng = StdRng::seed_from_u64(7);
    let pieces = [
        "word",
        "another",
        "x",
        "長い日本語の文",
        "です",
        "。",
        "！",
        "？",
        ". ",
        "! ",
        "? ",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\n \n",
        "3.5",
        "e.g.",
        "「引用」",
        "、",
        "Ünïcödé",
        "🙂",
    ];
    for _ in 0..300 {
        let n = rng.gen_range(0..200);
        let text: String = (0..n)
            .map(|_| pieces[rng.gen_range(0..pieces.len())])
            .collect();
        let size = rng.gen_range(1..80);
        let overlap = rng.gen_range(0..size);
        let c = cfg(size, overlap);
        let chunks = split_text(&text, &c).unwrap();
        check_contract(&text, &c, &chunks);
    }
}

#[test]
fn bad_split_settings_are_rejected() {
    assert!(split_text("abc", &cfg(0, 0)).is_err());
    let err = split_text("abc", &cfg(10, 10)).unwrap_err().to_string();
    assert!(err.contains("overlap"), "{err}");
}

fn hit(rank: usize, source: &str, text: &str) -> Hit {
    Hit {
        rank,
        id: rank - 1,
        source: source.into(),
        score: 0.5,
        text: text.into(),
    }
}

#[test]
fn templates_are_filled_once() {
    let hits = [
        hit(1, "a.txt", "Bins go out on {question} Tuesdays."),
        hit(2, "b.txt", "Second chunk."),
    ];
    let p = fill_template(DEFAULT_TEMPLATE, &hits, "When are bins collected?").unwrap();
    assert!(
        p.contains("[1] (a.txt)\nBins go out on {question} Tuesdays."),
        "{p}"
    );
    assert!(p.contains("[2] (b.txt)\nSecond chunk."));
    assert!(p.ends_with("Question: When are bins collected?"), "{p}");
    let p = fill_template(
        "Q: {question}\n{context}\nQ again: {question}",
        &hits[1..],
        "why?",
    )
    .unwrap();
    assert_eq!(p, "Q: why?\n[2] (b.txt)\nSecond chunk.\nQ again: why?");
    let err = fill_template("no slots", &hits, "q")
        .unwrap_err()
        .to_string();
    assert!(err.contains("{context}"), "{err}");
}

#[test]
fn document_folders_load_and_chunk_back_to_their_text() {
    let docs = load_documents(&repo("data/docs")).unwrap();
    assert_eq!(docs.len(), 14);
    assert!(docs.windows(2).all(|w| w[0].source < w[1].source));
    let split = SplitConfig::default();
    let chunks = chunk_documents(&docs, &split).unwrap();
    for c in &chunks {
        let d = docs.iter().find(|d| d.source == c.source).unwrap();
        assert_eq!(d.text[c.start..c.end].trim(), c.text);
    }
    let empty = tempfile::tempdir().unwrap();
    let err = load_documents(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no .txt or .md"), "{err}");
    std::fs::write(empty.path().join("bad.txt"), b"ok\n\xff\n").unwrap();
    let err = load_documents(empty.path()).unwrap_err().to_string();
    assert!(err.contains("bad.txt:2"), "{err}");
}

fn minilm() -> Embedder {
    load_encoder("minilm", &Default::default()).unwrap().0
}

#[derive(serde::Deserialize)]
struct Question {
    question: String,
    source: Option<String>,
    lang: String,
}

fn retriever() -> &'static Retriever {
    static R: OnceLock<Retriever> = OnceLock::new();
    R.get_or_init(|| {
        Retriever::from_dir(minilm(), &repo("data/docs"), &SplitConfig::default()).unwrap()
    })
}

/// With MiniLM, the source document of most answerable English questions is among the
/// top 3 chunks (Japanese is reported: MiniLM is an English model).
#[test]
fn minilm_retrieves_the_source_document() {
    let r = retriever();
    let text = std::fs::read_to_string(repo("data/docs/questions.jsonl")).unwrap();
    let mut stats = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let q: Question = serde_json::from_str(line).unwrap();
        let Some(source) = q.source else { continue };
        let hits = r.retrieve(&q.question, 3).unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        let e = stats.entry(q.lang).or_default();
        e.1 += 1;
        if hits.iter().any(|h| h.source == source) {
            e.0 += 1;
        }
    }
    eprintln!("source document in the top 3 chunks (found, questions): {stats:?}");
    let (found, total) = stats["en"];
    assert!(
        found as f64 >= 0.8 * total as f64,
        "English: {found}/{total} questions found their source"
    );
}

/// The whole pipeline with SmolLM2: retrieved chunks come back with the answer, and the
/// streamed pieces are the answer.
#[test]
fn rag_answers_with_smollm2_and_streams() {
    let lm = LanguageModel::load_spec("smollm2", &LoadOptions::default()).unwrap();
    let retr = Retriever::from_dir(minilm(), &repo("data/docs"), &SplitConfig::default()).unwrap();
    let opts = RagOptions {
        max_new_tokens: 24,
        ..RagOptions::default()
    };
    let rag = Rag::new(retr, lm, opts).unwrap();
    let mut streamed = String::new();
    let answer = rag
        .answer(
            "On which day are bins in Harrowby's Zone North collected?",
            &mut |piece| {
                streamed.push_str(piece);
                Ok(())
            },
        )
        .unwrap();
    eprintln!(
        "answer: {:?}; chunks: {:?}",
        answer.answer,
        answer.chunks.iter().map(|h| &h.source).collect::<Vec<_>>()
    );
    assert_eq!(answer.chunks.len(), 3);
    assert_eq!(answer.chunks[0].source, "en_harrowby_recycling.txt");
    assert!(answer.prompt.contains("Zone North"));
    assert!(answer.generated_tokens > 0);
    assert_eq!(streamed.trim(), answer.answer);
    assert!(rag.answer("   ", &mut |_| Ok(())).is_err());
}

/// `ftlab rag`: the answer alone on stdout, the chunks on stderr; `--json` prints both as
/// one object.
#[test]
fn rag_cli_separates_answer_and_chunks() {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftlab"))
            .args([
                "rag",
                "--docs",
                &repo("data/docs").to_string_lossy(),
                "--question",
                "How much does Harrowby's optional garden waste collection cost per year?",
                "--max-new-tokens",
                "16",
                "--temperature",
                "0",
            ])
            .args(extra)
            .output()
            .unwrap();
        common::assert_success(&out);
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (stdout, stderr) = run(&[]);
    assert!(
        stderr.contains("[1] en_harrowby_recycling.txt (score"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("[1]") && !stdout.contains("score"),
        "{stdout}"
    );
    assert!(!stdout.trim().is_empty());
    let (stdout, _) = run(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["answer"].as_str().is_some_and(|a| !a.is_empty()), "{v}");
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 3);
    for key in ["source", "score", "text"] {
        assert!(chunks[0].get(key).is_some(), "{key} missing: {v}");
    }
}

/// `ftlab rag --questions FILE`: one answerable and one unanswerable question; the JSON
/// report counts both, finds the source document, and scores each answer the way
/// `rag_answer_correct` does. A malformed question file names its file and line.
#[test]
fn rag_cli_evaluates_a_question_file() {
    use ftlab::infer::rag_eval::rag_answer_correct;
    let dir = tempfile::tempdir().unwrap();
    let questions = dir.path().join("q.jsonl");
    std::fs::write(
        &questions,
        "{\"question\": \"On which day are bins in Harrowby's Zone North collected?\", \
          \"answer\": \"Tuesdays\", \"source\": \"en_harrowby_recycling.txt\", \"lang\": \"en\"}\n\
         {\"question\": \"Who founded the Kestrel Bikes scheme?\", \"answer\": null, \
          \"source\": null, \"lang\": \"en\"}\n",
    )
    .unwrap();
    let run = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ftlab"))
            .args(["rag", "--docs", &repo("data/docs").to_string_lossy()])
            .arg("--questions")
            .arg(file)
            .args(["--max-new-tokens", "24", "--json"])
            .output()
            .unwrap()
    };
    let out = run(&questions);
    common::assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"]["questions"], 2, "{v}");
    assert_eq!(v["total"]["with_source"], 1, "{v}");
    assert_eq!(v["total"]["source_found"], 1, "{v}");
    assert_eq!(v["by_kind"]["answerable"]["questions"], 1, "{v}");
    assert_eq!(v["by_kind"]["unanswerable"]["questions"], 1, "{v}");
    let samples = v["samples"].as_array().unwrap();
    let mut correct = 0;
    for s in samples {
        let answer = s["answer"].as_str().unwrap();
        assert!(!answer.is_empty(), "{v}");
        let scored = rag_answer_correct(answer, s["expected"].as_str());
        assert_eq!(s["correct"].as_bool(), Some(scored), "{s}");
        correct += scored as u64;
    }
    assert_eq!(v["total"]["correct"], correct, "{v}");
    assert_eq!(samples[0]["retrieved"][0], "en_harrowby_recycling.txt");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"Q?\", \"answer\": 3}\n").unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:1:", bad.display())), "{err}");
}

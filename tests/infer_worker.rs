//! The Inference tab's worker thread, driven through its channel as the dashboard drives it:
//! search jobs embed the documents folder with the real MiniLM and return the nearest
//! chunks; bad folders come back as a failure, and the thread keeps serving.
mod common;
use common::repo;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ftlab::config::DeviceChoice;
use ftlab::infer::sampling::SamplingParams;
use ftlab::tui::infer_worker::{spawn, InferEvent, InferJob, InferRequest, InferTarget};

fn minilm() -> InferTarget {
    InferTarget {
        key: "base:minilm".into(),
        label: "base minilm".into(),
        model: "minilm".into(),
        adapter: None,
    }
}

fn search(id: u64, query: &str, docs: PathBuf) -> InferJob {
    InferJob {
        id,
        target: minilm(),
        request: InferRequest::Search {
            query: query.into(),
            docs,
            k: 3,
        },
        sampling: SamplingParams::default(),
        max_new_tokens: 8,
    }
}

/// Events of one job, up to its Done or Failed.
fn events_of(rx: &mpsc::Receiver<InferEvent>, id: u64) -> Vec<InferEvent> {
    let mut out = Vec::new();
    loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("the worker answers");
        let (job, last) = match &ev {
            InferEvent::Status { job, .. }
            | InferEvent::Hits { job, .. }
            | InferEvent::Token { job, .. } => (*job, false),
            InferEvent::Done { job, .. } | InferEvent::Failed { job, .. } => (*job, true),
        };
        assert_eq!(job, id, "{ev:?}");
        out.push(ev);
        if last {
            return out;
        }
    }
}

#[test]
fn search_jobs_return_the_nearest_chunks_and_errors_do_not_stop_the_worker() {
    let (tx, rx) = mpsc::channel();
    let jobs = spawn(
        DeviceChoice::Auto,
        Arc::new(AtomicBool::new(false)),
        move |ev| {
            let _ = tx.send(ev);
        },
    );
    // A missing folder is a failure naming it.
    jobs.send(search(1, "anything", repo("no-such-docs")))
        .unwrap();
    let ev = events_of(&rx, 1);
    match ev.last().unwrap() {
        InferEvent::Failed { error, .. } => assert!(error.contains("no-such-docs"), "{error}"),
        other => panic!("{other:?}"),
    }
    // The worker goes on: a real search over the shipped documents.
    jobs.send(search(
        2,
        "How much does the optional garden waste collection cost per year?",
        repo("data/docs"),
    ))
    .unwrap();
    let ev = events_of(&rx, 2);
    let hits = ev
        .iter()
        .find_map(|e| match e {
            InferEvent::Hits { hits, searched, .. } => Some((hits.clone(), *searched)),
            _ => None,
        })
        .expect("a Hits event");
    assert!(matches!(ev.last().unwrap(), InferEvent::Done { .. }));
    let (hits, searched) = hits;
    assert_eq!(hits.len(), 3);
    assert!(searched > 14, "every document gives at least one chunk");
    assert_eq!(hits[0].source, "en_harrowby_recycling.txt", "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // A second query reuses the embedded chunks: no loading status this time.
    jobs.send(search(3, "いつ電車が運休しますか", repo("data/docs")))
        .unwrap();
    let ev = events_of(&rx, 3);
    assert!(
        !ev.iter()
            .any(|e| matches!(e, InferEvent::Status { text, .. } if text.contains("embedding"))),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(e, InferEvent::Hits { .. })));
}

fn chat(id: u64) -> InferJob {
    InferJob {
        id,
        target: InferTarget {
            key: "base:smollm2".into(),
            label: "base smollm2".into(),
            model: "smollm2".into(),
            adapter: None,
        },
        request: InferRequest::Chat {
            messages: vec![ftlab::infer::chat_template::ChatMessage::user(
                "Write a long story about a lighthouse keeper.",
            )],
        },
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_new_tokens: 64,
    }
}

/// A chat answer cancelled after its third piece of text reports the tokens it produced and
/// their real speed; one cancelled before its first token reports none and no speed.
#[test]
fn a_cancelled_answer_reports_its_tokens_and_their_real_speed() {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    // The worker calls this on its own thread, so the cancel lands at an exact point.
    let flag = cancel.clone();
    let pieces = std::sync::atomic::AtomicUsize::new(0);
    let cancel_at = Arc::new(std::sync::atomic::AtomicUsize::new(3));
    let at = cancel_at.clone();
    let jobs = spawn(DeviceChoice::Auto, cancel.clone(), move |ev| {
        use std::sync::atomic::Ordering::SeqCst;
        let cancel_now = match &ev {
            InferEvent::Token { .. } => pieces.fetch_add(1, SeqCst) + 1 == at.load(SeqCst),
            // "N prompt tokens, generating…": cancel_at 0 cancels before the first token.
            InferEvent::Status { text, .. } if text.contains("generating") => {
                pieces.store(0, SeqCst);
                at.load(SeqCst) == 0
            }
            _ => false,
        };
        if cancel_now {
            flag.store(true, SeqCst);
        }
        let _ = tx.send(ev);
    });
    let t0 = std::time::Instant::now();
    jobs.send(chat(1)).unwrap();
    let ev = events_of(&rx, 1);
    let wall = t0.elapsed().as_secs_f64();
    let tokens = ev
        .iter()
        .filter(|e| matches!(e, InferEvent::Token { .. }))
        .count();
    assert_eq!(tokens, 3, "{ev:?}");
    match ev.last().unwrap() {
        InferEvent::Done {
            generated,
            tokens_per_sec,
            cancelled,
            stopped,
            ..
        } => {
            assert!(*cancelled && !*stopped);
            // Every piece is at least one token; a token whose text is held back (part of
            // a character) counts too.
            assert!(*generated >= 3, "{generated}");
            let r = tokens_per_sec.expect("a speed for the tokens produced");
            // Not 0.0, and not more than is possible: at least the tokens over the job's
            // whole time (loading included).
            assert!(
                r.is_finite() && r >= *generated as f64 / wall,
                "{r} tokens/s"
            );
        }
        other => panic!("{other:?}"),
    }
    cancel_at.store(0, std::sync::atomic::Ordering::SeqCst);
    jobs.send(chat(2)).unwrap();
    let ev = events_of(&rx, 2);
    assert!(!ev.iter().any(|e| matches!(e, InferEvent::Token { .. })));
    assert_eq!(
        ev.last().unwrap(),
        &InferEvent::Done {
            job: 2,
            generated: 0,
            tokens_per_sec: None,
            stopped: false,
            cancelled: true,
        }
    );
}

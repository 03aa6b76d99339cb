//! The Inference tab's worker thread, driven through its channel as the dashboard drives it:
//! search jobs embed the documents folder with the real MiniLM and return the nearest
//! chunks; bad folders come back as a failure, and the thread keeps serving.
mod common;
use common::repo;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

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
    let jobs = spawn(Arc::new(AtomicBool::new(false)), move |ev| {
        let _ = tx.send(ev);
    });
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

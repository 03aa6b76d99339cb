//! The HNSW index (hnsw_rs): recall@10 against exact search on 10,000 vectors, save/load
//! round trips, clear errors for a wrong dimension, an empty index and a broken directory,
//! corpus files, and text search with the real all-MiniLM-L6-v2.
mod common;
use std::path::Path;

use ftlab::infer::search::{
    exact_search, load_encoder, read_corpus, recall_at_k, synthetic_vectors, Doc, HnswParams,
    SearchIndex, Searcher, VectorIndex, INDEX_META,
};
use ftlab::infer::split::SplitConfig;

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Recall@10 ≥ 0.95 on 10,000 embedding-like 384-dimensional vectors with the default
/// parameters, for queries drawn from the same distribution.
#[test]
fn recall_at_10_on_10k_vectors_is_at_least_095() {
    let data = synthetic_vectors(10_000, 384, 32, 100, 1);
    let queries = synthetic_vectors(200, 384, 32, 100, 2);
    let index = VectorIndex::build(&data, HnswParams::default()).unwrap();
    assert_eq!(index.len(), 10_000);
    let recall = recall_at_k(&index, &data, &queries, 10).unwrap();
    eprintln!("recall@10 on 10k vectors: {recall:.4}");
    assert!(recall >= 0.95, "recall@10 = {recall}");
}

#[test]
fn exact_search_ranks_by_cosine() {
    let v = vec![
        vec![1.0, 0.0],
        vec![0.0, 2.0],
        vec![3.0, 3.0],
        vec![-1.0, 0.0],
    ];
    let hits = exact_search(&v, &[1.0, 0.1], 3);
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![0, 2, 1]);
    assert!((hits[1].score - std::f32::consts::FRAC_1_SQRT_2 * (1.1 / 1.0050)).abs() < 1e-3);
    let index = VectorIndex::build(&v, HnswParams::default()).unwrap();
    let got = index.search(&[1.0, 0.1], 3).unwrap();
    assert_eq!(
        got.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec![0, 2, 1],
        "a tiny index is exact"
    );
    for (a, b) in got.iter().zip(&hits) {
        assert!((a.score - b.score).abs() < 1e-5);
    }
}

#[test]
fn save_and_load_give_the_same_results() {
    let data = synthetic_vectors(2_000, 64, 32, 20, 5);
    let queries = synthetic_vectors(50, 64, 32, 20, 6);
    let index = VectorIndex::build(&data, HnswParams::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meta = index.save(dir.path()).unwrap();
    assert_eq!(meta.count, 2_000);
    let loaded = VectorIndex::load(dir.path(), &meta).unwrap();
    assert_eq!((loaded.len(), loaded.dim()), (2_000, 64));
    for q in &queries {
        assert_eq!(index.search(q, 10).unwrap(), loaded.search(q, 10).unwrap());
    }
    // Saving again into the same directory replaces the files.
    loaded.save(dir.path()).unwrap();
    let again = VectorIndex::load(dir.path(), &meta).unwrap();
    assert_eq!(
        again.search(&queries[0], 5).unwrap(),
        index.search(&queries[0], 5).unwrap()
    );
}

#[test]
fn a_query_of_the_wrong_dimension_is_a_clear_error() {
    let index =
        VectorIndex::build(&synthetic_vectors(100, 16, 8, 4, 1), HnswParams::default()).unwrap();
    let err = err_text(index.search(&[0.5; 8], 3));
    assert!(
        err.contains("dimension 8") && err.contains("dimension 16"),
        "{err}"
    );
    let err = err_text(index.search(&[0.0; 16], 3));
    assert!(err.contains("all zeros"), "{err}");
    let mut index = index;
    let err = err_text(index.add(&[vec![1.0; 15]]));
    assert!(err.contains("dimension 15"), "{err}");
}

#[test]
fn an_empty_index_is_a_clear_error_and_survives_a_round_trip() {
    let index = VectorIndex::new(8, 10, HnswParams::default()).unwrap();
    assert!(index.is_empty());
    let err = err_text(index.search(&[1.0; 8], 3));
    assert!(err.contains("empty"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let meta = index.save(dir.path()).unwrap();
    let loaded = VectorIndex::load(dir.path(), &meta).unwrap();
    assert!(err_text(loaded.search(&[1.0; 8], 3)).contains("empty"));
    assert!(err_text(VectorIndex::build(&[], HnswParams::default())).contains("no vectors"));
}

#[test]
fn bad_parameters_and_directories_are_clear_errors() {
    let bad = HnswParams {
        m: 300,
        ..HnswParams::default()
    };
    assert!(err_text(VectorIndex::new(4, 1, bad)).contains("2..=256"));
    let dir = tempfile::tempdir().unwrap();
    let err = err_text(SearchIndex::load(dir.path()));
    assert!(err.contains(INDEX_META), "{err}");
    let err = err_text(SearchIndex::load(&dir.path().join("nope")));
    assert!(err.contains("no such index directory"), "{err}");
}

#[test]
fn corpus_files_are_read_with_file_and_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("c.txt");
    std::fs::write(&txt, "first doc\n\n  second doc  \n").unwrap();
    let docs = read_corpus(&txt, &SplitConfig::default()).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].text, "second doc");
    assert!(docs[1].source.ends_with("c.txt:3"), "{}", docs[1].source);
    let jl = dir.path().join("c.jsonl");
    std::fs::write(
        &jl,
        "{\"text\": \"a\", \"source\": \"s1\"}\n{\"text\": \"b\", \"id\": 7}\n{\"title\": \"x\"}\nnope\n",
    )
    .unwrap();
    let err = err_text(read_corpus(&jl, &SplitConfig::default()));
    assert!(
        err.contains("c.jsonl:3") && err.contains("c.jsonl:4"),
        "{err}"
    );
    std::fs::write(
        &jl,
        "{\"text\": \"a\", \"source\": \"s1\"}\n{\"text\": \"b\", \"id\": 7}\n",
    )
    .unwrap();
    let docs = read_corpus(&jl, &SplitConfig::default()).unwrap();
    assert_eq!(
        (docs[0].source.as_str(), docs[1].source.as_str()),
        ("s1", "7")
    );
    let empty = dir.path().join("e.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(err_text(read_corpus(&empty, &SplitConfig::default())).contains("empty"));
    // A folder of documents is split into chunks.
    let docs = read_corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/docs"),
        &SplitConfig::default(),
    )
    .unwrap();
    assert!(docs.len() > 14, "{} chunks", docs.len());
}

/// Text search with MiniLM: the right document comes first, the saved index answers the
/// same after loading (with the model recorded in it), and the encoder must match.
#[test]
fn minilm_text_index_round_trip() {
    let texts = [
        "The cat is sleeping on the sofa.",
        "Stock markets fell sharply after the announcement.",
        "A recipe for tomato soup with basil.",
        "The train to Kyoto leaves at nine in the morning.",
        "Our library opens at ten on Sundays.",
        "He repaired the bicycle's flat tyre.",
    ];
    let docs: Vec<Doc> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Doc {
            source: format!("doc{i}"),
            text: t.to_string(),
        })
        .collect();
    let (encoder, desc) = load_encoder("minilm", &Default::default()).unwrap();
    let (mut index, _) = SearchIndex::build(
        &encoder,
        "minilm",
        &desc,
        docs,
        HnswParams::default(),
        8,
        &mut |_, _| {},
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    index.save(dir.path()).unwrap();
    let searcher = Searcher::new(index, encoder, desc).unwrap();
    let hits = searcher.search("a kitten napping on the couch", 3).unwrap();
    assert_eq!(hits[0].source, "doc0", "{hits:?}");
    assert_eq!(hits.len(), 3);
    assert!(hits[0].score > hits[1].score);
    let reopened = Searcher::open(dir.path(), &Default::default()).unwrap();
    let again = reopened.search("a kitten napping on the couch", 3).unwrap();
    assert_eq!(hits, again);
    assert!(err_text(reopened.search("  ", 3)).contains("empty"));
}

/// `ftlab index build` then `ftlab search`: hits with scores, JSON on request, and a clear
/// error for a missing index.
#[test]
fn index_and_search_cli() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "The cat is sleeping on the sofa.\nStock markets fell sharply.\nA recipe for tomato soup.\n",
    )
    .unwrap();
    let index = dir.path().join("idx");
    let ftlab = env!("CARGO_BIN_EXE_ftlab");
    let out = std::process::Command::new(ftlab)
        .args(["index", "build", "--model", "minilm", "--input"])
        .arg(&corpus)
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    common::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("indexed 3 documents"));
    let out = std::process::Command::new(ftlab)
        .args(["search", "--index"])
        .arg(&index)
        .args(["a kitten napping", "-k", "2"])
        .output()
        .unwrap();
    common::assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(" 1  0.") && lines[0].contains("corpus.txt:1"),
        "{stdout}"
    );
    let out = std::process::Command::new(ftlab)
        .args(["search", "--json", "--index"])
        .arg(&index)
        .args(["soup", "-k", "1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hits"][0]["text"], "A recipe for tomato soup.");
    let out = std::process::Command::new(ftlab)
        .args(["search", "--index"])
        .arg(dir.path().join("missing"))
        .arg("q")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such index directory"));
}

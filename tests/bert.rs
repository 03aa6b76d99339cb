//! BERT encoder and sentence embeddings: gradients reach every parameter, and the real
//! all-MiniLM-L6-v2 matches sentence-transformers.
mod common;
use common::max_abs_diff;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use ftlab::infer::embed::{cosine_matrix, sentence_embeddings, Embedder};
use ftlab::model::arch::Weight;
use ftlab::model::bert::{Bert, BertActivation, BertConfig};
use ftlab::model::load::safetensors::SafetensorsSource;
use ftlab::model::load::RandomSource;
use ftlab::model::LoadOptions;

fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 32,
        hidden_act: BertActivation::Gelu,
        max_position_embeddings: 32,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
    }
}

#[test]
fn config_from_hf_json() {
    let v = serde_json::json!({
        "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
        "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu_new",
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "model_type": "bert"
    });
    let cfg = BertConfig::from_hf(&v).unwrap();
    assert_eq!(cfg.hidden_act, BertActivation::GeluTanh);
    assert_eq!(cfg.head_dim(), 32);
    let bad = serde_json::json!({
        "vocab_size": 10, "hidden_size": 10, "num_hidden_layers": 1,
        "num_attention_heads": 3, "intermediate_size": 8, "max_position_embeddings": 8
    });
    let err = BertConfig::from_hf(&bad).unwrap_err().to_string();
    assert!(err.contains("not divisible"), "{err}");
}

/// (a) One backward of a loss on the pooled embeddings reaches every trainable variable.
#[test]
fn every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    let opts = LoadOptions {
        device: dev.clone(),
        dtype: DType::F32,
        trainable: true,
        quant4: None,
        keep_quantized: false,
    };
    let loaded = Bert::build(&RandomSource::new(1.0), &tiny_config(), &opts).unwrap();
    // 5 (embeddings) + 16 per layer
    assert_eq!(loaded.params.len(), 5 + 16 * 2);
    let ids = Tensor::new(&[[1u32, 5, 7, 9, 2, 0], [1, 3, 2, 0, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], &dev).unwrap();
    let pooled = sentence_embeddings(&loaded.model, &ids, &mask).unwrap();
    assert_eq!(pooled.dims(), &[2, 16]);
    let target = Tensor::randn(0f32, 1.0, (2, 16), &dev).unwrap();
    let loss = (pooled * target).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut missing = Vec::new();
    let mut zero = Vec::new();
    for (name, var) in &loaded.params {
        match grads.get(var) {
            None => missing.push(name.clone()),
            Some(g) => {
                let s = g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(s.is_finite(), "{name}: non-finite gradient");
                // The key bias adds the same q·b to every score of a query, which softmax
                // ignores: its true gradient is 0 (only rounding noise). It must still be
                // connected to the graph.
                if s == 0.0 && !name.ends_with("attention.self.key.bias") {
                    zero.push(name.clone());
                }
            }
        }
    }
    assert!(
        missing.is_empty() && zero.is_empty(),
        "variables without gradient: {missing:?}; with an all-zero gradient: {zero:?}"
    );
}

/// Padding keys are masked: the padded sequence's embedding equals the unpadded one.
#[test]
fn padding_is_masked_in_tiny_model() {
    let dev = Device::Cpu;
    let loaded = Bert::build(
        &RandomSource::new(1.0),
        &tiny_config(),
        &LoadOptions::default(),
    )
    .unwrap();
    let alone = sentence_embeddings(
        &loaded.model,
        &Tensor::new(&[[1u32, 3, 2]], &dev).unwrap(),
        &Tensor::new(&[[1u32, 1, 1]], &dev).unwrap(),
    )
    .unwrap();
    let padded = sentence_embeddings(
        &loaded.model,
        &Tensor::new(&[[1u32, 3, 2, 0, 0, 0, 0]], &dev).unwrap(),
        &Tensor::new(&[[1u32, 1, 1, 0, 0, 0, 0]], &dev).unwrap(),
    )
    .unwrap();
    let d = max_abs_diff(&alone, &padded);
    assert!(d <= 1e-6, "padded vs unpadded diff {d}");
}

#[test]
fn linears_have_hf_module_names() {
    let mut loaded = Bert::build(
        &RandomSource::new(1.0),
        &tiny_config(),
        &LoadOptions::default(),
    )
    .unwrap();
    let names: Vec<String> = loaded
        .model
        .linears_mut()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 12);
    assert_eq!(names[0], "encoder.layer.0.attention.self.query");
    assert!(names.contains(&"encoder.layer.1.attention.output.dense".to_string()));
    assert!(names.contains(&"encoder.layer.1.intermediate.dense".to_string()));
    assert!(names.contains(&"encoder.layer.1.output.dense".to_string()));
    assert!(loaded.params.is_empty(), "frozen load records no params");
}

/// (e) A directory without config.json: the error names the directory and the file.
#[test]
fn missing_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = match Embedder::from_dir(tmp.path(), &LoadOptions::default()) {
        Ok(_) => panic!("loading an empty directory succeeded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    let err = format!(
        "{:#}",
        Bert::from_hf_dir(tmp.path(), &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(
        err.contains("config.json") && err.contains(&tmp.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), "").unwrap();
    let err = format!(
        "{:#}",
        Embedder::from_dir(tmp.path(), &LoadOptions::default())
            .err()
            .unwrap()
    );
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
}

#[test]
fn file_with_invalid_utf8_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s.txt");
    std::fs::write(&path, b"first line\nsecond \xff\xfe line\n").unwrap();
    let err = ftlab::cli::embed::read_sentences(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(":2:"), "{err}");
    std::fs::write(&path, b"a\r\n\n  b  \n").unwrap();
    assert_eq!(
        ftlab::cli::embed::read_sentences(&path).unwrap(),
        vec!["a", "b"]
    );
}

#[test]
fn zero_sentences_is_a_usage_error() {
    let args = ftlab::cli::embed::EmbedArgs {
        model: "/nonexistent/model/dir".into(),
        sentences: vec![],
        file: None,
        json: false,
        device: ftlab::cli::device::DeviceArgs {
            device: ftlab::config::DeviceChoice::Cpu,
            dtype: "f32".into(),
        },
    };
    let err = ftlab::cli::embed::run(args).unwrap_err().to_string();
    assert!(err.contains("no sentences"), "{err}");
}

// ---------------------------------------------------------------- real all-MiniLM-L6-v2

fn minilm_dir() -> PathBuf {
    match ftlab::hub::resolve("minilm") {
        Ok(r) => match r.source {
            ftlab::hub::ModelSource::HfDir { dir } => dir,
            other => panic!("minilm resolved to {other:?}"),
        },
        Err(e) => {
            // Offline: use an existing copy in the cache.
            let dir = ftlab::hub::cache_dir()
                .map(|c| c.join("models").join("minilm"))
                .unwrap_or_else(|_| PathBuf::from("/root/.cache/ftlab/models/minilm"));
            assert!(
                dir.join("config.json").is_file(),
                "cannot resolve minilm ({e:#}) and no copy at {}",
                dir.display()
            );
            dir
        }
    }
}

fn minilm() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| Embedder::from_dir(&minilm_dir(), &LoadOptions::default()).unwrap())
}

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    input_ids: Vec<Vec<u32>>,
    cosine: Vec<Vec<f32>>,
}

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.json")
}

/// (b) Token ids, embeddings and cosines match sentence-transformers.
#[test]
fn minilm_matches_sentence_transformers() {
    let path = reference_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r: Reference = serde_json::from_str(&text).unwrap();
    let e = minilm();
    assert_eq!(e.max_len(), 256);
    let refs: Vec<&str> = r.sentences.iter().map(String::as_str).collect();

    // Token ids, per sentence without padding (the reference may be padded with 0s).
    for (s, want) in refs.iter().zip(&r.input_ids) {
        let batch = e.encode(&[s]).unwrap();
        let got = batch.input_ids.get(0).unwrap().to_vec1::<u32>().unwrap();
        let want: Vec<u32> = {
            let mut w = want.clone();
            while w.last() == Some(&0) {
                w.pop();
            }
            w
        };
        assert_eq!(got, want, "token ids of {s:?}");
    }

    let emb = e.embed(&refs).unwrap();
    assert_eq!(emb.dims(), &[r.sentences.len(), 384]);
    let want = Tensor::new(r.embeddings.clone(), &Device::Cpu).unwrap();
    let d = max_abs_diff(&emb, &want);
    let cos = cosine_matrix(&emb).unwrap();
    let mut dc = 0f32;
    for (row, wrow) in cos.iter().zip(&r.cosine) {
        for (a, b) in row.iter().zip(wrow) {
            dc = dc.max((a - b).abs());
        }
    }
    eprintln!("minilm vs sentence-transformers: max |Δembedding| = {d:e}, max |Δcosine| = {dc:e}");
    assert!(d <= 1e-4, "embedding max abs diff {d}");
    assert!(dc <= 1e-4, "cosine max abs diff {dc}");
}

/// (c) Paraphrases score higher than unrelated sentences.
#[test]
fn minilm_similar_sentences_score_higher() {
    let s = [
        "A man is playing a guitar.",
        "Someone is playing an acoustic guitar on stage.",
        "The stock market fell sharply today.",
        "猫がソファの上で寝ている。",
        "ソファで猫が眠っています。",
        "会議は午後三時に始まります。",
    ];
    let emb = minilm().embed(&s).unwrap();
    let c = cosine_matrix(&emb).unwrap();
    eprintln!("guitar pair {:.4}, guitar/stocks {:.4}", c[0][1], c[0][2]);
    eprintln!("cat pair {:.4}, cat/meeting {:.4}", c[3][4], c[3][5]);
    assert!(
        c[0][1] > c[0][2] + 0.2,
        "guitar pair {} vs stocks {}",
        c[0][1],
        c[0][2]
    );
    assert!(
        c[3][4] > c[3][5],
        "cat pair {} vs meeting {}",
        c[3][4],
        c[3][5]
    );
    for (i, row) in c.iter().enumerate() {
        assert!((row[i] - 1.0).abs() < 1e-5);
    }
}

/// (d) A sentence's embedding does not depend on the padding its batch needs.
#[test]
fn minilm_padding_invariance() {
    let e = minilm();
    let short = "Cats sleep.";
    let long = "The quarterly report, which was delayed by several weeks because of an audit, \
                shows that revenue grew in every region except the north, where a new competitor \
                and a long winter both reduced sales of the company's outdoor products.";
    let alone = e.embed(&[short]).unwrap();
    let batch = e.embed(&[long, short]).unwrap();
    let b = e.encode(&[long, short]).unwrap();
    assert!(
        b.input_ids.dim(1).unwrap() > 30,
        "the long sentence should force padding"
    );
    let d = max_abs_diff(&alone, &batch.get(1).unwrap().unsqueeze(0).unwrap());
    eprintln!("padding invariance: max |Δ| = {d:e}");
    assert!(d <= 1e-5, "padding changed the embedding by {d}");
    let norm = batch
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for n in norm {
        assert!((n - 1.0).abs() < 1e-5, "not normalised: {n}");
    }
}

#[test]
fn minilm_truncates_to_max_len() {
    let e = minilm();
    let long = "word ".repeat(1000);
    let b = e.encode(&[long.as_str()]).unwrap();
    assert_eq!(b.input_ids.dims(), &[1, 256]);
    let emb = e.embed(&[long.as_str()]).unwrap();
    assert_eq!(emb.dims(), &[1, 384]);
}

/// Tensor names the encoder's weight tables reach.
fn table_tensor_names(m: &Bert) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for w in m.weights() {
        match w.weight {
            Weight::Linear(l) => {
                out.insert(format!("{}.weight", w.name));
                if l.bias().is_some() {
                    out.insert(format!("{}.bias", w.name));
                }
            }
            Weight::OptLinear(_) => unreachable!("an encoder has no LM head"),
            Weight::Tensor(_) => {
                out.insert(w.name.clone());
            }
        }
    }
    out
}

#[test]
fn every_loaded_tensor_is_reachable_through_the_weight_tables() {
    let opts = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let loaded = Bert::build(&RandomSource::new(1.0), &tiny_config(), &opts).unwrap();
    let params: BTreeSet<String> = loaded.params.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(table_tensor_names(&loaded.model), params);
    // The real MiniLM file (saved by HF) holds exactly these tensors, besides the pooler
    // (unused by sentence encoders) and HF's position-id buffer.
    let dir = minilm_dir();
    let real = Bert::from_hf_dir(&dir, &LoadOptions::default()).unwrap();
    let in_file: BTreeSet<String> = SafetensorsSource::open_dir(&dir)
        .unwrap()
        .names()
        .into_iter()
        .filter(|n| !n.contains("pooler.") && !n.ends_with("position_ids"))
        .collect();
    assert_eq!(table_tensor_names(&real.model), in_file);
}

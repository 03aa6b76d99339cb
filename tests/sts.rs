//! Sentence-similarity fine-tuning: pair files (JSONL / CSV / TSV) with file:line errors,
//! the correlation metrics (hand-checked, ties included), per-layer checkpointing of the
//! BERT encoder (gradients equal to the plain backward), and whole runs on a tiny encoder
//! (the loss falls; full and LoRA results load back as encoders).
mod common;
use common::max_abs_diff;
use common::repo;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ftlab::adapt::peft::{apply_lora_to_linears, LoraConfig, TargetModules};
use ftlab::config::{RunConfig, TaskKind};
use ftlab::infer::embed::Embedder;
use ftlab::infer::search::load_encoder;
use ftlab::model::bert::{Bert, BertActivation, BertConfig};
use ftlab::model::load::RandomSource;
use ftlab::model::LoadOptions;
use ftlab::runs::layout::RunDir;
use ftlab::train::data::sts::{parse_pairs, rescale_label, LabelScale, LabelTarget, StsFormat};
use ftlab::train::data::DataError;
use ftlab::train::events::TrainEvent;
use ftlab::train::sts_task::{
    self, average_ranks, evaluate_model, pearson, spearman, StsBatch, StsData, StsTask,
};
use ftlab::train::trainer::TrainTask;

// ------------------------------------------------------------------ metrics

#[test]
fn average_ranks_share_ties() {
    assert_eq!(
        average_ranks(&[10.0, 20.0, 20.0, 5.0, 20.0]),
        vec![2.0, 4.0, 4.0, 1.0, 4.0]
    );
    assert_eq!(average_ranks(&[1.0, 1.0]), vec![1.5, 1.5]);
    assert!(average_ranks(&[]).is_empty());
}

/// x = [1, 2, 2, 3, 4], y = [1, 3, 2, 2, 5]. Average ranks: rx = [1, 2.5, 2.5, 4, 5],
/// ry = [1, 4, 2.5, 2.5, 5]; both have mean 3, so with dx = [−2, −½, −½, 1, 2] and
/// dy = [−2, 1, −½, −½, 2]: Σdx·dy = 4 − ½ + ¼ − ½ + 4 = 7.25, Σdx² = Σdy² = 9.5, and
/// ρ = 7.25 / 9.5 = 0.763157… (scipy.stats.spearmanr gives 0.7631578947368421).
#[test]
fn spearman_with_ties_matches_the_hand_computation() {
    let x = [1.0, 2.0, 2.0, 3.0, 4.0];
    let y = [1.0, 3.0, 2.0, 2.0, 5.0];
    let rho = spearman(&x, &y);
    assert!((rho - 7.25 / 9.5).abs() < 1e-12, "{rho}");
    // Symmetric, invariant under monotone maps, −1 for a reversal.
    assert!((spearman(&y, &x) - rho).abs() < 1e-12);
    let cubed: Vec<f64> = x.iter().map(|v| v * v * v).collect();
    assert!((spearman(&cubed, &y) - rho).abs() < 1e-12);
    let rev: Vec<f64> = x.iter().map(|v| -v).collect();
    assert!((spearman(&x, &rev) + 1.0).abs() < 1e-12);
}

/// x = [1, 2, 3], y = [2, 4, 7]: Σdx·dy = 5, Σdx² = 2, Σdy² = 114/9.
#[test]
fn pearson_matches_the_hand_computation_and_degenerate_cases_are_zero() {
    let r = pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]);
    assert!(
        (r - 5.0 / (2.0f64 * 114.0 / 9.0).sqrt()).abs() < 1e-12,
        "{r}"
    );
    assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
    assert_eq!(pearson(&[1.0], &[2.0]), 0.0);
}

#[test]
fn labels_rescale_to_the_cosine_range() {
    assert_eq!(rescale_label(0.0), -1.0);
    assert_eq!(rescale_label(2.5), 0.0);
    assert_eq!(rescale_label(5.0), 1.0);
    assert_eq!(LabelScale::default(), LabelScale::Signed);
    assert_eq!(LabelScale::Signed.target(1.25), -0.5);
    assert_eq!(LabelScale::Unit.target(1.25), 0.25);
}

// ------------------------------------------------------------------ pair files

/// Exactly one problem per `(prefix, needle)`, in order: it starts with the prefix (file
/// and line) and mentions the needle.
fn assert_problems(p: &[String], expected: &[(&str, &str)]) {
    assert_eq!(p.len(), expected.len(), "{p:#?}");
    for (got, (prefix, needle)) in p.iter().zip(expected) {
        assert!(got.starts_with(prefix) && got.contains(needle), "{got}");
    }
}

fn problems(err: anyhow::Error) -> Vec<String> {
    err.downcast_ref::<DataError>()
        .unwrap_or_else(|| panic!("not a DataError: {err:#}"))
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn jsts_shaped_jsonl_loads_and_bad_lines_name_file_and_line() {
    let good = r#"{"sentence_pair_id": "0", "yjcaptions_id": "10005_480798-10996-92616", "sentence1": "川べりでサーフボードを持った人たちがいます。", "sentence2": "トイレの壁に黒いタオルがかけられています。", "label": 0.0}
{"sentence1": "A man plays a guitar.", "sentence2": "Someone plays guitar.", "label": "4.6", "lang": "en"}

{"sentence1": "A", "sentence2": "B", "score": 2}
"#;
    let pairs = parse_pairs(good.as_bytes(), "jsts.jsonl", StsFormat::Jsonl).unwrap();
    assert_eq!(pairs.len(), 3);
    assert_eq!(pairs[0].label, 0.0);
    assert_eq!(pairs[1].label, 4.6);
    assert_eq!(pairs[1].lang.as_deref(), Some("en"));
    assert_eq!(pairs[2].origin, "jsts.jsonl:4");

    let bad = r#"{"sentence1": "a", "sentence2": "b", "label": 3}
{"sentence1": "a", "sentence2": "b", "label": 7.5}
{"sentence1": "a", "label": 1}
not json
{"sentence1": "a", "sentence2": "", "label": 1}
{"sentence1": "a", "sentence2": "b"}
"#;
    let p = problems(parse_pairs(bad.as_bytes(), "bad.jsonl", StsFormat::Jsonl).unwrap_err());
    assert_problems(
        &p,
        &[
            ("bad.jsonl:2:", "outside [0, 5]"),
            ("bad.jsonl:3:", "sentence2"),
            ("bad.jsonl:4:", "invalid JSON"),
            ("bad.jsonl:5:", "empty"),
            ("bad.jsonl:6:", "label"),
        ],
    );
}

/// GLUE's STS-B TSV: ten columns, `score`, and quotes that are plain characters.
#[test]
fn stsb_tsv_loads_with_stray_quotes() {
    let tsv = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n\
1\tmain-news\theadlines\t2013\t0002\tnone\tnone\tHe said \"no comment.\tThe \"spokesman\" declined.\t2.400\n";
    let pairs = parse_pairs(tsv.as_bytes(), "sts-b.tsv", StsFormat::Tsv).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].sentence1, "He said \"no comment.");
    assert_eq!(pairs[1].label, 2.4);
    assert_eq!(pairs[1].origin, "sts-b.tsv:3");

    let bad = "sentence1\tsentence2\tscore\na\tb\t1\nonly two\tfields\nc\td\tx\n";
    let p = problems(parse_pairs(bad.as_bytes(), "bad.tsv", StsFormat::Tsv).unwrap_err());
    assert_problems(
        &p,
        &[
            ("bad.tsv:3:", "expected 3 fields"),
            ("bad.tsv:4:", "not a number"),
        ],
    );
}

#[test]
fn csv_loads_quoted_fields_and_a_bad_header_is_reported() {
    let csv = "sentence1,sentence2,label\n\"Hello, world.\",\"Hi, \"\"world\"\".\",4.2\nx,y,0\n";
    let pairs = parse_pairs(csv.as_bytes(), "p.csv", StsFormat::Csv).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0].sentence1, "Hello, world.");
    assert_eq!(pairs[0].sentence2, "Hi, \"world\".");
    let p = problems(parse_pairs(b"s1,s2,label\na,b,1\n", "h.csv", StsFormat::Csv).unwrap_err());
    assert!(
        p[0].starts_with("h.csv:1:") && p[0].contains("sentence1"),
        "{p:?}"
    );
    let p = problems(parse_pairs(b"", "empty.csv", StsFormat::Csv).unwrap_err());
    assert!(p[0].contains("no sentence pairs"), "{p:?}");
}

#[test]
fn formats_are_chosen_by_extension() {
    assert_eq!(StsFormat::Auto.resolve(Path::new("a.csv")), StsFormat::Csv);
    assert_eq!(StsFormat::Auto.resolve(Path::new("a.TSV")), StsFormat::Tsv);
    assert_eq!(
        StsFormat::Auto.resolve(Path::new("a.jsonl")),
        StsFormat::Jsonl
    );
    assert_eq!(StsFormat::Csv.resolve(Path::new("a.jsonl")), StsFormat::Csv);
    assert!("xml".parse::<StsFormat>().is_err());
}

#[test]
fn ftlab_sts_files_load() {
    let fmt = StsFormat::Auto;
    let train = ftlab::train::data::sts::load_pairs(&repo("data/sts/train.jsonl"), fmt).unwrap();
    let held = ftlab::train::data::sts::load_pairs(&repo("data/sts/heldout.jsonl"), fmt).unwrap();
    assert_eq!((train.len(), held.len()), (757, 129));
}

// ------------------------------------------------------------------ configs and presets

#[test]
fn sts_presets_parse_and_sts_specific_fields_are_checked() {
    for p in ["sts-baseline", "sts-grad-ckpt", "sts-lora"] {
        let cfg = RunConfig::load(&repo(&format!("presets/{p}.toml")), &[]).unwrap();
        assert_eq!(cfg.task, TaskKind::Sts, "{p}");
        assert_eq!(cfg.model.spec, "minilm");
    }
    let sft = RunConfig::load(&repo("presets/baseline.toml"), &[]).unwrap();
    assert_eq!(sft.task, TaskKind::Sft);
    let base = repo("presets/sts-lora.toml");
    let err = RunConfig::load(&base, &["model.quant=nf4".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("model.quant"), "{err:#}");
    let err = RunConfig::load(&base, &["data.format=xml".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("data.format"), "{err:#}");
    let err = RunConfig::load(&base, &["task=regression".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("regression"), "{err:#}");
}

// ------------------------------------------------------------------ tiny encoder

fn tiny_config(vocab: usize) -> BertConfig {
    BertConfig {
        vocab_size: vocab,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        hidden_act: BertActivation::Gelu,
        max_position_embeddings: 128,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
    }
}

fn minilm_dir() -> PathBuf {
    match ftlab::hub::resolve("minilm") {
        Ok(r) => match r.source {
            ftlab::hub::ModelSource::HfDir { dir } => dir,
            other => panic!("minilm resolved to {other:?}"),
        },
        Err(e) => panic!("cannot resolve minilm: {e:#}"),
    }
}

/// A random tiny BERT written as an HF sentence-encoder directory with MiniLM's tokenizer.
fn write_tiny_bert(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = minilm_dir();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let vocab = 30522;
    let cfg = tiny_config(vocab);
    let opts = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let loaded = Bert::build(&RandomSource::new(1.0), &cfg, &opts).unwrap();
    let tensors: HashMap<String, Tensor> = loaded
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": vocab, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu",
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// A padded batch of 3 pairs for a vocabulary of 50.
fn tiny_batch() -> StsBatch {
    let dev = Device::Cpu;
    let ids = Tensor::new(
        &[
            [1u32, 5, 7, 9, 2, 0],
            [1, 3, 2, 0, 0, 0],
            [1, 11, 12, 13, 14, 2],
            [1, 5, 8, 2, 0, 0],
            [1, 4, 4, 6, 2, 0],
            [1, 20, 2, 0, 0, 0],
        ],
        &dev,
    )
    .unwrap();
    let mask = ids.ne(0u32).unwrap().to_dtype(DType::U32).unwrap();
    StsBatch {
        input_ids: ids,
        attention_mask: mask,
        targets: Tensor::new(&[0.8f32, -0.4, 0.1], &dev).unwrap(),
        indices: vec![0, 1, 2],
    }
}

/// Per-layer recomputation gives the gradients of the plain backward (full fine-tuning
/// and LoRA on a frozen base).
#[test]
fn checkpointed_equals_plain_gradients_for_bert() {
    let batch = tiny_batch();
    for lora in [false, true] {
        let opts = LoadOptions {
            trainable: !lora,
            ..LoadOptions::default()
        };
        let mut loaded = Bert::build(&RandomSource::new(1.0), &tiny_config(50), &opts).unwrap();
        let params = if lora {
            let cfg = LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: TargetModules::default(),
                modules_to_save: vec![],
            };
            let vars = apply_lora_to_linears(
                loaded.model.linears_mut(),
                &cfg,
                DType::F32,
                &Device::Cpu,
                3,
            )
            .unwrap();
            // B starts at zero; give it values so that A's gradient is not trivially 0.
            for (name, v) in &vars {
                if name.ends_with("lora_B.weight") {
                    v.set(&Tensor::randn(0f32, 0.1, v.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
            vars
        } else {
            loaded.params.clone()
        };
        assert!(!params.is_empty());
        let mut plain = vec![None; params.len()];
        let mut ckpt = vec![None; params.len()];
        let l1 =
            sts_task::forward_backward(&loaded.model, &params, &batch, false, &mut plain).unwrap();
        let l2 =
            sts_task::forward_backward(&loaded.model, &params, &batch, true, &mut ckpt).unwrap();
        assert_eq!(l1, l2, "loss");
        let mut worst = 0f32;
        for ((name, _), (a, b)) in params.iter().zip(plain.iter().zip(&ckpt)) {
            let (a, b) = (
                a.as_ref()
                    .unwrap_or_else(|| panic!("{name}: no plain gradient")),
                b.as_ref()
                    .unwrap_or_else(|| panic!("{name}: no checkpointed gradient")),
            );
            worst = worst.max(max_abs_diff(a, b));
        }
        eprintln!(
            "lora={lora}: {} variables, max |Δgrad| = {worst:e}",
            params.len()
        );
        assert!(worst <= 1e-6, "checkpointed gradients differ by {worst}");
    }
}

fn small_pairs(root: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo("data/sts/train.jsonl")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"lang\": \"en\""))
        .take(n)
        .collect();
    let path = root.join(format!("sts-{n}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn tiny_preset(root: &Path, model: &Path, data: &Path, extra: &str) -> RunConfig {
    let rest = format!(
        r#"max_seq_len = 64
[train]
seed = 3
batch_size = 8
lr = 3e-3
schedule = "constant"
epochs = 6
eval_every = 0
save_total_limit = 1
{extra}"#
    );
    let path = common::write_preset(
        root,
        "name = \"tiny-sts\"\ntask = \"sts\"",
        model,
        data,
        &rest,
    );
    RunConfig::load(&path, &[]).unwrap()
}

fn train(
    cfg: &RunConfig,
    dir: &Path,
) -> (f64, Vec<(usize, f64, f64)>, ftlab::train::trainer::Summary) {
    let task = StsTask::from_config(cfg, Path::new("."), &candle_core::Device::Cpu).unwrap();
    let before = task.evaluate(32, 0).unwrap().unwrap();
    let mut evals = Vec::new();
    let summary = common::run_trainer(cfg, task, dir, false, |l, _| {
        if let TrainEvent::Eval {
            step,
            loss,
            metrics,
            ..
        } = &l.event
        {
            evals.push((*step, *loss, metrics["spearman"]));
        }
    });
    (before.loss, evals, summary)
}

/// Full fine-tuning and LoRA both lower the STS loss of a tiny encoder on its training
/// pairs; eval events carry Pearson and Spearman; the results load back as encoders that
/// score like the run's best evaluation.
#[test]
fn sts_loss_falls_on_a_tiny_model_and_results_load_back() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny-bert");
    write_tiny_bert(&model);
    let data = small_pairs(root.path(), 48);
    let mut curves = HashMap::new();
    for (name, extra) in [
        ("full", ""),
        ("ckpt", ""),
        ("lora", "[lora]\nr = 8\nalpha = 16\n"),
    ] {
        let mut cfg = tiny_preset(root.path(), &model, &data, extra);
        if name == "ckpt" {
            cfg.model.gradient_checkpointing = true;
        }
        let dir = root.path().join(format!("run-{name}"));
        let (before, evals, summary) = train(&cfg, &dir);
        let last = evals.last().unwrap().1;
        eprintln!("{name}: eval loss {before:.4} → {last:.4}; evals {evals:?}");
        // One evaluation per epoch (after the untrained model's, when the trainer makes one).
        assert_eq!(
            evals.iter().filter(|e| e.0 > 0).count(),
            6,
            "one evaluation per epoch"
        );
        curves.insert(name, evals.clone());
        assert!(last < 0.7 * before, "{name}: loss {before} → {last}");
        assert!(summary.best_eval_metrics.contains_key("pearson"));
        let best_spearman = summary.best_eval_metrics["spearman"];
        // The run directory loads as an encoder (its best checkpoint) and reproduces the
        // best evaluation.
        let (enc, desc) = load_encoder(&dir.to_string_lossy(), &Default::default()).unwrap();
        assert!(desc.contains("best"), "{desc}");
        let pairs = ftlab::train::data::sts::load_pairs(&data, StsFormat::Auto).unwrap();
        let d = StsData::new(pairs, enc.tokenizer(), 64, enc.device()).unwrap();
        let ev = evaluate_model(enc.model(), &d, 32).unwrap();
        assert!(
            (ev.metrics["spearman"] - best_spearman).abs() < 1e-4,
            "{name}: reloaded {} vs best {best_spearman}",
            ev.metrics["spearman"]
        );
        let run = RunDir::new(&dir);
        if name == "lora" {
            let cfg_text =
                std::fs::read_to_string(run.adapter().join("adapter_config.json")).unwrap();
            assert!(cfg_text.contains("FEATURE_EXTRACTION"), "{cfg_text}");
        } else {
            // model/ is a complete sentence-encoder directory.
            Embedder::from_dir(&run.model(), &LoadOptions::default()).unwrap();
        }
    }
    // Checkpointing changes memory, not the result.
    assert_eq!(curves["full"], curves["ckpt"]);
}

/// Full fine-tuning of the encoder in bf16 (what `model.dtype = "auto"` gives on a GPU),
/// here on the CPU: the optimiser updates f32 masters of the bf16 weights, the loss falls
/// and `model/` holds the masters (f32 values off the bf16 grid).
#[test]
fn bf16_sts_full_fine_tuning_learns_with_f32_masters() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny-bert");
    write_tiny_bert(&model);
    let data = small_pairs(root.path(), 48);
    let mut cfg = tiny_preset(root.path(), &model, &data, "");
    cfg.model.dtype = ftlab::config::ComputeDtype::Bf16;
    let dir = root.path().join("run-bf16");
    let (before, evals, _) = train(&cfg, &dir);
    let last = evals.last().unwrap().1;
    assert!(last < 0.7 * before, "bf16: loss {before} → {last}");
    let run = RunDir::new(&dir);
    let saved = candle_core::safetensors::load(
        run.model().join(ftlab::runs::layout::FULL_WEIGHTS),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let off_grid = saved
        .values()
        .filter(|t| common::off_the_bf16_grid(t))
        .count();
    assert!(off_grid * 2 > saved.len(), "{off_grid} of {}", saved.len());
}

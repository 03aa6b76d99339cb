//! Shared test helpers: a tiny LLaMA written as a real HF directory with SmolLM2's tokenizer.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use ftlab::config::RunConfig;
use ftlab::runs::layout::RunDir;
use ftlab::train::events::EventLine;
use ftlab::train::trainer::{Summary, TrainTask, Trainer};

use ftlab::infer::LanguageModel;
use ftlab::model::tiny::{tiny_llama_config, write_tiny_llama};
use ftlab::model::LoadOptions;
use ftlab::tui::{draw, App};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

pub fn smollm2() -> &'static LanguageModel {
    static LM: OnceLock<LanguageModel> = OnceLock::new();
    LM.get_or_init(|| {
        LanguageModel::load_spec("smollm2", &LoadOptions::default()).expect("SmolLM2")
    })
}

/// A tiny random LLaMA (vocabulary of SmolLM2) in a fresh directory under `root`.
pub fn tiny_model(root: &Path) -> PathBuf {
    let dir = root.join("tiny-llama");
    let cfg = tiny_llama_config(smollm2().model.vocab_size());
    write_tiny_llama(&dir, &cfg, smollm2().text_side()).expect("write tiny model");
    dir
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A small SFT file: the first `n` lines of ftlab's training set.
pub fn small_sft(root: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo("data/sft/train.jsonl")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            // Short English examples keep the tiny runs fast.
            l.contains("\"lang\": \"en\"") || l.contains("\"lang\":\"en\"")
        })
        .take(n)
        .collect();
    let path = root.join(format!("sft-{n}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A preset for the tiny model; `extra` is appended TOML.
pub fn preset(root: &Path, model: &Path, data: &Path, extra: &str) -> PathBuf {
    write_preset(
        root,
        "name = \"tiny\"",
        model,
        data,
        &format!(
            r#"max_seq_len = 96
[train]
seed = 7
batch_size = 4
lr = 3e-3
warmup_steps = 0
schedule = "constant"
max_steps = 12
save_every = 4
save_total_limit = 10
{extra}"#
        ),
    )
}

/// Writes `root/preset.toml`: `top` (name, task), `[model] spec = model`, `[data]` with
/// `data` as both train and eval set, then `rest` (more `[data]` keys, then the other
/// tables).
pub fn write_preset(root: &Path, top: &str, model: &Path, data: &Path, rest: &str) -> PathBuf {
    let text = format!(
        "{top}\n[model]\nspec = \"{}\"\n[data]\ntrain = \"{}\"\neval = \"{}\"\n{rest}\n",
        model.display(),
        data.display(),
        data.display()
    );
    let path = root.join("preset.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Trains `task` as `cfg` says into `dir` (resuming from its checkpoint when `resume`),
/// handing every event to `on_event` together with the stop flag it may raise.
pub fn run_trainer<T: TrainTask>(
    cfg: &RunConfig,
    task: T,
    dir: &Path,
    resume: bool,
    mut on_event: impl FnMut(&EventLine, &AtomicBool),
) -> Summary {
    let mut trainer = Trainer {
        cfg: cfg.clone(),
        run: RunDir::new(dir),
        task,
        predicted_peak_bytes: None,
        batch_note: None,
    };
    let stop = AtomicBool::new(false);
    let mut sink = |l: &EventLine| on_event(l, &stop);
    trainer.run(resume, &stop, &mut sink).unwrap()
}

/// Fails the test with the command's stderr unless it exited successfully.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Normal values (mean 0, standard deviation `std`) from a fixed seed: the same tensor on
/// every run, so that a comparison within a rounding tolerance passes or fails the same
/// way each time (candle's CPU `randn` cannot be seeded).
pub fn seeded_normal(shape: &[usize], std: f32, seed: u64) -> candle_core::Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            z as f32 * std
        })
        .collect();
    candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

/// Largest absolute element-wise difference of two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Whether the f32 tensor `t` holds values a bf16 tensor cannot (an f32 master's, not a
/// bf16 weight widened).
pub fn off_the_bf16_grid(t: &candle_core::Tensor) -> bool {
    use candle_core::DType;
    let rounded = t
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    t.dtype() == DType::F32 && max_abs_diff(t, &rounded) > 0.0
}

/// The dashboard drawn on a `w`×`h` TestBackend, as text (one line per row).
pub fn render(app: &mut App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// A tiny GPT-NeoX (vocabulary 61, hidden 32, two layers).
pub fn tiny_neox(parallel: bool, rotary_pct: f64, tie: bool) -> ftlab::model::ArchConfig {
    ftlab::model::ArchConfig::from(ftlab::model::gpt_neox::GptNeoxConfig {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        rotary_pct,
        rotary_emb_base: 10_000.0,
        layer_norm_eps: 1e-5,
        max_position_embeddings: 64,
        use_parallel_residual: parallel,
        tie_word_embeddings: tie,
        hidden_act: "gelu".into(),
    })
}

/// A tiny Gemma 3 (vocabulary 61, hidden 32, three layers: local, global, local) whose
/// sliding window is shorter than the test sequences.
pub fn tiny_gemma3(window: usize) -> ftlab::model::ArchConfig {
    use ftlab::model::gemma3::{Gemma3Config, LayerKind};
    ftlab::model::ArchConfig::from(Gemma3Config {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_local_theta: 10_000.0,
        max_position_embeddings: 64,
        sliding_window: window,
        query_pre_attn_scalar: 12.0,
        layer_types: vec![LayerKind::Sliding, LayerKind::Full, LayerKind::Sliding],
        tie_word_embeddings: true,
    })
}

/// A JSON array of token ids (a reference fixture's).
pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

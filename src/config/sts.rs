//! What a config says that only sentence-similarity (STS) runs read, and the checks an STS
//! config must pass when its preset is loaded.
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::{QuantKind, RunConfig, TaskKind};

/// `data.label_scale`: the cosine similarity a 0–5 label is trained towards (the targets
/// are computed by `train::data::sts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelScale {
    /// 0 → −1, 5 → 1: the whole cosine range.
    #[default]
    Signed,
    /// 0 → 0, 5 → 1 (sentence-transformers' STS-B example, `score / 5`).
    Unit,
}

impl RunConfig {
    /// Checks the fields of a run config that matter for an STS run.
    pub fn validate_sts(&self) -> Result<()> {
        if self.model.quant != QuantKind::None {
            bail!("task = \"sts\": model.quant must be \"none\" (4-bit bases are for causal LMs; use [lora] alone)");
        }
        if let Some(l) = &self.lora {
            if !l.modules_to_save.is_empty() {
                bail!("task = \"sts\": lora.modules_to_save is not supported for encoders");
            }
        }
        self.data
            .format
            .check(TaskKind::Sts)
            .map_err(|e| anyhow!("task = \"sts\": {e}"))?;
        if self.data.packing {
            bail!("task = \"sts\": data.packing applies to SFT only");
        }
        if self.data.neftune_alpha > 0.0 {
            bail!("task = \"sts\": data.neftune_alpha applies to SFT only");
        }
        Ok(())
    }
}

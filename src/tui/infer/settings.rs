//! The Inference tab's editable settings: sampling, then retrieval.
use super::InferState;

/// The settings editable in the Inference tab (sampling, then retrieval).
pub const SAMPLING_FIELDS: [&str; 9] = [
    "temperature",
    "top-p",
    "top-k",
    "repeat penalty",
    "max new tokens",
    "seed",
    "system prompt",
    "documents",
    "chunks (k)",
];

impl InferState {
    /// The value of setting `field` as text.
    pub fn sampling_value(&self, field: usize) -> String {
        let s = &self.sampling;
        match field {
            0 => format!("{}", s.temperature),
            1 => format!("{}", s.top_p),
            2 => s.top_k.to_string(),
            3 => format!("{}", s.repeat_penalty),
            4 => self.max_new_tokens.to_string(),
            5 => s.seed.to_string(),
            6 => self.system.clone(),
            7 => self.docs.clone(),
            _ => self.top_k.to_string(),
        }
    }

    /// Sets setting `field` from text; a value that does not parse or validate is refused
    /// and the old one kept.
    pub(super) fn set_sampling(&mut self, field: usize, v: &str) -> Result<(), String> {
        let mut s = self.sampling.clone();
        let bad = |e: &dyn std::fmt::Display| format!("`{v}`: {e}");
        let positive = |v: &str| -> Result<usize, String> {
            match v.parse::<usize>() {
                Ok(0) => Err("must be at least 1".into()),
                Ok(n) => Ok(n),
                Err(e) => Err(bad(&e)),
            }
        };
        match field {
            0 => s.temperature = v.parse().map_err(|e| bad(&e))?,
            1 => s.top_p = v.parse().map_err(|e| bad(&e))?,
            2 => s.top_k = v.parse().map_err(|e| bad(&e))?,
            3 => s.repeat_penalty = v.parse().map_err(|e| bad(&e))?,
            4 => self.max_new_tokens = positive(v)?,
            5 => s.seed = v.parse().map_err(|e| bad(&e))?,
            6 => self.system = v.to_string(),
            7 => {
                if !std::path::Path::new(v).is_dir() {
                    return Err(format!("`{v}` is not a folder"));
                }
                self.docs = v.to_string();
            }
            _ => self.top_k = positive(v)?,
        }
        s.validate().map_err(|e| e.to_string())?;
        self.sampling = s;
        Ok(())
    }
}

//! Sentence encoders by name or by what training produced: a model spec, an encoder
//! directory, a PEFT adapter on its base model, or an STS run directory (which of its
//! results is [`encoder_result`]'s to say).
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::adapt::peft::{load_adapter_linears, read_peft_config};
use crate::infer::embed::{encoder_dir, Embedder};
use crate::model::LoadOptions;
use crate::runs::layout::{encoder_result, EncoderResult};

/// Loads a sentence encoder: a model spec (`minilm`, an HF directory, `hf:org/name`), a
/// fully fine-tuned checkpoint directory, a PEFT adapter directory (on its base model), or
/// an STS run directory — its `best/` checkpoint (the best held-out Spearman), else
/// `adapter/`, else `model/`. Returns the encoder and a description of what was loaded.
pub fn load_encoder(spec: &str, opts: &LoadOptions) -> Result<(Embedder, String)> {
    let opts = LoadOptions {
        trainable: false,
        quant4: None,
        ..opts.clone()
    };
    let path = Path::new(spec);
    match encoder_result(path) {
        EncoderResult::Adapter(dir) => load_adapter_encoder(&dir, &opts),
        EncoderResult::Encoder(dir) => {
            let e = Embedder::from_dir(&dir, &opts)?;
            Ok((e, format!("encoder {}", dir.display())))
        }
        EncoderResult::RunWithoutResult => bail!(
            "{}: this run has no encoder to load (no best/, adapter/ or model/ with weights); is it an STS run that saved a checkpoint?",
            path.display()
        ),
        EncoderResult::NotARun => {
            let dir = encoder_dir(spec)?;
            let e = Embedder::from_dir(&dir, &opts)?;
            Ok((e, format!("encoder {spec} ({})", dir.display())))
        }
    }
}

/// A PEFT adapter directory on the base encoder its config names.
fn load_adapter_encoder(path: &Path, opts: &LoadOptions) -> Result<(Embedder, String)> {
    let peft = read_peft_config(path)?;
    let base = peft.base_model_name_or_path.clone().ok_or_else(|| {
        anyhow!(
            "{}: adapter_config.json names no base model (base_model_name_or_path)",
            path.display()
        )
    })?;
    let mut e = Embedder::from_dir(&encoder_dir(&base)?, opts)?;
    let device = e.device().clone();
    let dtype = e.model().dtype();
    let vars = load_adapter_linears(path, e.model_mut().linears_mut(), &device, dtype)?;
    // Inference only: no autograd graph behind the embeddings.
    for (_, l) in e.model_mut().linears_mut() {
        l.freeze();
    }
    Ok((
        e,
        format!(
            "{base} + LoRA adapter {} ({} tensors)",
            path.display(),
            vars.len()
        ),
    ))
}

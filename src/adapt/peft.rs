//! Applying LoRA to a model, and the Hugging Face PEFT on-disk format
//! (`adapter_config.json` + `adapter_model.safetensors`), so that adapters trained here
//! load in peft and adapters trained by peft load here.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::linear::{BaseWeight, Linear, LoraAdapter};
use crate::model::CausalLm;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const PEFT_PREFIX: &str = "base_model.model.";

/// Which linear layers get an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// "all-linear": every linear layer of the transformer blocks (not the LM head).
    Preset(String),
    /// Module names matched as in PEFT: the full name or its dotted suffix (`q_proj`).
    Names(Vec<String>),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::Preset("all-linear".into())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f32,
    #[serde(default)]
    pub target_modules: TargetModules,
    /// Extra modules trained in full and saved with the adapter (e.g. `embed_tokens`,
    /// `lm_head`), as PEFT's `modules_to_save`.
    #[serde(default)]
    pub modules_to_save: Vec<String>,
}

fn matches(name: &str, target: &str) -> bool {
    name == target || name.ends_with(&format!(".{target}"))
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            bail!("lora.r must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora.dropout must be in [0, 1), got {}", self.dropout);
        }
        if let TargetModules::Preset(p) = &self.target_modules {
            if p != "all-linear" {
                bail!("lora.target_modules = \"{p}\": expected \"all-linear\" or a list of module names");
            }
        }
        Ok(())
    }

    fn targets(&self, name: &str) -> bool {
        match &self.target_modules {
            TargetModules::Preset(_) => true,
            TargetModules::Names(ns) => ns.iter().any(|t| matches(name, t)),
        }
    }
}

/// Adds fresh adapters to the targeted layers and makes `modules_to_save` trainable.
/// Returns the trainable variables under their PEFT names.
/// `seed` fixes the adapters' initialisation (each layer draws from seed ⊕ its name).
pub fn apply_lora(
    model: &mut CausalLm,
    cfg: &LoraConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, Var)>> {
    let mut vars = apply_lora_to_linears(model.linears_mut(), cfg, dtype, device, seed)?;
    vars.extend(make_modules_trainable(model, &cfg.modules_to_save)?);
    Ok(vars)
}

/// Adds fresh adapters to the targeted layers among `linears` (named linear layers of any
/// model, e.g. `Bert::linears_mut()`). `modules_to_save` is the caller's business.
/// Returns the adapter variables under their PEFT names.
pub fn apply_lora_to_linears(
    linears: Vec<(String, &mut Linear)>,
    cfg: &LoraConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, Var)>> {
    cfg.validate()?;
    let mut vars = Vec::new();
    let mut all_names = Vec::new();
    for (name, linear) in linears {
        all_names.push(name.clone());
        if !cfg.targets(&name) {
            continue;
        }
        let a = LoraAdapter::new(
            linear.in_features(),
            linear.out_features(),
            cfg.r,
            cfg.alpha,
            cfg.dropout,
            dtype,
            device,
            seed ^ fnv1a(&name),
        )?;
        vars.push((format!("{PEFT_PREFIX}{name}.lora_A.weight"), a.a.clone()));
        vars.push((format!("{PEFT_PREFIX}{name}.lora_B.weight"), a.b.clone()));
        linear.set_lora(Some(a));
    }
    if vars.is_empty() {
        let mut suffixes: Vec<&str> = all_names
            .iter()
            .filter_map(|n| n.rsplit('.').next())
            .collect();
        suffixes.sort();
        suffixes.dedup();
        bail!(
            "lora.target_modules {:?} matched no linear layer; this model has: {}",
            cfg.target_modules,
            suffixes.join(", ")
        );
    }
    Ok(vars)
}

/// A stable 64-bit hash of a module name (FNV-1a), for per-layer seeds.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Turns `modules_to_save` (embeddings, untied LM head) into trainable variables.
fn make_modules_trainable(model: &mut CausalLm, modules: &[String]) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    for m in modules {
        let embed = model.embed_module_name();
        let head = model.head_module_name();
        if matches(&embed, m) {
            let v = Var::from_tensor(&model.embed_weight().detach())?;
            model.set_embed(v.as_tensor().clone());
            vars.push((format!("{PEFT_PREFIX}{embed}.weight"), v));
        } else if matches(&head, m) {
            let l = model
                .lm_head_mut()
                .ok_or_else(|| anyhow!("modules_to_save `{m}`: the LM head is tied to the embeddings; train `{embed}` instead"))?;
            let v = Var::from_tensor(&l.base().dense()?.detach())?;
            l.set_base(BaseWeight::Dense(v.as_tensor().clone()));
            vars.push((format!("{PEFT_PREFIX}{head}.weight"), v));
        } else {
            bail!("modules_to_save `{m}`: only the input embeddings (`{embed}`) and the LM head (`{head}`) are supported");
        }
    }
    Ok(vars)
}

/// PEFT's adapter_config.json (the fields ftlab reads and writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f32,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub inference_mode: bool,
    /// peft ≥ 0.18: the tied LM head follows a trained embedding (`modules_to_save`) instead
    /// of keeping the base table; ftlab trains them as one table, so it writes `true` then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ensure_weight_tying: bool,
}

/// Writes the model's adapters (and modules_to_save) in PEFT's layout.
pub fn save_adapter(
    dir: &Path,
    model: &mut CausalLm,
    cfg: &LoraConfig,
    base_model: &str,
    extra: &[(String, Var)],
) -> Result<()> {
    let embed = model.embed_module_name();
    let tied_and_trained = model.shape().tied_embeddings
        && cfg
            .modules_to_save
            .iter()
            .any(|m| embed == *m || embed.ends_with(&format!(".{m}")));
    // With `ensure_weight_tying`, peft reads the tied head's table under the head's own
    // name too: the trained table is written twice (safetensors has no aliases).
    let mut extra = extra.to_vec();
    if tied_and_trained {
        let trained = format!("{PEFT_PREFIX}{embed}.weight");
        if let Some((_, var)) = extra.iter().find(|(n, _)| *n == trained).cloned() {
            extra.push((
                format!("{PEFT_PREFIX}{}.weight", model.head_module_name()),
                var,
            ));
        }
    }
    save_adapter_linears(
        dir,
        model.linears_mut(),
        cfg,
        base_model,
        &extra,
        AdapterKind {
            task_type: "CAUSAL_LM",
            ensure_weight_tying: tied_and_trained,
        },
    )
}

/// What PEFT is told about the model an adapter is for.
pub struct AdapterKind {
    /// PEFT's `task_type` (`CAUSAL_LM`, `FEATURE_EXTRACTION`).
    pub task_type: &'static str,
    /// The embedding is trained and the LM head is tied to it.
    pub ensure_weight_tying: bool,
}

/// Writes the adapters found on `linears` (and the non-LoRA variables of `extra`, i.e.
/// modules_to_save) in PEFT's layout.
pub fn save_adapter_linears(
    dir: &Path,
    linears: Vec<(String, &mut Linear)>,
    cfg: &LoraConfig,
    base_model: &str,
    extra: &[(String, Var)],
    kind: AdapterKind,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut targeted: Vec<String> = Vec::new();
    for (name, linear) in linears {
        if let Some(a) = linear.lora() {
            tensors.insert(
                format!("{PEFT_PREFIX}{name}.lora_A.weight"),
                a.a.as_tensor().to_dtype(DType::F32)?,
            );
            tensors.insert(
                format!("{PEFT_PREFIX}{name}.lora_B.weight"),
                a.b.as_tensor().to_dtype(DType::F32)?,
            );
            if let Some(s) = name.rsplit('.').next() {
                targeted.push(s.to_string());
            }
        }
    }
    if tensors.is_empty() {
        bail!("the model has no LoRA adapters to save");
    }
    for (name, var) in extra {
        if !name.contains(".lora_") {
            tensors.insert(name.clone(), var.as_tensor().to_dtype(DType::F32)?);
        }
    }
    targeted.sort();
    targeted.dedup();
    let peft = PeftConfig {
        peft_type: "LORA".into(),
        task_type: Some(kind.task_type.into()),
        r: cfg.r,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules: TargetModules::Names(targeted),
        modules_to_save: (!cfg.modules_to_save.is_empty()).then(|| cfg.modules_to_save.clone()),
        base_model_name_or_path: Some(base_model.to_string()),
        bias: Some("none".into()),
        fan_in_fan_out: false,
        use_rslora: false,
        use_dora: false,
        inference_mode: true,
        ensure_weight_tying: kind.ensure_weight_tying,
    };
    let tmp = dir.join(format!("{ADAPTER_WEIGHTS}.tmp"));
    crate::weights_file::save(&tensors, &tmp)?;
    crate::files::rename(&tmp, &dir.join(ADAPTER_WEIGHTS))?;
    crate::files::write(
        &dir.join(ADAPTER_CONFIG),
        serde_json::to_string_pretty(&peft)? + "\n",
    )
}

/// Reads `adapter_config.json` of a PEFT adapter directory.
pub fn read_peft_config(dir: &Path) -> Result<PeftConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read the adapter config (is this a LoRA adapter directory?)",
            path.display()
        )
    })?;
    let cfg: PeftConfig = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}:{}:{}: invalid adapter config: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    if cfg.peft_type != "LORA" {
        bail!(
            "{}: peft_type `{}` is not supported (only LORA)",
            path.display(),
            cfg.peft_type
        );
    }
    if cfg.use_dora || cfg.use_rslora || cfg.fan_in_fan_out {
        bail!(
            "{}: DoRA, rsLoRA and fan_in_fan_out adapters are not supported",
            path.display()
        );
    }
    Ok(cfg)
}

/// Loads a PEFT LoRA adapter onto `model` (frozen, for inference or further training).
/// Returns the adapter variables under their PEFT names.
pub fn load_adapter(dir: &Path, model: &mut CausalLm) -> Result<Vec<(String, Var)>> {
    let cfg = read_peft_config(dir)?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let device = model.device().clone();
    let dtype = model.embed_weight().dtype();
    let tensors = read_adapter_weights(&wpath, &device)?;
    let mut vars = attach_adapters(&wpath, &cfg, &tensors, model.linears_mut(), dtype)?;
    let embed_key = format!("{PEFT_PREFIX}{}.weight", model.embed_module_name());
    if let Some(e) = tensors.get(&embed_key) {
        let v = Var::from_tensor(&e.to_dtype(dtype)?)?;
        model.set_embed(v.as_tensor().clone());
        vars.push((embed_key.clone(), v));
    }
    let mut aliases = Vec::new();
    let head_key = format!("{PEFT_PREFIX}{}.weight", model.head_module_name());
    let tied = model.shape().tied_embeddings;
    if let (true, true, Some(h)) = (tied, cfg.ensure_weight_tying, tensors.get(&head_key)) {
        // The tied head's copy of the trained table (see `save_adapter`): one table here.
        if let Some((_, e)) = vars.iter().find(|(n, _)| *n == embed_key) {
            let same = e
                .as_tensor()
                .to_dtype(DType::F32)?
                .eq(&h.to_dtype(DType::F32)?)?;
            if same.min_all()?.to_scalar::<u8>()? == 0 {
                bail!(
                    "{}: ensure_weight_tying is set but `{head_key}` differs from `{embed_key}`",
                    wpath.display()
                );
            }
            aliases.push(head_key.clone());
        }
    } else if let Some(h) = tensors.get(&head_key) {
        let l = model.lm_head_mut().ok_or_else(|| {
            anyhow!(
                "{}: the adapter carries an LM head but the model's head is tied",
                wpath.display()
            )
        })?;
        let v = Var::from_tensor(&h.to_dtype(dtype)?)?;
        l.set_base(BaseWeight::Dense(v.as_tensor().clone()));
        vars.push((head_key, v));
    }
    check_all_used(&wpath, &tensors, &vars, &aliases)?;
    Ok(vars)
}

/// Loads a PEFT LoRA adapter onto named linear layers of any model (e.g.
/// `Bert::linears_mut()`); every tensor of the adapter must find its layer.
pub fn load_adapter_linears(
    dir: &Path,
    linears: Vec<(String, &mut Linear)>,
    device: &Device,
    dtype: DType,
) -> Result<Vec<(String, Var)>> {
    let cfg = read_peft_config(dir)?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let tensors = read_adapter_weights(&wpath, device)?;
    let vars = attach_adapters(&wpath, &cfg, &tensors, linears, dtype)?;
    check_all_used(&wpath, &tensors, &vars, &[])?;
    Ok(vars)
}

fn read_adapter_weights(wpath: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(wpath, device)
        .map_err(|e| anyhow!("{}: cannot read adapter weights: {e}", wpath.display()))?;
    super::finite::ensure_finite(wpath, &tensors)?;
    Ok(tensors)
}

/// Sets the adapters of `tensors` on the matching layers; returns their variables.
fn attach_adapters(
    wpath: &Path,
    cfg: &PeftConfig,
    tensors: &HashMap<String, Tensor>,
    linears: Vec<(String, &mut Linear)>,
    dtype: DType,
) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    for (name, linear) in linears {
        let ka = format!("{PEFT_PREFIX}{name}.lora_A.weight");
        let kb = format!("{PEFT_PREFIX}{name}.lora_B.weight");
        match (tensors.get(&ka), tensors.get(&kb)) {
            (Some(a), Some(b)) => {
                let (r, inf) = a.dims2()?;
                let (outf, rb) = b.dims2()?;
                if r != cfg.r || rb != cfg.r {
                    // As peft: the scale alpha/r would silently be wrong.
                    bail!(
                        "{}: `r` is {}, but `{ka}`/`{kb}` in {} have rank {r}/{rb} (shapes {:?}/{:?}); the adapter config does not match its weights",
                        wpath.with_file_name(ADAPTER_CONFIG).display(), cfg.r, wpath.display(), a.dims(), b.dims()
                    );
                }
                if r != rb || inf != linear.in_features() || outf != linear.out_features() {
                    bail!(
                        "{}: `{ka}`/`{kb}` have shapes {:?}/{:?}, which do not fit layer `{name}` ({} → {})",
                        wpath.display(), a.dims(), b.dims(), linear.in_features(), linear.out_features()
                    );
                }
                let ad = LoraAdapter::from_tensors(
                    a.to_dtype(dtype)?,
                    b.to_dtype(dtype)?,
                    cfg.lora_alpha,
                    cfg.lora_dropout,
                )?;
                vars.push((ka, ad.a.clone()));
                vars.push((kb, ad.b.clone()));
                linear.set_lora(Some(ad));
            }
            (None, None) => {}
            _ => bail!(
                "{}: layer `{name}` has only one of lora_A / lora_B",
                wpath.display()
            ),
        }
    }
    Ok(vars)
}

/// Every tensor of the adapter file must have been used.
/// `aliases`: tensors of the file that are copies of a variable (the tied head's table).
fn check_all_used(
    wpath: &Path,
    tensors: &HashMap<String, Tensor>,
    vars: &[(String, Var)],
    aliases: &[String],
) -> Result<()> {
    if vars.is_empty() {
        bail!(
            "{}: no tensor matches this model's layers (adapter for a different architecture?)",
            wpath.display()
        );
    }
    if vars.len() + aliases.len() < tensors.len() {
        let mut unknown: Vec<&String> = tensors
            .keys()
            .filter(|k| !vars.iter().any(|(n, _)| n == *k) && !aliases.contains(k))
            .collect();
        unknown.sort();
        bail!(
            "{}: {} tensor(s) match no layer of this model, e.g. `{}`",
            wpath.display(),
            unknown.len(),
            unknown[0]
        );
    }
    Ok(())
}

/// Folds every adapter into its base weight (W ← W + scale·BA) and removes the adapters.
pub fn merge_adapters(model: &mut CausalLm) -> Result<usize> {
    let mut merged = 0;
    for (_, linear) in model.linears_mut() {
        if let Some(a) = linear.lora() {
            let w = (linear.base().dense()?.detach() + a.delta_weight()?.detach())?;
            linear.set_base(BaseWeight::Dense(w));
            linear.set_lora(None);
            merged += 1;
        }
    }
    Ok(merged)
}

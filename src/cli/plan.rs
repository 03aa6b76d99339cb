//! `ftlab plan`: the predicted memory of a preset, before launching it.
use std::path::PathBuf;

use anyhow::Result;

use crate::config::RunConfig;
use crate::train::setup::plan_for;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Preset names (qlora, as `ftlab train`) or TOML file(s).
    #[arg(required = true)]
    pub presets: Vec<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// One JSON object per preset instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PlanArgs) -> Result<()> {
    let loc = crate::locations::Locations::from_env();
    for p in &args.presets {
        let cfg = RunConfig::load(&loc.resolve_preset(p)?, &args.overrides)?;
        let plan = plan_for(&cfg)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "preset": p.display().to_string(),
                    "technique": cfg.technique().to_string(),
                    "weights": plan.weights, "gradients": plan.gradients, "optimizer": plan.optimizer,
                    "activations": plan.activations, "overhead": plan.overhead, "total": plan.total,
                    "load_peak": plan.load_peak, "params": plan.params, "trainable_params": plan.trainable_params,
                })
            );
        } else {
            println!(
                "{} — {} (batch {} × seq {}, model {})",
                p.display(),
                cfg.technique(),
                cfg.train.batch_size,
                cfg.data.max_seq_len,
                cfg.model.spec
            );
            println!("{plan}");
        }
    }
    Ok(())
}

//! `ftlab plan`: the predicted memory of a preset, before launching it.
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::{RunConfig, TaskKind};
use crate::plan::{process_peak, step_plan};
use crate::train::setup::{plan_data, plan_input_for};

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
    /// Also list the items behind the components (kept activations, stray gradients, ...).
    #[arg(long)]
    pub details: bool,
}

pub fn run(args: PlanArgs) -> Result<()> {
    let loc = crate::locations::Locations::from_env();
    for p in &args.presets {
        let preset = loc.resolve_preset(p)?;
        let cfg = RunConfig::load(&preset, &args.overrides)?;
        // The rows the run will meet, from its data tokenised as `ftlab train` does; data
        // that cannot be read is planned at `data.max_seq_len` with a note.
        let base = preset.parent().unwrap_or(Path::new("."));
        let data = match cfg.task {
            TaskKind::Sft => match plan_data(&cfg, base) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!(
                        "note: {}: the data could not be read ({e:#}); every row planned at data.max_seq_len = {}",
                        p.display(),
                        cfg.data.max_seq_len
                    );
                    None
                }
            },
            TaskKind::Sts => None,
        };
        let input = plan_input_for(&cfg, data.as_ref())?;
        let plan = step_plan(&input);
        let process = process_peak(&input);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "preset": p.display().to_string(),
                    "technique": cfg.technique().to_string(),
                    "weights": plan.weights, "gradients": plan.gradients, "optimizer": plan.optimizer,
                    "activations": plan.activations, "overhead": plan.overhead, "total": plan.total,
                    "load_peak": plan.load_peak, "params": plan.params, "trainable_params": plan.trainable_params,
                    "process_peak": process, "seq_len": input.seq_len, "accum_seq_len": input.accum_seq_len,
                    "eval_seq_len": input.eval_seq_len,
                    "steady_seq_len": input.steady.map(|r| r.first.max(r.later)),
                    "micro_batch": input.batch_size,
                })
            );
        } else {
            let rows_from = if data.is_some() {
                "the data's longest row"
            } else {
                "data.max_seq_len"
            };
            println!(
                "{} — {} (micro-batch {} × seq {}, {rows_from}; model {})",
                p.display(),
                cfg.technique(),
                input.batch_size,
                input.seq_len,
                cfg.model.spec
            );
            println!("{plan}");
            if args.details {
                for (name, bytes) in &plan.details {
                    println!(
                        "    {name:<40} {:>8.1} MiB",
                        *bytes as f64 / (1u64 << 20) as f64
                    );
                }
            }
            let eval = if input.eval_seq_len > 0 {
                format!(", evaluation at seq {}", input.eval_seq_len)
            } else {
                String::new()
            };
            println!(
                "  process peak     {:>6.1} MiB  (loading, the step{eval})",
                process as f64 / (1u64 << 20) as f64
            );
        }
    }
    Ok(())
}

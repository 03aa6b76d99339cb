//! `--device`, shared by every command that loads a model: resolved once here and passed
//! down in the load options.
use anyhow::Result;

use crate::config::DeviceChoice;
use crate::model::LoadOptions;

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: auto (CUDA when this ftlab is built with it and a GPU answers,
    /// else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Weights of a quantised GGUF for inference: auto keeps the file's quantisation
    /// (Q4_1, Q8_0, Q4_K, …) in the block linear layers and multiplies with quantised
    /// kernels (ftlab's for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, candle's for k-quants); f32
    /// dequantises everything at load (the exact path training uses).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32"])]
    pub dtype: String,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

impl DeviceArgs {
    /// Load options for a frozen model on the chosen device (refused at once, before
    /// anything loads, when this binary cannot use it).
    pub fn load_options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            device: self.device.resolve()?,
            keep_quantized: self.dtype == "auto",
            ..LoadOptions::default()
        })
    }
}

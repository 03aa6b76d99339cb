//! The predicted peak memory of a configuration (`ftlab plan`'s memory model), shown next
//! to each preset and drawn as a line beside the measured memory curve of each run.
use crate::config::RunConfig;

/// Predicted peak memory of training `cfg`, in bytes, or `None` when no prediction can be
/// made without side effects: a default model that is not downloaded yet is not fetched
/// from the UI thread (the dashboard shows "—" until it is).
pub fn predicted_peak_bytes(cfg: &RunConfig) -> Option<u64> {
    if let Ok(model) = crate::hub::find_default(&cfg.model.spec) {
        let cache = crate::hub::cache_dir().ok()?;
        crate::hub::installed(&model, &cache)?;
    }
    crate::train::setup::plan_for(cfg)
        .ok()
        .map(|p| p.expected_peak(false))
}

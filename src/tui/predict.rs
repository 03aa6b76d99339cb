//! The predicted peak memory of a configuration (`ftlab plan`'s memory model), shown next
//! to each preset and drawn as a line beside the measured memory curve of each run.
use crate::config::RunConfig;

/// Predicted peak memory of the whole process training `cfg`, in bytes, with every row
/// planned at `data.max_seq_len`: an upper bound, since the data is not tokenised on the UI
/// thread (a run's worker predicts from its data's own row lengths, and the Runs tab shows
/// that). `None` when no prediction can be made without side effects: a default model that
/// is not downloaded yet is not fetched from the UI thread (the dashboard shows "—" until
/// it is); and for STS runs, which the plan does not model.
pub fn predicted_peak_bytes(cfg: &RunConfig) -> Option<u64> {
    if cfg.task != crate::config::TaskKind::Sft {
        return None;
    }
    if let Ok(model) = crate::hub::find_default(&cfg.model.spec) {
        let cache = crate::hub::cache_dir().ok()?;
        crate::hub::installed(&model, &cache)?;
    }
    let arch = crate::train::setup::arch_of(cfg).ok()?;
    crate::train::setup::predicted_process_peak(cfg, &arch, None).ok()
}

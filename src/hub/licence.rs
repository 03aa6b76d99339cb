//! The licence notice of a model that comes with terms of use (Gemma): shown
//! on stderr the first time the installed model is fetched or used, then
//! remembered in the model directory so that it is not repeated.
use std::fs::OpenOptions;
use std::path::Path;

use super::registry::WheelModel;

/// File in the model directory whose existence records that the notice was
/// shown. It is not in the marker's file list, so a reinstall (a fresh
/// folder) shows the notice again.
pub const NOTICE_SHOWN: &str = ".ftlab-licence-shown";

/// The notice to show now for the model installed in `dir`, or `None` when
/// the model has no terms or the notice was shown before. Recording and
/// deciding are one step (the record file is created exclusively), so two
/// processes starting together show it once. When the record cannot be
/// written (a read-only cache) the notice is returned every time: better
/// repeated than never shown.
pub fn take_notice(spec: &WheelModel, dir: &Path) -> Option<String> {
    let licence = spec.licence.as_ref()?;
    let record = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(NOTICE_SHOWN));
    if matches!(&record, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
        return None;
    }
    Some(format!(
        "note: {}. The terms are installed at {} and published at {}",
        licence.notice,
        dir.join(&licence.file).display(),
        licence.url
    ))
}

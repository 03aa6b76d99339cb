//! The licence notice of a model that comes with terms of use (Gemma): shown
//! on stderr the first time the installed model is fetched or used, then
//! remembered in the model directory so that it is not repeated.
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

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

type Sink = Box<dyn FnMut(String) -> Result<(), String> + Send>;

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// Sends every later notice to `sink` instead of stderr: the dashboard shows them in its
/// footer, since a line written to the terminal it draws on would be drawn over. A notice
/// the sink hands back (its receiver is gone) goes to stderr. The first call wins.
pub fn redirect_notices(sink: impl FnMut(String) -> Result<(), String> + Send + 'static) {
    let _ = SINK.set(Mutex::new(Box::new(sink)));
}

/// Shows `notice`: on stderr, or where [`redirect_notices`] sent notices.
pub fn announce(notice: String) {
    let back = match SINK.get() {
        Some(sink) => match sink.lock() {
            Ok(mut f) => f(notice).err(),
            Err(_) => Some(notice),
        },
        None => Some(notice),
    };
    if let Some(n) = back {
        eprintln!("{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Redirected notices reach the sink; one it hands back goes to stderr (not lost).
    #[test]
    fn notices_go_where_they_are_redirected() {
        let (tx, rx) = mpsc::channel();
        redirect_notices(move |n| {
            if n.contains("refuse") {
                Err(n)
            } else {
                tx.send(n).map_err(|e| e.0)
            }
        });
        announce("note: terms".to_string());
        announce("refuse this one".to_string());
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec!["note: terms".to_string()]
        );
    }
}

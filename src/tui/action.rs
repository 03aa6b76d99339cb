//! What keys ask for. A tab's key handler changes its own state and returns [`Effect`]s for
//! everything beyond it; [`App`](super::App) applies them, and hands the [`Action`]s among
//! them to the event loop (`cli::tui`), which sends them to the supervisor or the inference
//! thread. The dashboard itself never trains or generates.
use super::infer_worker::InferJob;
use crate::runs::supervisor::LaunchRequest;

/// What the event loop must do on the app's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Launch(LaunchRequest),
    Stop(String),
    StopAll,
    SetMaxConcurrent(usize),
    Generate(Box<InferJob>),
    CancelGenerate,
    Quit,
}

/// What a tab's key asks of the app, outside the tab's own state.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A command for the event loop.
    Send(Action),
    /// A line of feedback for the footer.
    Say(String),
    /// Choose the run with this id for the Compare tab, or un-choose it.
    ToggleCompare(String),
    /// Show the Inference tab on the run with this id.
    OpenInInference(String),
}

//! The dashboard: `ftlab` with no arguments.
//!
//! `app` holds the state and turns keys into actions; `ui` and one module per tab draw that
//! state (and nothing else); `widgets` are the shared drawing pieces; `infer_worker` runs the
//! Inference tab's model on its own thread. The event loop that ties them to the terminal,
//! the supervisor and the inference thread is `cli::tui`.
pub mod app;
pub mod compare;
pub mod help;
pub mod infer;
pub mod infer_state;
pub mod infer_worker;
pub mod predict;
pub mod presets;
pub mod runs;
pub mod ui;
pub mod widgets;

pub use app::{Action, App, GpuState, Tab};
pub use ui::draw;

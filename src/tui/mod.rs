//! The dashboard: `ftlab` with no arguments.
//!
//! One module per tab (`presets`, `runs`, `compare`, `infer`), each owning its state, its
//! keys and its drawing: a key handler changes the tab's state and returns [`action::Effect`]s
//! for anything beyond it. `app` keeps what is global (active tab, help, quitting, the
//! footer's message), dispatches keys to the active tab and applies the effects; the
//! [`Action`]s among them go to the event loop. `ui` draws the frame around the tabs;
//! `widgets` are the shared pieces; `infer_worker` runs the Inference tab's model on its own
//! thread. The event loop that ties them to the terminal, the supervisor and the inference
//! thread is `cli::tui`.
pub mod action;
pub mod app;
pub mod compare;
pub mod help;
pub mod infer;
pub mod infer_worker;
pub mod predict;
pub mod presets;
pub mod runs;
pub mod ui;
pub mod widgets;

pub use action::Action;
pub use app::{App, GpuState, Tab};
pub use ui::draw;

//! The shape of a model as the memory model needs it. It is described by the
//! architecture itself (`model::shape`, read from each architecture's weight table).
pub use crate::model::shape::{Arch, LinearSpec, ModelShape, ParamKind, ParamTensor};

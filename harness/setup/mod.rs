//! Container setup: the ordered list of steps ([`SetupOp`]), how it is planned from a
//! container's configuration, and how the init process applies it.

mod apply;
mod ops;
mod plan;

pub(crate) use apply::{apply, ApplyError};
pub use ops::SetupOp;
pub(crate) use plan::{plan, PlanInput, RootfsSource, UpperPlacement};

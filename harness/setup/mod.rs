//! Container setup: the ordered list of steps ([`SetupOp`]), how it is planned from a
//! container's configuration, and how the init process applies it.

mod apply;
mod ops;
mod plan;
mod syscall;

pub(crate) use apply::{apply, ApplyError};
pub use ops::SetupOp;
pub(crate) use plan::{plan, PlanInput, RootfsSource, UpperPlacement};

/// Does, before a fork, the work that the plan's steps can share between containers
/// (compiling the seccomp filter), so that forked children find it done.
pub(crate) fn prepare(ops: &[SetupOp]) {
    for op in ops {
        if let SetupOp::Seccomp { caps } = op {
            crate::confine::seccomp::prepare(caps);
        }
    }
}

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

/// The insta snapshots, found at run time (`CARGO_MANIFEST_DIR` as cargo and nextest set it
/// for the tests they run), so an archive of the tests runs where its sources are now.
#[cfg(test)]
pub(crate) fn snapshots_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_default()
        .join("snapshots")
}

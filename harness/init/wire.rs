//! What the caller and the init tell each other, as JSON over two pipes:
//! the spec on fd 3 (caller → init), one report on fd 4 (init → caller).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::setup::{ApplyError, SetupOp};

/// File descriptor on which the init reads its [`InitSpec`].
pub(crate) const SPEC_FD: i32 = 3;
/// File descriptor on which the init writes its [`InitReport`].
pub(crate) const REPORT_FD: i32 = 4;

/// Everything the init needs to set up the container and run the command.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    /// Setup steps, in order.
    pub ops: Vec<SetupOp>,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// The command's environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub workdir: PathBuf,
    /// Whether a missing working directory is created (the image's, as Docker does).
    #[serde(default)]
    pub create_workdir: bool,
    /// `(uid, gid)` to run the command as, if not root.
    pub user: Option<(u32, u32)>,
    /// The supplementary groups of `user` (its primary group first).
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// How the container ended, from the init's point of view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum InitReport {
    /// A setup step failed; the command never ran.
    SetupFailed(ApplyError),
    /// The command could not be executed.
    ExecFailed {
        /// The program as given.
        program: String,
        /// errno of the failed lookup or `execve`.
        errno: i32,
    },
    /// The command exited normally with this code.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
}

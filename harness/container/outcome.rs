//! What running a container produced.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Whether the command exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by signal {s} ({name})")
            }
        }
    }
}

/// An upper layer kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The kept directory (`STORE/kept/ID`), holding `upper/`, `lowers` (the lower layers)
    /// and `scaffold` (what pristine's setup made in the upper layer).
    pub dir: PathBuf,
}

impl Kept {
    /// The upper layer: everything the container changed.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// What the container changed, `docker diff` style.
    pub fn diff(&self) -> std::io::Result<Vec<crate::diff::Change>> {
        crate::diff::diff_kept(&self.dir)
    }
}

/// The result of running a command in a container.
#[derive(Debug, Clone)]
#[must_use]
pub struct Outcome {
    /// The container's id (unique among live containers of this store).
    pub id: String,
    /// How the command ended (`Signaled(9)` if it timed out).
    pub status: ExitStatus,
    /// Captured standard output (empty when output is inherited).
    pub stdout: Vec<u8>,
    /// Captured standard error (empty when output is inherited).
    pub stderr: Vec<u8>,
    /// From the start of container creation to the end of teardown.
    pub duration: Duration,
    /// Whether the container was killed because its timeout expired.
    pub timed_out: bool,
    /// The kept upper layer, if keeping was asked for and applied.
    pub kept: Option<Kept>,
    /// `Some(limit)` if a `fork` or `clone` in the container failed because it had as many
    /// processes as its pids limit allows (the kernel's `pids.events`).
    pub pids_limit_hit: Option<u64>,
    /// `Some(limit in bytes)` if the container hit its memory limit and the kernel killed
    /// one of its processes for it (the command itself, if `status` is `Signaled(9)`).
    pub oom_killed: Option<u64>,
}

impl Outcome {
    /// Standard output, lossily decoded.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error, lossily decoded.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

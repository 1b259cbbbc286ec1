//! Test harness: every test in its own container, on libtest-mimic, for `cargo test` and
//! `cargo nextest run`; and `pristine wrap`, which does the same for unmodified test
//! binaries as a nextest wrapper script.
//!
//! - [`Harness`] (discovery and execution, `harness.rs`): the builder and its trials; the
//!   test list is built without touching the kernel or any image.
//! - `inside.rs`: what the re-executed test binary does in its container.
//! - [`Service`] (`service.rs`): services and their readiness checks.
//! - [`carry`]: running a host binary in an image without a compatible libc.
//! - `report.rs`: failure reports and timing summaries.
//! - `registered.rs`: tests declared with [`#[pristine::test]`](crate::test).
//! - [`wrap`]: the nextest wrapper.

/// `eprintln!` that ignores a closed or failing stderr (`pristine wrap … 2>&1 | head -1`)
/// instead of panicking: a message is never worth a panic or a lost exit status.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `print!`/`eprint!` of a whole text, ignoring a closed stream, as [`say!`].
macro_rules! put {
    ($stream:expr, $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!($stream.lock(), $($arg)*);
    }};
}

pub mod carry;
mod harness;
mod inside;
mod registered;
mod report;
mod service;
pub mod wrap;

pub use harness::{Ctx, Finished, Harness, TestResult, DEFAULT_TIMEOUT, KEEP_ENV, TIMEOUT_ENV};
pub use inside::{INSIDE_ENV, PORTS_ENV};
pub use report::{render_diff, TestTiming};
pub use service::{Ready, Service, ServiceError, FALLBACK_LOG_DIR, LOG_DIR};

/// Used by the code that `#[pristine::test]` generates; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use super::registered::{Registered, TestOutput};
    pub use inventory;
}

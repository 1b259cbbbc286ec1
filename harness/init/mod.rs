//! The container's init: pristine's own binary, re-executed as PID 1 of the container.
//!
//! The caller may be multithreaded (a test harness), so no setup work happens between its
//! `clone` and `exec`; instead the freshly exec'd, single-threaded init applies the setup
//! plan, starts the command and reaps.

mod entry;
mod locate;
mod reaper;
mod wire;
mod zygote;

pub use entry::main_if_requested;
pub(crate) use entry::{report_start_failure, run_forked, INIT_ARG};
pub(crate) use locate::init_program;
pub(crate) use wire::{InitReport, InitSpec};
pub(crate) use zygote::{ZygoteReply, MAX_REQUEST, ZYGOTE_ARG, ZYGOTE_SOCKET_FD};

//! # pristine
//!
//! Every test in its own throwaway copy-on-write Linux container, in milliseconds, with the
//! kernel alone: no daemon, no image pulls, nothing left behind.
//!
//! A container here is: new mount, PID, network (loopback only), UTS, IPC and cgroup
//! namespaces (plus a user namespace when not root); an overlayfs whose lower layers are an
//! [`Image`] (the host's root, a rootfs directory, layer directories) and whose upper layer
//! is private and thrown away; `pivot_root` into it; and a PID 1 that reaps, forwards
//! signals and takes every process down when the command exits.
//!
//! ## Quick start
//!
//! ```no_run
//! use pristine::{Container, Image};
//!
//! fn main() -> Result<(), pristine::Error> {
//!     // Lets this binary serve as the container's init (see `main_if_requested`).
//!     pristine::main_if_requested();
//!     let out = Container::new(Image::host())
//!         .run(["sh", "-c", "echo changed > /etc/motd; cat /etc/motd; echo $$"])?;
//!     // The shell is PID 2, under pristine's init; the host's /etc/motd is untouched,
//!     // and nothing of the container remains.
//!     assert_eq!(out.stdout_str(), "changed\n2\n");
//!     Ok(())
//! }
//! ```
//!
//! ## Snapshots and tests
//!
//! A [`Recipe`] freezes a prepared root filesystem into cached, content-addressed layers
//! (see [`layers`]); [`testing::Harness`] runs each test of a `harness = false` test target
//! in its own container of such an image, with its services, under `cargo test` and
//! `cargo nextest run` (tests are added with the builder, as here, or declared with
//! [`#[pristine::test]`](macro@test)):
//!
//! ```no_run
//! use pristine::testing::Harness;
//! use pristine::{LayerSpec, Recipe, Store};
//!
//! fn main() {
//!     Harness::new()
//!         .image(|| {
//!             Recipe::host()
//!                 .layer(LayerSpec::new("seed").run(["sh", "-c", "echo 1 > /srv/n"]))
//!                 .build(&Store::open_default()?)
//!         })
//!         .test("sees_the_seed", |_| {
//!             assert_eq!(std::fs::read_to_string("/srv/n")?, "1\n");
//!             Ok(())
//!         })
//!         .run();
//! }
//! ```
//!
//! ## How it is built
//!
//! - [`Container`] is the builder; [`Container::run`] validates everything, plans the setup
//!   as a list of [`SetupOp`]s and starts the container's PID 1: forked directly by a
//!   single-threaded caller, by a single-threaded zygote for a multithreaded one, or (as a
//!   fallback) by a vfork-style `clone` + `exec` of pristine's binary; a multithreaded
//!   caller never runs anything between `clone` and `exec`.
//! - PID 1 applies the plan inside the new namespaces, runs the command as its child, reaps
//!   and reports back; [`main_if_requested`] lets a binary serve as init and zygote.
//! - The plan ends with the confinement (Docker's default capabilities less `CAP_MKNOD`,
//!   `no_new_privs`, Docker's default seccomp profile, `/proc` masked as runc masks it), so
//!   the container's root is never the host's; [`Container::privileged`] and
//!   [`Container::cap_add`] are the opt-outs.
//! - Every mount lives in the container's own mount namespace, so it vanishes with the
//!   container even if the caller is SIGKILLed; the only on-disk state is in the [`Store`].
#![warn(missing_docs)]

pub mod cgroups;
pub(crate) mod confine;
mod container;
pub mod diff;
pub mod duration;
mod error;
pub(crate) mod hints;
pub(crate) mod host;
mod image;
mod init;
pub mod layers;
pub(crate) mod namespaces;
pub mod oci;
pub mod pull;
pub(crate) mod rootfs;
pub mod services;
mod setup;
mod size;
pub mod store;
pub(crate) mod sys;
pub mod testing;
pub(crate) mod userns;
pub(crate) mod whiteout;

pub use confine::parse_capability;
pub use container::{
    forward_signals_to_foreground, Bind, Container, ExitStatus, Keep, Kept, Outcome, Stdio, Upper,
    User, DEFAULT_SHM_SIZE, DEFAULT_TMP_SIZE, DEFAULT_UPPER_SIZE,
};
pub use error::{ConfigError, Error};
pub use image::{Base, Image};
pub use init::main_if_requested;
pub use layers::{BuildError, LayerSpec, Recipe};
pub use setup::SetupOp;
pub use size::{human as human_size, Size, SizeError};
pub use store::Store;

/// Declares a test function that runs in its own container, for a [`testing::Harness`]
/// target: `#[pristine::test]`, `#[pristine::test(group = "db")]`, plus `#[ignore]`.
///
/// ```no_run
/// use pristine::testing::{Harness, TestResult};
///
/// #[pristine::test]
/// fn writes_are_private() -> TestResult {
///     std::fs::write("/etc/motd", "mine")?; // inside this test's own container
///     Ok(())
/// }
///
/// fn main() {
///     Harness::new().run(); // runs every #[pristine::test] of the binary
/// }
/// ```
///
/// The function takes no argument or a [`&testing::Ctx`](testing::Ctx) and returns `()` (a
/// panic fails it) or a `Result<(), E>` with a boxable error. Its test name is its module
/// path below the crate root and its name, as with `#[test]`; a `group` prefixes it with
/// that group's name, and the test then runs with that group's image and services. A
/// group that the harness does not declare is reported as a failing test.
pub use pristine_macros::test;

// `#[pristine::test]` expands to `::pristine::…` paths, which this makes valid in this
// crate's own unit tests too.
extern crate self as pristine;

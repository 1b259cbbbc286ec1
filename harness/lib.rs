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
//! ## How it is built
//!
//! - [`Container`] is the builder; [`Container::run`] validates everything, plans the setup
//!   as a list of [`SetupOp`]s, and starts the init with one vfork-style `clone` + `exec`
//!   (nothing runs between the two in the possibly multithreaded caller).
//! - The init (this crate's [`main_if_requested`], in pristine's own binary) applies the
//!   plan inside the new namespaces, runs the command as PID 1's child and reports back.
//! - Every mount lives in the container's own mount namespace, so it vanishes with the
//!   container even if the caller is SIGKILLed; the only on-disk state is in the [`Store`].
#![warn(missing_docs)]

mod container;
pub mod diff;
mod error;
pub mod hints;
mod image;
mod init;
pub mod layers;
pub mod namespaces;
pub mod oci;
pub mod rootfs;
mod setup;
pub mod store;
pub mod sys;
pub mod testing;
pub mod userns;
pub mod whiteout;

pub use container::{
    forward_signals_to_foreground, Bind, Container, ExitStatus, Keep, Kept, Outcome, Stdio, Upper,
    User,
};
pub use error::{ConfigError, Error};
pub use image::{Base, Image};
pub use init::main_if_requested;
pub use layers::{BuildError, LayerSpec, Recipe};
pub use setup::SetupOp;
pub use store::Store;

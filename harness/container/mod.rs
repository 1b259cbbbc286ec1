//! Containers: configure one ([`Container`]), run a command in it, get an [`Outcome`].

mod bind;
mod builder;
mod outcome;
mod spawn;
mod supervise;
mod zygote;

pub use bind::Bind;
pub use builder::{Container, Keep, Stdio, Upper, User};
pub use outcome::{ExitStatus, Kept, Outcome};
pub use spawn::forward_signals_to_foreground;

//! Containers: configure one ([`Container`]), run a command in it, get an [`Outcome`].

mod bind;
mod builder;
mod id;
mod ident;
mod outcome;
mod process;
mod spawn;
mod supervise;
mod zygote;

pub use bind::Bind;
pub use builder::{
    Container, Keep, Stdio, Upper, User, DEFAULT_SHM_SIZE, DEFAULT_TMP_SIZE, DEFAULT_UPPER_SIZE,
};
pub(crate) use id::random_id;
pub use outcome::{ExitStatus, Kept, Outcome};
pub use spawn::forward_signals_to_foreground;

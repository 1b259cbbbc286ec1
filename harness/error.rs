//! Errors. One type per operation; messages are lowercase fragments that name what failed
//! and on which path, and end with a hint where there is something to do.

use std::path::PathBuf;

use crate::hints::Hint;
use crate::store::StoreError;
use crate::sys::SysError;

/// The smallest process limit: the init and the command.
pub const MIN_PIDS: u64 = 2;
/// The smallest memory limit: the init (pristine's binary, mapped) needs about this much
/// before the command starts.
pub const MIN_MEMORY: u64 = 4 << 20;

/// Invalid container configuration, caught before anything is created.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command is empty.
    #[error("no command given: pass the program to run inside the container")]
    EmptyCommand,
    /// A sized tmpfs upper layer was asked for together with keeping it, which puts the
    /// upper layer on disk in the store, where pristine cannot limit its size: refused
    /// rather than silently left unlimited.
    #[error(
        "an upper layer of at most {} (Upper::Tmpfs) cannot be kept: keeping puts it on \
         disk in the store, where pristine cannot limit its size; use Keep::Never with a \
         sized upper layer, or keep one of the default size (Upper::Auto or Upper::Disk)",
        crate::size::human(size.get())
    )]
    UpperSizeNotEnforced {
        /// The size asked for.
        size: crate::Size,
    },
    /// A command, argument or environment entry cannot be passed to the kernel.
    #[error("{what} {value:?} contains a NUL byte or is not valid UTF-8")]
    BadString {
        /// What it was (command, argument, environment variable).
        what: &'static str,
        /// The value, lossily rendered.
        value: String,
    },
    /// A directory that must exist does not.
    #[error("{what} {path} does not exist or is not readable: {source}")]
    MissingDirectory {
        /// rootfs, layer, ...
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: std::io::Error,
    },
    /// A path that must be a directory is something else.
    #[error("{what} {path} is not a directory")]
    NotADirectory {
        /// rootfs, layer, ...
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A `--bind` specification is malformed or its source is missing.
    #[error("bad bind {spec:?}: {reason} (expected SRC:DST[:ro], both absolute)")]
    BadBind {
        /// The specification.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment assignment is malformed.
    #[error("bad environment assignment {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    /// The working directory is not absolute.
    #[error("working directory {0} must be an absolute path inside the container")]
    RelativeWorkdir(PathBuf),
    /// A hostname the kernel would refuse.
    #[error("hostname {0:?} must be 1 to 64 printable ASCII characters without spaces or '/'")]
    BadHostname(String),
    /// A capability name the kernel does not know.
    #[error(
        "unknown capability {0:?}: expected a name such as CAP_SYS_ADMIN (see capabilities(7))"
    )]
    UnknownCapability(String),
    /// A process limit too small for the container's init and command.
    #[error("process limit {0} is too small: the container's init and its command need at least {MIN_PIDS}")]
    PidsTooLow(u64),
    /// A memory limit too small to start a container.
    #[error("memory limit {} is too small: a container needs at least {} to start", crate::size::human(*.0), crate::size::human(MIN_MEMORY))]
    MemoryTooLow(u64),
    /// A user name the image's /etc/passwd does not have.
    #[error("user {0:?} is not in the image's /etc/passwd: add it to the image, or give a numeric UID[:GID]")]
    UnknownUser(String),
    /// A group name the image's /etc/group does not have.
    #[error(
        "group {0:?} is not in the image's /etc/group: add it to the image, or give a numeric GID"
    )]
    UnknownGroup(String),
    /// A user the image's config names that cannot be understood.
    #[error("user {0:?} (of the image's config) is not NAME, UID, NAME:GROUP or UID:GID")]
    BadUser(String),
    /// No command given, and the image's config names none either.
    #[error("no command given and the image has neither an Entrypoint nor a Cmd: pass the program to run inside the container")]
    NoCommand,
    /// A file of the image (its /etc/passwd, /etc/group) could not be read.
    #[error("failed to read {path} of the image: {source}")]
    ImageFile {
        /// The path inside the image.
        path: PathBuf,
        /// The failed system call.
        #[source]
        source: SysError,
    },
    /// An image without base and layers.
    #[error("the image has no base and no layers: give it at least one layer")]
    EmptyImage,
    /// A path overlayfs cannot take.
    #[error(transparent)]
    Overlay(#[from] crate::rootfs::overlay::OverlayOptionsError),
}

/// Why a container could not be run. (A command that runs and fails is not an error: see
/// [`Outcome::status`](crate::Outcome::status).)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; nothing was created.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container's cgroup (for its limits) could not be set up.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    /// The container's memory limit was hit (and its init killed) before the command ran.
    #[error("the container ran out of memory before its command started (limit {}); raise the memory limit", crate::size::human(*limit))]
    OutOfMemory {
        /// The memory limit, in bytes.
        limit: u64,
    },
    /// No init program was found.
    #[error("cannot find pristine's init program: call pristine::main_if_requested() first thing in main, install the `pristine` binary on PATH, or set PRISTINE_INIT")]
    InitNotFound,
    /// Creating the container's process and namespaces failed.
    #[error("failed to start the container: {source}{hint}")]
    Start {
        /// The failed system call.
        #[source]
        source: SysError,
        /// What to do about it.
        hint: Hint,
    },
    /// A setup step inside the container failed.
    #[error("failed to set up the container: {step}: {detail}{hint}")]
    Setup {
        /// The step, rendered (e.g. `mount overlay /…/root (lower=/ …)`).
        step: String,
        /// The failed operation and its error.
        detail: String,
        /// The path involved, if any.
        path: Option<PathBuf>,
        /// What to do about it.
        hint: Hint,
    },
    /// The command could not be executed inside the container.
    #[error("failed to execute {program:?} inside the container: {}{}", nix::errno::Errno::from_raw(*errno), exec_hint(*errno))]
    Exec {
        /// The program as given.
        program: String,
        /// errno.
        errno: i32,
    },
    /// The init ended without saying how the command ended.
    #[error("the container's init (pid {pid}) ended without a report ({how})")]
    Lost {
        /// Host pid of the init.
        pid: i32,
        /// How it ended.
        how: String,
    },
    /// Talking to the container's init failed.
    #[error("failed to {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn exec_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => {
            "\n  hint: the program is not in the image (or not on the container's PATH)"
        }
        libc::EACCES => {
            "\n  hint: the file is not executable, or a directory on its path is not searchable"
        }
        _ => "",
    }
}

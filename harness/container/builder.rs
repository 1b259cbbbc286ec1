//! Configuring a container.

use std::path::PathBuf;
use std::time::Duration;

use super::{Bind, Outcome};
use crate::error::{ConfigError, Error};
use crate::{Image, Size};

/// Default size limit of the tmpfs upper layer.
pub const DEFAULT_UPPER_SIZE: Size = Size::mib(4 << 10);
/// Default size limit of the container's `/tmp` (a tmpfs).
pub const DEFAULT_TMP_SIZE: Size = Size::mib(1 << 10);
/// Default size limit of the container's `/dev/shm` (a tmpfs), as Docker's.
pub const DEFAULT_SHM_SIZE: Size = Size::mib(64);

/// When to keep a container's upper layer for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// Always throw it away (default).
    #[default]
    Never,
    /// Always keep it.
    Always,
    /// Keep it when the command fails, is killed or times out.
    OnFailure,
}

/// Where the writable upper layer lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Upper {
    /// The default: on disk in the store when the image has layers there and the store's
    /// filesystem reflinks (a first write to a stored file then clones it instead of
    /// copying it whole into memory); else a tmpfs of [`DEFAULT_UPPER_SIZE`] (4 GiB).
    #[default]
    Auto,
    /// A tmpfs of at most this size. Fastest for small writes, but a first write to a
    /// lower file copies the whole file into memory.
    Tmpfs(Size),
    /// A directory in the store, on disk (also used whenever the layer may be kept).
    Disk,
    /// An existing directory of the caller's that receives the changes and outlives the
    /// container (as when building a layer). The overlay work directory is created beside
    /// it and removed afterwards. Not combined with keeping.
    Dir(PathBuf),
}

impl Upper {
    /// The sized tmpfs, if this is one: such an upper cannot be kept (keeping puts the
    /// upper on disk, where its size would not be enforced).
    pub(crate) fn unkeepable_size(&self) -> Option<Size> {
        match self {
            Upper::Tmpfs(size) => Some(*size),
            _ => None,
        }
    }
}

/// What the command's standard streams are connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdio {
    /// stdin is `/dev/null`; stdout and stderr are captured into the [`Outcome`] (default).
    #[default]
    Capture,
    /// The caller's stdin, stdout and stderr are passed through.
    Inherit,
}

/// A throwaway copy-on-write container, configured builder-style, then run.
///
/// ```no_run
/// use std::time::Duration;
/// use pristine::{Container, Image};
///
/// let out = Container::new(Image::host())
///     .hostname("box")
///     .timeout(Duration::from_secs(10))
///     .run(["sh", "-c", "echo hi > /etc/motd; hostname"])?;
/// assert!(out.status.success());
/// assert_eq!(out.stdout_str(), "box\n");
/// # Ok::<(), pristine::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Container {
    pub(crate) image: Image,
    pub(crate) hostname: Option<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) inherit_env: bool,
    /// The caller's working directory; else the image's, else `/`.
    pub(crate) workdir: Option<PathBuf>,
    /// The caller's entrypoint; else the image's.
    pub(crate) entrypoint: Option<Vec<String>>,
    pub(crate) binds: Vec<Bind>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) keep: Keep,
    pub(crate) upper: Upper,
    pub(crate) stdio: Stdio,
    pub(crate) store: Option<PathBuf>,
    pub(crate) user: Option<User>,
    pub(crate) limits: crate::cgroups::Limits,
    pub(crate) privileges: crate::confine::Privileges,
    pub(crate) tmp_size: Size,
    pub(crate) shm_size: Size,
}

/// Whom the command runs as inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// Numeric uid and gid.
    Id(u32, u32),
    /// A user name, looked up in the image's `/etc/passwd` (or `NAME:GROUP`, `UID`,
    /// `UID:GROUP`, as in an image's config).
    Name(String),
}

impl Container {
    /// A container of `image`, with the defaults: environment inherited from the caller,
    /// working directory `/`, no timeout, upper layer placed by [`Upper::Auto`], `/tmp` and
    /// `/dev/shm` tmpfs of 1 GiB and 64 MiB, output captured.
    pub fn new(image: Image) -> Self {
        Container {
            image,
            hostname: None,
            env: Vec::new(),
            inherit_env: true,
            workdir: None,
            entrypoint: None,
            binds: Vec::new(),
            timeout: None,
            keep: Keep::Never,
            upper: Upper::default(),
            stdio: Stdio::Capture,
            store: None,
            user: None,
            limits: Default::default(),
            privileges: Default::default(),
            tmp_size: DEFAULT_TMP_SIZE,
            shm_size: DEFAULT_SHM_SIZE,
        }
    }

    /// Limits the container's `/tmp` (a tmpfs; default [`DEFAULT_TMP_SIZE`], 1 GiB).
    pub fn tmp_size(mut self, size: Size) -> Self {
        self.tmp_size = size;
        self
    }

    /// Limits the container's `/dev/shm` (a tmpfs; default [`DEFAULT_SHM_SIZE`], 64 MiB).
    pub fn shm_size(mut self, size: Size) -> Self {
        self.shm_size = size;
        self
    }

    /// Runs the container unconfined: every capability, no seccomp filter, `/proc`
    /// unmasked, setuid binaries honoured. This gives the isolation away: as root, the
    /// command is host root (it can load kernel modules, mount the host's disks, reboot
    /// the machine); rootless, it is root of its user namespace and can remount its
    /// read-only binds writable. Only for tests of code that itself mounts or needs
    /// every capability. Mounts and namespaces stay the container's own.
    pub fn privileged(mut self) -> Self {
        self.privileges.privileged = true;
        self
    }

    /// Keeps capability `cap` (`CAP_SYS_ADMIN`, `NET_ADMIN`, …) on top of the default set,
    /// and opens the system calls Docker's seccomp profile opens for it. Each gives away
    /// what the capability allows: `CAP_SYS_ADMIN` mounts (and, as root, the host's
    /// disks), `CAP_SYS_MODULE` kernel modules, `CAP_NET_ADMIN` the container's own network
    /// only. An unknown name fails the run with a configuration error.
    pub fn cap_add(mut self, cap: impl Into<String>) -> Self {
        self.privileges.cap_add.push(cap.into());
        self
    }

    /// Limits the container's memory (its processes and their page cache) to `bytes`; a
    /// container that needs more is OOM-killed. Needs root (cgroups).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.limits.memory_bytes = Some(bytes);
        self
    }

    /// Limits the container to `n` processes and threads (a fork bomb stops there). Needs
    /// root (cgroups).
    pub fn pids_limit(mut self, n: u64) -> Self {
        self.limits.pids = Some(n);
        self
    }

    /// Runs the command as `user` instead of the image's `User` (an imported image's
    /// config), else root. A [`User::Name`] may be any of Docker's forms (`NAME`, `UID`,
    /// `NAME:GROUP`, `UID:GROUP`), resolved in the image's own `/etc/passwd` and
    /// `/etc/group`. As root, the init drops to that user (with its supplementary groups)
    /// just before `exec`. Rootless, the caller's uid and gid are mapped to the user's,
    /// which are then the only ids inside (the init keeps its capabilities as ambient ones
    /// for setup, and the command gets none): this is how services that refuse to run as
    /// root, like PostgreSQL, run without privileges.
    pub fn user(mut self, user: User) -> Self {
        self.user = Some(user);
        self
    }

    /// Sets the hostname (default: `pristine-ID`).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the command with only the image's `Env` and the variables set by
    /// [`Container::env`] (plus a default `PATH` if none is set), instead of the caller's
    /// environment.
    pub fn env_clear(mut self) -> Self {
        self.inherit_env = false;
        self
    }

    /// Sets the working directory inside the container (absolute; default: the image's
    /// `WorkingDir`, else `/`). Unlike the image's, which is created if missing, it must
    /// exist.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Replaces the image's `Entrypoint` (Docker's `--entrypoint`): the command then runs
    /// as `entrypoint + command`, and an empty command no longer means the image's `Cmd`.
    /// An empty entrypoint runs the command alone, as a test harness does with its test
    /// binary.
    pub fn entrypoint<I, S>(mut self, entrypoint: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(entrypoint.into_iter().map(Into::into).collect());
        self
    }

    /// The config of the container's image (an imported image's `Env`, `Entrypoint`,
    /// `Cmd`, `WorkingDir`, `User`, `ExposedPorts`), if it has one.
    #[must_use]
    pub fn image_config(&self) -> Option<&crate::oci::ImageConfig> {
        self.image.config()
    }

    /// The ports the image exposes (its `ExposedPorts`), e.g. for a readiness check.
    #[must_use]
    pub fn exposed_ports(&self) -> Vec<crate::oci::ExposedPort> {
        self.image_config()
            .map(|c| c.exposed_ports())
            .unwrap_or_default()
    }

    /// Adds a volume.
    pub fn bind(mut self, bind: Bind) -> Self {
        self.binds.push(bind);
        self
    }

    /// Kills the whole container after `timeout`; the outcome then says `timed_out`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// When to keep the upper layer (implies an on-disk upper unless [`Keep::Never`]).
    pub fn keep(mut self, keep: Keep) -> Self {
        self.keep = keep;
        self
    }

    /// Where the upper layer lives.
    pub fn upper(mut self, upper: Upper) -> Self {
        self.upper = upper;
        self
    }

    /// Captures output (default) or passes the caller's stdio through.
    pub fn stdio(mut self, stdio: Stdio) -> Self {
        self.stdio = stdio;
        self
    }

    /// Uses the store at `dir` instead of the default location.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = Some(dir.into());
        self
    }

    /// Runs `command` in a new container and waits for it and the container to be gone.
    ///
    /// On an image with a config (an imported one), the command is Docker's: the
    /// entrypoint (the caller's, else the image's) followed by `command`, or by the image's
    /// `Cmd` if `command` is empty (and no entrypoint was set); the environment is the
    /// inherited one, then the image's `Env` over it, then [`Container::env`] over both;
    /// the working directory and user are the caller's, else the image's.
    ///
    /// A command that fails or is killed is not an error: inspect
    /// [`Outcome::status`]. Errors mean the container could not be created or the command
    /// not executed; nothing is left behind either way.
    pub fn run<I, S>(&self, command: I) -> Result<Outcome, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let argv = command
            .into_iter()
            .map(|a| {
                let a = a.as_ref();
                a.to_str()
                    .filter(|s| !s.contains('\0'))
                    .map(str::to_owned)
                    .ok_or_else(|| ConfigError::BadString {
                        what: "argument",
                        value: a.to_string_lossy().into_owned(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        super::spawn::run(self, argv)
    }
}

//! The container setup as data: an ordered list of [`SetupOp`]s.
//!
//! The caller computes the list (see [`super::plan`]), the init process executes it (see
//! [`super::apply`]). Keeping the order in data, as bubblewrap's `SetupOp` list does, makes
//! it printable and snapshot-testable without root.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One step of container setup, executed in order by the init process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetupOp {
    /// Join the container's cgroups (write `0` to each `cgroup.procs`), then enter a new
    /// cgroup namespace rooted there (the clone made none): first, so that every process
    /// PID 1 starts, and the setup itself, is limited.
    JoinCgroups {
        /// One `cgroup.procs` per hierarchy.
        procs: Vec<PathBuf>,
    },
    /// `mount --make-rprivate /`: from here on, no mount we make propagates to the host.
    MakeRootPrivate,
    /// Mount a tmpfs.
    Tmpfs {
        /// Mount point.
        target: PathBuf,
        /// tmpfs options, e.g. `size=4g,mode=0755`.
        options: String,
        /// Also forbid device nodes (`MS_NODEV`); always `MS_NOSUID`.
        nodev: bool,
    },
    /// Create a directory (and its parents) with mode `mode`, if it does not exist. The
    /// mode matters for a directory of the upper layer that an overlay is mounted over or
    /// that stands for a host directory: the root of an overlay shows its upper directory's
    /// attributes.
    Mkdir {
        /// Directory to create.
        path: PathBuf,
        /// Permission bits (PID 1 runs with umask 0, so exactly these).
        mode: u32,
    },
    /// Mount an overlayfs.
    Overlay {
        /// Mount point.
        target: PathBuf,
        /// Lower layers, uppermost first (overlayfs' `lowerdir` order).
        lowers: Vec<PathBuf>,
        /// Upper (writable) directory.
        upper: PathBuf,
        /// Overlay work directory, on the same filesystem as `upper`.
        work: PathBuf,
        /// `upper` and `work` are opened from here without following a symlink, and
        /// overlayfs gets their descriptors (see `sys::inroot::DirBeneath`).
        beneath: PathBuf,
        /// Use `user.overlay.*` xattrs (required inside a user namespace).
        userxattr: bool,
        /// Mount `nosuid,nodev` (every container but a privileged one).
        nosuid: bool,
        /// Skip overlayfs's syncs (`volatile`): for a throwaway upper on disk, where each
        /// copy-up would otherwise flush the file and the filesystem's journal.
        volatile: bool,
    },
    /// Mount a read-only overlay of one host directory alone (`/` as root, the directory
    /// holding the store rootless): a view of it on its own superblock, so that layers
    /// stored below it can be stacked over it (overlayfs refuses a lower nested inside
    /// another lower of the same filesystem).
    HostView {
        /// The host directory.
        source: PathBuf,
        /// Mount point.
        target: PathBuf,
        /// An empty directory (overlayfs needs a second lower when there is no upper).
        empty: PathBuf,
        /// Use `user.overlay.*` xattrs (inside a user namespace).
        userxattr: bool,
    },
    /// `op`, skipped if it fails because host path `source` has disappeared since the plan
    /// was made: entries of a host directory below the top level (split on the way to the
    /// store) come and go while containers start, e.g. cargo's files in `target/`.
    UnlessGone {
        /// The host path the step mounts.
        source: PathBuf,
        /// The step.
        op: Box<SetupOp>,
    },
    /// Bind-mount `source` onto `target`, creating `target` as a file or directory first.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path below the new root.
        target: PathBuf,
        /// Remount read-only after binding.
        readonly: bool,
        /// Bind the whole subtree (`MS_REC`).
        recursive: bool,
    },
    /// Bind-mount a host device node (rootless `/dev`, where `mknod` is refused): like
    /// [`SetupOp::Bind`], but the one bind whose mount keeps device nodes usable.
    BindDevice {
        /// Host device node.
        source: PathBuf,
        /// Path below the new root.
        target: PathBuf,
    },
    /// Create a symbolic link `link` pointing at `target`.
    Symlink {
        /// What the link points to.
        target: PathBuf,
        /// The link to create.
        link: PathBuf,
    },
    /// Mount a fresh procfs for the container's PID namespace.
    Proc {
        /// Mount point.
        target: PathBuf,
    },
    /// Mount a private devpts instance and point `ptmx` at it.
    Devpts {
        /// Mount point (`…/dev/pts`).
        target: PathBuf,
        /// Pass `gid=5` (the tty group); only possible when gid 5 is mapped.
        tty_gid: bool,
    },
    /// Create a character device node (root mode only).
    CharDevice {
        /// Node path.
        path: PathBuf,
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
    /// `pivot_root` into `new_root` and detach the old root.
    PivotRoot {
        /// The new root.
        new_root: PathBuf,
    },
    /// Set the UTS hostname.
    Hostname {
        /// The name.
        name: String,
    },
    /// Bring `lo` up in the new network namespace.
    LoopbackUp,
    /// Hide a path of the container's `/proc` (after `pivot_root`): `/dev/null` over a
    /// file, an empty read-only tmpfs over a directory; nothing if it does not exist.
    MaskPath {
        /// Path inside the container.
        path: PathBuf,
    },
    /// Make a path of the container's `/proc` read-only, with everything below it.
    ReadOnlyPath {
        /// Path inside the container.
        path: PathBuf,
    },
    /// Cut the capabilities to `keep` in the bounding, effective, permitted and inheritable
    /// sets, and clear the ambient set.
    LimitCapabilities {
        /// Canonical capability names, sorted.
        keep: Vec<String>,
    },
    /// Leave the caller's process group and controlling terminal (`setpgid`, `TIOCNOTTY`):
    /// nothing in the container can open the caller's `/dev/tty`, push input into it or
    /// signal the caller's process group.
    LeaveTerminal,
    /// `prctl(PR_SET_NO_NEW_PRIVS)`: setuid binaries and file capabilities grant nothing.
    NoNewPrivileges,
    /// Load Docker's default seccomp profile, opened for the capabilities in `caps`.
    Seccomp {
        /// The capabilities kept (the profile opens their system calls).
        caps: Vec<String>,
    },
}

impl SetupOp {
    /// `mkdir` with the usual directory mode, 0755.
    pub fn mkdir(path: impl Into<PathBuf>) -> Self {
        SetupOp::Mkdir {
            path: path.into(),
            mode: 0o755,
        }
    }
}

impl fmt::Display for SetupOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupOp::JoinCgroups { procs } => {
                let p: Vec<_> = procs.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "join cgroups {}, then a new cgroup namespace",
                    p.join(" ")
                )
            }
            SetupOp::MakeRootPrivate => write!(f, "make / rprivate"),
            SetupOp::Tmpfs {
                target, options, ..
            } => {
                write!(f, "mount tmpfs {} ({options})", target.display())
            }
            SetupOp::Mkdir { path, mode } => write!(f, "mkdir {} ({mode:04o})", path.display()),
            SetupOp::Overlay {
                target,
                lowers,
                upper,
                work,
                beneath: _,
                userxattr,
                nosuid,
                volatile,
            } => {
                let lowers: Vec<_> = lowers.iter().map(|l| l.display().to_string()).collect();
                write!(
                    f,
                    "mount overlay {} (lower={} upper={} work={}{}{}{})",
                    target.display(),
                    lowers.join(":"),
                    upper.display(),
                    work.display(),
                    if *userxattr { " userxattr" } else { "" },
                    if *nosuid { " nosuid,nodev" } else { "" },
                    if *volatile { " volatile" } else { "" }
                )
            }
            SetupOp::UnlessGone { source, op } => {
                write!(f, "{op} (skipped if {} is gone)", source.display())
            }
            SetupOp::HostView {
                source,
                target,
                empty,
                userxattr,
            } => write!(
                f,
                "mount overlay {} (read-only view of {s}, lower={s}:{}{})",
                target.display(),
                empty.display(),
                if *userxattr { " userxattr" } else { "" },
                s = source.display(),
            ),
            SetupOp::Bind {
                source,
                target,
                readonly,
                recursive,
            } => write!(
                f,
                "bind {} -> {}{}{}",
                source.display(),
                target.display(),
                if *recursive { " rec" } else { "" },
                if *readonly { " ro" } else { "" }
            ),
            SetupOp::BindDevice { source, target } => {
                write!(
                    f,
                    "bind device {} -> {}",
                    source.display(),
                    target.display()
                )
            }
            SetupOp::Symlink { target, link } => {
                write!(f, "symlink {} -> {}", link.display(), target.display())
            }
            SetupOp::Proc { target } => write!(f, "mount proc {}", target.display()),
            SetupOp::Devpts { target, .. } => write!(f, "mount devpts {}", target.display()),
            SetupOp::CharDevice { path, major, minor } => {
                write!(f, "mknod {} c {major} {minor}", path.display())
            }
            SetupOp::PivotRoot { new_root } => write!(f, "pivot_root {}", new_root.display()),
            SetupOp::Hostname { name } => write!(f, "sethostname {name}"),
            SetupOp::LoopbackUp => write!(f, "ip link set lo up"),
            SetupOp::MaskPath { path } => write!(f, "mask {}", path.display()),
            SetupOp::ReadOnlyPath { path } => write!(f, "read-only {}", path.display()),
            SetupOp::LimitCapabilities { keep } => {
                write!(f, "limit capabilities to {}", keep.join(","))
            }
            SetupOp::LeaveTerminal => write!(f, "leave the caller's terminal and process group"),
            SetupOp::NoNewPrivileges => write!(f, "set no_new_privs"),
            SetupOp::Seccomp { .. } => write!(f, "load seccomp filter (Docker's default)"),
        }
    }
}

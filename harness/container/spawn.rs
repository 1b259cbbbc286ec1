//! Creating a container: validate, plan, clone + exec the init, supervise, clean up.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use super::builder::{Container, Keep, Stdio, Upper};
use super::outcome::{ExitStatus, Kept, Outcome};
use super::process::{command, environment, user_ids, with_home, workdir};
use super::supervise::{supervise, Supervised};
use crate::error::{ConfigError, Error};
use crate::hints;
use crate::image::Base;
use crate::init::{init_program, InitReport, InitSpec, INIT_ARG};
use crate::namespaces;
use crate::rootfs::host::{self, HostEntry};
use crate::setup::{plan, PlanInput, RootfsSource, SetupOp, UpperPlacement};
use crate::store::Store;
use crate::sys::{self, ExecRequest};
use crate::userns;

/// The rootless host root, classified once per process (reads `/` and the mount table).
/// The host root's top-level entries, and the host's mount points.
type HostLayout = (Vec<HostEntry>, Vec<PathBuf>);

/// The host root's top-level entries as rootless containers overlay them, with the host's
/// mount points. Classified once per mount table: the table is read again for every
/// container (tens of microseconds), and a change (a store's reflink image mounted by
/// another process, a CI tool's mount under `/var`) classifies again, since a directory
/// that gained a mount can no longer be overlaid (EINVAL) and must be bound instead.
fn host_entries() -> Result<Arc<HostLayout>, Error> {
    type Classified = (Vec<u8>, Arc<HostLayout>);
    static CACHE: Mutex<Option<Classified>> = Mutex::new(None);
    let io = |op, source| Error::Io { op, source };
    // Bytes: a mount point anywhere on the host need not be UTF-8.
    let info =
        std::fs::read("/proc/self/mountinfo").map_err(|e| io("read the host's mount table", e))?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((seen, classified)) = cache.as_ref() {
        if *seen == info {
            return Ok(classified.clone());
        }
    }
    let mount_points = host::mount_points(&info);
    let entries = host::classify_root(Path::new("/"), &mount_points)
        .map_err(|e| io("read the host root directory", e))?;
    let classified = Arc::new((entries, mount_points));
    *cache = Some((info, classified.clone()));
    Ok(classified)
}

fn cstr(what: &'static str, s: impl AsRef<std::ffi::OsStr>) -> Result<CString, ConfigError> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| ConfigError::BadString {
        what,
        value: s.as_ref().to_string_lossy().into_owned(),
    })
}

/// What validation yields: everything checked before anything is created.
struct Validated {
    argv: Vec<String>,
    image: crate::Image,
    binds: Vec<super::Bind>,
    env: Vec<String>,
    workdir: PathBuf,
    /// Whether the init creates a missing working directory (the image's).
    create_workdir: bool,
    id: String,
    hostname: String,
    rootless: bool,
    /// With canonical capability names.
    privileges: crate::confine::Privileges,
}

/// Where the container's layers live for one run: the on-disk container directory or the
/// caller's own upper (both removed when this is dropped) and the upper's placement.
struct Layout {
    store: Store,
    image: crate::Image,
    /// Held for its `Drop`: removes the work directory beside a caller's upper.
    _own_upper: Option<OwnUpper>,
    cdir: Option<crate::store::ContainerDir>,
    upper: UpperPlacement,
    rootfs: RootfsSource,
    /// Held for their `Drop`: the leases on the store layers the container mounts.
    _leases: Vec<nix::fcntl::Flock<std::fs::File>>,
}

/// The container's PID 1, once started.
struct Started {
    pid: Pid,
    /// Whether `pid` is our child (not the zygote's).
    is_child: bool,
    /// Its pidfd, from the clone itself on every path: it is signalled and (if our child)
    /// waited for through it, never by a pid that may have been reused.
    pidfd: std::os::fd::OwnedFd,
    /// Whether the spec reached an exec'd init (always true for the other paths).
    spec_sent: bool,
    started: Instant,
}

/// The descriptors a container is started with.
struct Pipes {
    report_r: std::os::fd::OwnedFd,
    report_w: std::os::fd::OwnedFd,
    /// `(source, target)` pairs to install in the child.
    fds: Vec<(std::os::fd::RawFd, std::os::fd::RawFd)>,
    /// The child's ends, closed here once it has started.
    child_ends: Vec<std::os::fd::OwnedFd>,
    /// The captured stdout and stderr, read ends.
    out: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
    _devnull: Option<std::os::fd::OwnedFd>,
}

/// How the container ended, as seen by the caller.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    duration: std::time::Duration,
    timed_out: bool,
    /// The memory limit, if the kernel OOM-killed a process of the container.
    oom_killed: Option<u64>,
}

/// Runs one container, stage by stage: validate, lay out the layers, plan, start PID 1,
/// wait for it, keep the upper layer if asked.
pub(crate) fn run(c: &Container, argv: Vec<String>) -> Result<Outcome, Error> {
    let v = validate(c, argv)?;
    let layout = lay_out(c, &v)?;
    // Limits: the container's own cgroup, joined by PID 1 first thing; removed when this
    // function returns (the container has ended by then).
    let cgroup = match c.limits.any() {
        true => Some(crate::cgroups::manager()?.create(&v.id, &c.limits)?),
        false => None,
    };
    let base = layout.store.mount_base();
    let spec = init_spec(c, &v, &layout, &base, cgroup.as_ref())?;
    let mut pipes = Pipes::new(c.stdio == Stdio::Capture)?;
    let mut forwarding = match pipes.out.is_some() {
        true => None,
        false => Some(Forwarding::hold().map_err(|e| start_error(e, v.rootless))?),
    };
    let started = start(&v, &spec, &mut pipes, forwarding.as_mut())?;
    let end = wait_for(c, &v, &started, pipes, cgroup.as_ref());
    // Before `started` (whose pidfd the forwarding names) goes, on error too.
    drop(forwarding);
    let end = end?;
    let kept = keep_if_asked(c, &v, &layout, &spec.ops, &base, &end)?;
    drop(layout);
    let pids_limit_hit = cgroup.as_ref().and_then(|cg| cg.pids_limit_hit());
    drop(cgroup);
    Ok(Outcome {
        id: v.id,
        status: end.status,
        stdout: end.stdout,
        stderr: end.stderr,
        duration: end.duration,
        timed_out: end.timed_out,
        kept,
        pids_limit_hit,
        oom_killed: end.oom_killed,
    })
}

/// Stage 1: validate everything before creating anything (bubblewrap's rule): a bad input
/// leaves no trace.
fn validate(c: &Container, argv: Vec<String>) -> Result<Validated, Error> {
    let argv = command(c, argv)?;
    let (workdir, create_workdir) = workdir(c)?;
    let image = c.image.resolved()?;
    let binds = c
        .binds
        .iter()
        .map(|b| b.resolved())
        .collect::<Result<Vec<_>, _>>()?;
    let env = environment(c)?;
    let id = super::random_id();
    let hostname = c
        .hostname
        .clone()
        .unwrap_or_else(|| format!("pristine-{id}"));
    check_limits(c, &hostname)?;
    if let Some(size) = c.upper.unkeepable_size().filter(|_| c.keep != Keep::Never) {
        return Err(ConfigError::UpperSizeNotEnforced { size }.into());
    }
    let mut privileges = c.privileges.clone();
    for cap in &mut privileges.cap_add {
        *cap = crate::confine::parse_capability(cap)
            .ok_or_else(|| ConfigError::UnknownCapability(cap.clone()))?;
    }
    Ok(Validated {
        privileges,
        argv,
        image,
        binds,
        env,
        workdir,
        create_workdir,
        id,
        hostname,
        // Root in a user namespace other than the initial one (a rootless podman
        // container) is treated as rootless: it cannot mknod, and the container's root has
        // mounts (binds, volumes) that an overlay with `lowerdir=/` would hide.
        rootless: sys::effective_ids().0 != 0 || !crate::host::in_the_initial_userns(),
    })
}

/// Stage 2: the store, the image's layers (a deep stack squashed), where the upper layer
/// goes and where the lower layers come from.
fn lay_out(c: &Container, v: &Validated) -> Result<Layout, Error> {
    let store = match &c.store {
        Some(dir) => Store::open(dir)?,
        None => Store::open_default()?,
    };
    // Deep stacks of store layers mount as one squashed layer (built once, cached).
    let image = crate::layers::squash_deep_stack(&store, &v.image).map_err(|e| Error::Io {
        op: "squash a deep stack of layers",
        source: std::io::Error::other(e.to_string()),
    })?;
    // Leases on the store layers it mounts, held (in the layout) until the container is
    // gone: `gc` leaves them alone meanwhile.
    let leases = store.lease(image.layers())?;
    let own_upper = match &c.upper {
        Upper::Dir(dir) => Some(OwnUpper::new(dir, &v.id)?),
        _ => None,
    };
    let on_disk = own_upper.is_none()
        && (c.keep != Keep::Never
            || c.upper == Upper::Disk
            || (c.upper == Upper::Auto && upper_on_store(&store, &image)));
    let cdir = match on_disk {
        true => Some(store.container_dir(&v.id)?),
        false => None,
    };
    let upper = match (&cdir, &own_upper, &c.upper) {
        (Some(d), _, _) => UpperPlacement::Disk {
            beneath: store.root().to_path_buf(),
            upper: d.upper(),
            work: d.work(),
            volatile: true,
        },
        (None, Some(own), _) => UpperPlacement::Disk {
            // Canonical: its work directory is beside it.
            beneath: own.upper.parent().unwrap_or(Path::new("/")).to_path_buf(),
            upper: own.upper.clone(),
            work: own.work.clone(),
            volatile: false,
        },
        (None, None, Upper::Tmpfs(size)) => UpperPlacement::Tmpfs { size: *size },
        (None, None, Upper::Auto) => UpperPlacement::Tmpfs {
            size: super::DEFAULT_UPPER_SIZE,
        },
        (None, None, _) => unreachable!("an on-disk upper always has a directory"),
    };
    // After the upper: a rootless host root is laid out around where the upper is.
    let rootfs = rootfs_source(&store, &image, &upper, v.rootless)?;
    Ok(Layout {
        store,
        image,
        _own_upper: own_upper,
        cdir,
        upper,
        rootfs,
        _leases: leases,
    })
}

/// Where the lower layers come from.
fn rootfs_source(
    store: &Store,
    image: &crate::Image,
    upper: &UpperPlacement,
    rootless: bool,
) -> Result<RootfsSource, Error> {
    Ok(match image.base() {
        // One `lowerdir=/` overlay is cheapest, but only root may clone a lower with mounts
        // beneath it: rootless, the host root is overlaid directory by directory.
        // A directory holding the store (or a layer or an upper elsewhere) goes over a
        // read-only view of itself, since overlayfs refuses nested layers.
        Base::Host if rootless => {
            let layers: Vec<PathBuf> = image.layers().iter().rev().cloned().collect();
            let host = host_entries()?;
            let (entries, mount_points) = (&host.0, &host.1);
            let stops = split_stops(store.root(), &layers, upper);
            let entries = match stops.is_empty() {
                true => entries.to_vec(),
                false => host::view_around(entries, &stops, mount_points, &sys::is_overlayfs)
                    .map_err(|source| Error::Io {
                        op: "read the host directories that lead to the store",
                        source,
                    })?,
            };
            RootfsSource::HostEntries { entries, layers }
        }
        // Layers stored on the root filesystem would overlap a `lowerdir=/`: they go over a
        // read-only overlay view of `/`, which has a superblock of its own.
        Base::Host if !image.layers().is_empty() => {
            RootfsSource::LayersOverHost(image.layers().iter().rev().cloned().collect())
        }
        _ => RootfsSource::Lowers(image.lowers()),
    })
}

/// Stage 3: the setup plan and everything else PID 1 needs.
fn init_spec(
    c: &Container,
    v: &Validated,
    layout: &Layout,
    base: &Path,
    cgroup: Option<&crate::cgroups::ContainerCgroup>,
) -> Result<InitSpec, Error> {
    let ops = plan(&PlanInput {
        base,
        rootfs: &layout.rootfs,
        upper: &layout.upper,
        rootless: v.rootless,
        binds: &v.binds,
        hostname: &v.hostname,
        cgroups: cgroup.map(|c| c.join.as_slice()).unwrap_or(&[]),
        privileges: &v.privileges,
        tmp_size: c.tmp_size,
        shm_size: c.shm_size,
    })
    .map_err(ConfigError::from)?;
    let ids = user_ids(c, &layout.image)?;
    Ok(InitSpec {
        ops,
        argv: v.argv.clone(),
        env: with_home(c, v.env.clone(), ids.as_ref()),
        workdir: v.workdir.clone(),
        create_workdir: v.create_workdir,
        user: ids.as_ref().map(|i| (i.uid, i.gid)),
        groups: ids.map(|i| i.groups).unwrap_or_default(),
    })
}

fn pipe(op: &'static str) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), Error> {
    sys::pipe_high().map_err(|e| Error::Io {
        op,
        source: e.errno.into(),
    })
}

impl Pipes {
    /// The report pipe, and with `capture` the command's stdout and stderr pipes and
    /// `/dev/null` as its stdin.
    fn new(capture: bool) -> Result<Self, Error> {
        let (report_r, report_w) = pipe("create the report pipe")?;
        let mut pipes = Pipes {
            report_r,
            report_w,
            fds: Vec::new(),
            child_ends: Vec::new(),
            out: None,
            _devnull: None,
        };
        if !capture {
            return Ok(pipes);
        }
        let devnull = std::fs::File::open("/dev/null").map_err(|source| Error::Io {
            op: "open /dev/null",
            source,
        })?;
        let devnull = sys::raise_fd(devnull.into()).map_err(|e| Error::Io {
            op: "duplicate /dev/null",
            source: e.errno.into(),
        })?;
        let (out_r, out_w) = pipe("create the stdout pipe")?;
        let (err_r, err_w) = pipe("create the stderr pipe")?;
        pipes.fds.extend([
            (devnull.as_raw_fd(), 0),
            (out_w.as_raw_fd(), 1),
            (err_w.as_raw_fd(), 2),
        ]);
        pipes.child_ends.extend([out_w, err_w]);
        pipes.out = Some((out_r, err_r));
        pipes._devnull = Some(devnull);
        Ok(pipes)
    }
}

fn start_error(source: sys::SysError, rootless: bool) -> Error {
    let hint = hints::for_start(source.op, source.errno, rootless);
    Error::Start { source, hint }
}

/// Stage 4: create the namespaces and start the container's PID 1, by one of three paths.
///
/// Signals for a foreground container (`pristine run`'s) are blocked by `forwarding` until
/// its pid is known to our handler: under load its command can be running, and be
/// signalled, before `clone` has returned here. PID 1 inherits the block and keeps it until
/// it waits for signals, so none is lost on either side.
fn start(
    v: &Validated,
    spec: &InitSpec,
    pipes: &mut Pipes,
    forwarding: Option<&mut Forwarding>,
) -> Result<Started, Error> {
    let (uid, gid) = sys::effective_ids();
    let id_maps = v.rootless.then(|| match spec.user {
        Some((inside_uid, inside_gid)) => userns::own_ids_as(inside_uid, inside_gid, uid, gid),
        None => userns::own_ids_as_root(uid, gid),
    });
    let started = Instant::now();
    let joins_cgroup = spec
        .ops
        .iter()
        .any(|op| matches!(op, SetupOp::JoinCgroups { .. }));
    let flags = namespaces::clone_flags(v.rootless, joins_cgroup);
    let err = |e| start_error(e, v.rootless);
    // The seccomp filter is compiled once in a process that forks containers, before the
    // fork, so each container only loads it.
    crate::setup::prepare(&spec.ops);
    let (pid, is_child, spec_w, pidfd) = if sys::single_threaded() {
        let (pid, pidfd) = fork_init(spec, flags, id_maps.as_ref(), pipes).map_err(err)?;
        (pid, true, None, pidfd)
    } else if let Some(started) = zygote_init(spec, flags, id_maps.as_ref(), pipes) {
        // Not our child: the kernel reaps it for the zygote, and may reuse its pid.
        let (pid, pidfd) = started.map_err(err)?;
        (pid, false, None, pidfd)
    } else {
        let (pid, pidfd, spec_w) = exec_init(v, spec, flags, id_maps, pipes)?;
        (pid, true, Some(spec_w), pidfd)
    };
    pipes.child_ends.clear();
    if let Some(f) = forwarding {
        f.forward_to(&pidfd);
    }
    // Written after clone: the init reads it as soon as it runs, so no pipe buffer limit.
    let spec_sent = match spec_w {
        Some(w) => serde_json::to_vec(spec)
            .ok()
            .and_then(|spec| nix::unistd::write(&w, &spec).ok().map(|n| n == spec.len()))
            .unwrap_or(false),
        None => true,
    };
    Ok(Started {
        pid,
        is_child,
        pidfd,
        spec_sent,
        started,
    })
}

/// A single-threaded caller (`pristine run`) forks the init directly: its child may run
/// ordinary code, so there is no exec of an init program and no spec to send.
fn fork_init(
    spec: &InitSpec,
    flags: nix::sched::CloneFlags,
    id_maps: Option<&sys::IdMaps>,
    pipes: &Pipes,
) -> Result<(Pid, std::os::fd::OwnedFd), sys::SysError> {
    let report_fd = pipes.report_w.as_raw_fd();
    let mut child = || {
        // SAFETY: in the forked child, the report pipe's write end is ours alone.
        let report = unsafe { std::fs::File::from_raw_fd(report_fd) };
        crate::init::run_forked(spec, report)
    };
    let mut on_error = |step: &'static str, errno: nix::errno::Errno| {
        crate::init::report_start_failure(report_fd, step, errno)
    };
    let cgroup = crate::cgroups::open_v2_dir(&spec.ops);
    let cgroup = cgroup.as_ref().map(std::os::fd::AsFd::as_fd);
    // SAFETY: `sys::single_threaded()` held just before this call.
    unsafe {
        sys::clone_fork(
            flags,
            cgroup,
            id_maps,
            &pipes.fds,
            &mut child,
            &mut on_error,
        )
    }
}

/// A multithreaded caller must not run anything but exec in its child: its zygote
/// (started once, single-threaded) forks the container instead. `None` if there is no
/// zygote.
fn zygote_init(
    spec: &InitSpec,
    flags: nix::sched::CloneFlags,
    id_maps: Option<&sys::IdMaps>,
    pipes: &Pipes,
) -> Option<Result<(Pid, std::os::fd::OwnedFd), sys::SysError>> {
    let stdio = match &pipes.fds[..] {
        [(i, 0), (o, 1), (e, 2)] => [*i, *o, *e],
        _ => [0, 1, 2],
    };
    super::zygote::start_container(
        spec,
        flags,
        id_maps,
        [stdio[0], stdio[1], stdio[2], pipes.report_w.as_raw_fd()],
    )
}

/// No zygote: exec pristine's own binary as the init, which reads the spec from a pipe
/// (the returned write end).
fn exec_init(
    v: &Validated,
    spec: &InitSpec,
    flags: nix::sched::CloneFlags,
    id_maps: Option<sys::IdMaps>,
    pipes: &mut Pipes,
) -> Result<(Pid, std::os::fd::OwnedFd, std::os::fd::OwnedFd), Error> {
    let program = init_program().ok_or(Error::InitNotFound)?;
    let (spec_r, spec_w) = pipe("create the spec pipe")?;
    let mut fds = pipes.fds.clone();
    fds.extend([(spec_r.as_raw_fd(), 3), (pipes.report_w.as_raw_fd(), 4)]);
    pipes.child_ends.push(spec_r);
    let cgroup = crate::cgroups::open_v2_dir(&spec.ops);
    let req = ExecRequest {
        program: cstr("init program", program)?,
        argv: vec![cstr("init program", program)?, cstr("argument", INIT_ARG)?],
        envp: Vec::new(),
        fds,
        ambient_caps: v.rootless && spec.user.is_some_and(|(u, _)| u != 0),
        id_maps,
        cgroup: cgroup.as_ref().map(|fd| fd.as_raw_fd()),
    };
    let (pid, pidfd) = sys::clone_exec(flags, &req).map_err(|e| start_error(e, v.rootless))?;
    Ok((pid, pidfd, spec_w))
}

/// Stage 5: wait for the end (or the timeout), collecting output and the init's report.
fn wait_for(
    c: &Container,
    v: &Validated,
    s: &Started,
    pipes: Pipes,
    cgroup: Option<&crate::cgroups::ContainerCgroup>,
) -> Result<Finished, Error> {
    let Pipes {
        report_r,
        report_w,
        out,
        ..
    } = pipes;
    drop(report_w);
    let deadline = c
        .timeout
        .map(|t| s.started + t.min(crate::duration::MAX_DURATION));
    let Supervised {
        stdout,
        stderr,
        report,
        wait,
        timed_out,
    } = supervise(s.is_child, &s.pidfd, report_r, out, deadline);
    let duration = s.started.elapsed();
    let report: Option<InitReport> = serde_json::from_slice(&report).ok();
    let oom_killed = cgroup.and_then(|cg| cg.oom_killed());
    let status = match (report, timed_out) {
        (_, true) => ExitStatus::Signaled(libc::SIGKILL),
        (Some(InitReport::Exited(code)), _) => ExitStatus::Exited(code),
        (Some(InitReport::Signaled(sig)), _) => ExitStatus::Signaled(sig),
        (Some(InitReport::SetupFailed(e)), _) => {
            let hint = hints::for_setup(&e.op, e.errno, v.rootless);
            return Err(Error::Setup {
                step: e.step,
                detail: e.detail,
                path: e.path,
                hint,
            });
        }
        (Some(InitReport::ExecFailed { program, errno }), _) => {
            return Err(Error::Exec { program, errno })
        }
        (None, false) => {
            if let Some(limit) = oom_killed {
                return Err(Error::OutOfMemory { limit });
            }
            let how = match s.spec_sent {
                true => wait,
                false => format!("could not send it the spec; it ended with {wait}"),
            };
            return Err(Error::Lost {
                pid: s.pid.as_raw(),
                how,
            });
        }
    };
    Ok(Finished {
        status,
        stdout,
        stderr,
        duration,
        timed_out,
        oom_killed,
    })
}

/// Stage 6: keep the upper layer if asked (the container directory goes either way, when
/// the layout is dropped).
fn keep_if_asked(
    c: &Container,
    v: &Validated,
    layout: &Layout,
    ops: &[SetupOp],
    base: &Path,
    end: &Finished,
) -> Result<Option<Kept>, Error> {
    let keep = match c.keep {
        Keep::Never => false,
        Keep::Always => true,
        Keep::OnFailure => !end.status.success() || end.timed_out,
    };
    let (true, Some(d)) = (keep, &layout.cdir) else {
        return Ok(None);
    };
    let upper_dir = match &layout.upper {
        UpperPlacement::Disk { upper, .. } => Some(upper.as_path()),
        UpperPlacement::Tmpfs { .. } => None,
    };
    let scaffold = scaffold(ops, &base.join("root"), upper_dir);
    keep_upper(&layout.store, &v.id, &d.upper(), &layout.image, &scaffold).map(Some)
}

/// Checks the hostname and the limits before anything is created.
fn check_limits(c: &Container, hostname: &str) -> Result<(), ConfigError> {
    let printable = hostname.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if hostname.is_empty() || hostname.len() > 64 || !printable {
        return Err(ConfigError::BadHostname(hostname.to_string()));
    }
    match (c.limits.pids, c.limits.memory_bytes) {
        (Some(n), _) if n < crate::error::MIN_PIDS => Err(ConfigError::PidsTooLow(n)),
        (_, Some(m)) if m < crate::error::MIN_MEMORY => Err(ConfigError::MemoryTooLow(m)),
        _ => Ok(()),
    }
}

/// What the setup steps made under the new root (mount points, symlinks, and directories of
/// the upper layer that stand for host directories), as absolute paths inside the
/// container: the diff of a kept upper layer does not count them.
fn scaffold(ops: &[SetupOp], root: &Path, upper: Option<&Path>) -> Vec<PathBuf> {
    fn made(op: &SetupOp, root: &Path, upper: Option<&Path>) -> Option<PathBuf> {
        let rel = match op {
            SetupOp::UnlessGone { op, .. } => return made(op, root, upper),
            SetupOp::Mkdir { path, .. } => upper
                .and_then(|u| path.strip_prefix(u).ok())
                .filter(|rel| !rel.as_os_str().is_empty()),
            SetupOp::Bind { target, .. }
            | SetupOp::BindDevice { target, .. }
            | SetupOp::Overlay { target, .. }
            | SetupOp::Tmpfs { target, .. }
            | SetupOp::Proc { target }
            | SetupOp::Devpts { target, .. }
            | SetupOp::Symlink { link: target, .. } => target.strip_prefix(root).ok(),
            _ => None,
        };
        rel.map(|rel| Path::new("/").join(rel))
    }
    ops.iter().filter_map(|op| made(op, root, upper)).collect()
}

/// Whether [`Upper::Auto`] puts the upper in the store: when copy-up from the image's
/// stored layers into it is a reflink (`PRISTINE_UPPER=tmpfs` keeps it in memory).
fn upper_on_store(store: &Store, image: &crate::Image) -> bool {
    let forced_tmpfs = std::env::var_os("PRISTINE_UPPER").is_some_and(|v| v == "tmpfs");
    !forced_tmpfs
        && store.reflink().works()
        && image.layers().iter().any(|l| l.starts_with(store.root()))
}

/// A caller-provided upper directory and the work directory made beside it for one run.
struct OwnUpper {
    upper: PathBuf,
    work: PathBuf,
}

impl OwnUpper {
    fn new(dir: &Path, id: &str) -> Result<Self, Error> {
        let upper = std::fs::canonicalize(dir).map_err(|source| ConfigError::MissingDirectory {
            what: "upper directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let name = upper
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let work = upper.with_file_name(format!(".{name}.work-{id}"));
        std::fs::create_dir(&work).map_err(|source| Error::Io {
            op: "create the overlay work directory beside the upper directory",
            source,
        })?;
        Ok(OwnUpper { upper, work })
    }
}

impl Drop for OwnUpper {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.work);
    }
}

/// Moves the upper layer to `STORE/kept/ID/upper` and records the lower layers beside it
/// (`lowers`, one path a line, uppermost first) so that the diff can be computed later.
fn keep_upper(
    store: &Store,
    id: &str,
    upper: &Path,
    image: &crate::Image,
    scaffold: &[PathBuf],
) -> Result<Kept, Error> {
    let dir = store.kept_dir().join(id);
    let io = |op| move |source| Error::Io { op, source };
    // Ids are random: an existing directory of that name is not ours to replace.
    std::fs::create_dir(&dir).map_err(io("create the kept directory"))?;
    std::fs::rename(upper, dir.join("upper"))
        .map_err(io("move the upper layer to the kept directory"))?;
    let lowers = image.lowers();
    let text: String = lowers
        .iter()
        .map(|l| format!("{}\n", l.display()))
        .collect();
    std::fs::write(dir.join("lowers"), text).map_err(io("record the lower layers"))?;
    let text: String = scaffold
        .iter()
        .map(|m| format!("{}\n", m.display()))
        .collect();
    std::fs::write(dir.join("scaffold"), text).map_err(io("record the setup's scaffold"))?;
    Ok(Kept { dir })
}

/// Host paths that no lower of a rootless, per-directory host root may contain (overlayfs
/// refuses nested layers): the store, for its layers and container directories, as a whole;
/// layers and an on-disk upper elsewhere. Each as the real path, without symlinks: what
/// matters is which host directory holds it (a store reached through `/opt/link` may be in
/// `/var`).
fn split_stops(store: &Path, layers: &[PathBuf], upper: &UpperPlacement) -> Vec<PathBuf> {
    let on_disk = match upper {
        UpperPlacement::Disk { upper, work, .. } => vec![upper, work],
        UpperPlacement::Tmpfs { .. } => Vec::new(),
    };
    let mut stops: Vec<PathBuf> = Vec::new();
    for p in layers.iter().chain(on_disk) {
        let p = if p.starts_with(store) { store } else { p };
        if !stops.iter().any(|s| s == p) {
            stops.push(p.to_path_buf());
        }
    }
    stops
        .into_iter()
        .map(|s| std::fs::canonicalize(&s).unwrap_or(s))
        .collect()
}

/// The signals `pristine run` passes on to its container.
const FOREGROUND_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Installs SIGINT/SIGTERM/SIGHUP handlers that pass the signal on to the container
/// currently running with inherited stdio (for `pristine run`): its init forwards it to the
/// command, which can then exit cleanly. Without a running container the signal ends this
/// process as usual (and, through die-with-parent, any container it had).
#[doc(hidden)]
pub fn forward_signals_to_foreground() {
    sys::forward_signals(&FOREGROUND_SIGNALS);
}

/// Forwarding to one foreground container: its signals blocked from before `clone` until
/// [`Forwarding::forward_to`] names its PID 1; forwarding stops when this is dropped (and a
/// signal still blocked then, because the container never started, takes its default action).
struct Forwarding {
    old_mask: SigSet,
    /// Whether the signals are still blocked (no target yet).
    held: bool,
}

impl Forwarding {
    fn hold() -> Result<Self, sys::SysError> {
        let set: SigSet = FOREGROUND_SIGNALS.into_iter().collect();
        Ok(Self {
            old_mask: sys::block_signals(&set)?,
            held: true,
        })
    }

    /// Sends these signals to the process of `pidfd` (open until this is dropped) from now
    /// on, and one that arrived meanwhile right away (unblocking runs its handler).
    fn forward_to(&mut self, pidfd: &std::os::fd::OwnedFd) {
        sys::set_forward_target(Some(pidfd.as_raw_fd()));
        let _ = sys::set_signal_mask(&self.old_mask);
        self.held = false;
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        sys::set_forward_target(None);
        if self.held {
            let _ = sys::set_signal_mask(&self.old_mask);
        }
    }
}

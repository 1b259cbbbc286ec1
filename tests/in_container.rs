//! pristine inside a podman container: rootful, and as an ordinary user's (rootless)
//! container. With the privileges README ("In a CI container") documents, `pristine run`
//! and a small suite of this binary (`suite_inside_podman`) pass inside; without them,
//! pristine's error names the missing privilege and the podman flag that grants it.
//!
//! Every podman command runs in a private mount namespace (`unshare --mount --propagation
//! private`), with its storage (`--root`, `--runroot`) in this test's temporary directory:
//! podman's storage and overlay mounts never appear in the host's mount namespace, where
//! they would break rootless containers of other test processes. The tests assert that no
//! mount is left behind.
//!
//! Needs root (a rootful podman, and `setpriv` to `nobody` for the rootless one) and
//! podman (`.ci/run` installs it); run as an ordinary user, they say so and return.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pristine::{Container, Image};

mod common;

/// Where the binaries are bound in the podman container: `pristine` beside `deps/`, as
/// `common::pristine_bin` looks for it.
const INNER: &str = "/pristine-test";

/// The flags README documents, each case's own.
const ROOTFUL_FLAGS: &[&str] = &["--cap-add", "SYS_ADMIN,NET_ADMIN"];
const ROOTLESS_FLAGS: &[&str] = &["--cap-add", "SYS_ADMIN", "--security-opt", "unmask=/proc/*"];

/// A small suite, run inside the podman container by the other tests (never on the host:
/// it is ignored, and refuses to run outside a podman container).
#[test]
#[ignore = "run inside podman containers by the other tests of this file"]
fn suite_inside_podman() {
    assert!(
        Path::new("/run/.containerenv").exists(),
        "runs only inside a podman container"
    );
    let store = tempfile::tempdir().unwrap();
    let c = || {
        Container::new(Image::host())
            .store(store.path())
            .timeout(Duration::from_secs(60))
    };
    let out = c()
        .hostname("box")
        .run([
            "sh",
            "-c",
            "echo $$ $(hostname); echo x > /root/pristine-motd; cat /root/pristine-motd",
        ])
        .unwrap();
    assert_eq!(out.stdout_str(), "2 box\nx\n", "{out:?}");
    assert!(
        !Path::new("/root/pristine-motd").exists(),
        "a write reached the podman container"
    );
    let out = c().run(["sh", "-c", "exit 7"]).unwrap();
    assert_eq!(out.status, pristine::ExitStatus::Exited(7));
    let out = c()
        .run([
            "sh",
            "-c",
            "ls /sys/class/net 2>/dev/null || cat /proc/net/dev",
        ])
        .unwrap();
    assert!(
        out.status.success() && out.stdout_str().contains("lo"),
        "{out:?}"
    );
    assert!(!out.stdout_str().contains("eth0"), "{out:?}");
    let many: Vec<_> = (0..4)
        .map(|i| {
            let c = c();
            std::thread::spawn(move || c.run(["sh", "-c", &format!("echo {i}")]).unwrap())
        })
        .collect();
    for (i, t) in many.into_iter().enumerate() {
        assert_eq!(t.join().unwrap().stdout_str(), format!("{i}\n"));
    }
    println!("SUITE PASSED");
}

/// A podman with its storage in a temporary directory, every command in a private mount
/// namespace; rootless as `nobody` when `rootless`.
struct Podman {
    dir: tempfile::TempDir,
    rootless: bool,
}

impl Podman {
    fn new(rootless: bool) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        // `nobody` must enter it (mktemp directories are 0700), and own what it writes.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Podman { dir, rootless };
        for sub in ["home", "xdg", "rootfs", "bin/deps"] {
            std::fs::create_dir_all(p.path(sub)).unwrap();
        }
        p.copy_binaries();
        p.make_rootfs();
        if rootless {
            let chown = Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(p.dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        p
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// This test binary and `pristine`, where `nobody` can read them.
    fn copy_binaries(&self) {
        let me = std::env::current_exe().unwrap();
        std::fs::copy(&me, self.path("bin/deps/in_container")).unwrap();
        std::fs::copy(common::pristine_bin(), self.path("bin/pristine")).unwrap();
    }

    /// The rootless container's root: the merged-/usr links and empty directories, with
    /// the host's `/usr` and `/etc` bound read-only over them (`image_flags`).
    fn make_rootfs(&self) {
        let root = self.path("rootfs");
        for d in [
            "usr", "etc", "proc", "sys", "dev", "tmp", "run", "var/tmp", "root",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        for l in ["bin", "lib", "lib64", "sbin"] {
            if std::fs::read_link(Path::new("/").join(l)).is_ok() {
                std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
            }
        }
    }

    /// The container's root filesystem. Rootful: the host's root under a copy-on-write
    /// overlay (`:O`), as a distribution image would be. Rootless: the small tree above
    /// (a single-uid user namespace cannot own the host's files), with `/usr` and `/etc`
    /// bound in.
    fn image_flags(&self) -> Vec<String> {
        let root = self.path("rootfs").display().to_string();
        match self.rootless {
            false => vec!["--rootfs".into(), "/:O".into()],
            true => ["-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro", "--rootfs"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("{root}:O")])
                .collect(),
        }
    }

    /// `podman run --rm FLAGS IMAGE ARGS…`, in a private mount namespace.
    fn run(&self, flags: &[&str], args: &[&str]) -> Output {
        let mut cmd = Command::new("unshare");
        // From `/`: the checkout may be where `nobody` cannot go (CI's clone is under a
        // 0700 `mktemp -d`), and runc chdirs to podman's working directory.
        cmd.current_dir("/")
            .args(["--mount", "--propagation", "private"]);
        if self.rootless {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ]);
        }
        cmd.arg("podman")
            .arg(format!("--root={}", self.path("storage").display()))
            .arg(format!("--runroot={}", self.path("run").display()))
            // No systemd here to ask for cgroups or to log events to.
            .args(["--cgroup-manager=cgroupfs", "--events-backend=none"]);
        if common::which("runc").is_some() {
            // crun refuses a cgroup v1 hybrid host whose v2 hierarchy has controllers
            // (this kind of machine's `hugetlb`); runc accepts it.
            cmd.arg("--runtime=runc");
        }
        cmd.args(["run", "--rm", "--network=none"])
            .args(ulimit_flags(self.rootless))
            .args(["-e", "HOME=/tmp", "-e", "TMPDIR=/tmp"])
            .arg("-v")
            .arg(format!("{}:{INNER}:ro", self.path("bin").display()))
            .args(flags)
            .args(self.image_flags())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.path("home"))
            .env("XDG_RUNTIME_DIR", self.path("xdg"))
            .env("XDG_CONFIG_HOME", self.path("home"));
        let out = cmd.output().unwrap();
        eprintln!(
            "podman {flags:?} {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `pristine run ARGS…` inside a podman container with `flags`: (success, stderr).
    fn pristine(&self, flags: &[&str], args: &[&str]) -> (bool, String) {
        let bin = format!("{INNER}/pristine");
        let all: Vec<&str> = [bin.as_str(), "run"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let out = self.run(flags, &all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// This binary's `suite_inside_podman`, inside a podman container with `flags`.
    fn suite(&self, flags: &[&str]) {
        let bin = format!("{INNER}/deps/in_container");
        let out = self.run(
            flags,
            &[
                &bin,
                "--ignored",
                "--exact",
                "suite_inside_podman",
                "--nocapture",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("SUITE PASSED"),
            "{out:?}"
        );
    }
}

impl Drop for Podman {
    /// Stops the rootless podman's pause process (it holds the user namespace podman
    /// made); the mount namespaces went with their commands.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("xdg/libpod/tmp/pause.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// podman's default rlimits for a rootful container (nofile 1048576, nproc 4194304) need
/// CAP_SYS_RESOURCE where they exceed the caller's hard limits; a root without it (this
/// kind of machine) cannot start any container. So: the caller's own hard limits, and
/// nproc at most 32768, the limit podman starts conmon (and so the runtime) with.
fn ulimit_flags(rootless: bool) -> Vec<String> {
    if rootless {
        return Vec::new(); // rootless podman keeps the caller's limits
    }
    let nofile = hard_limit("Max open files").min(1048576);
    let nproc = hard_limit("Max processes").min(32768);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// The hard limit `name` of this process, from `/proc/self/limits` ("unlimited" as
/// `u64::MAX`).
fn hard_limit(name: &str) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    let hard = line[name.len()..].split_whitespace().nth(1).unwrap();
    hard.parse().unwrap_or(u64::MAX)
}

/// Whether the test can run here; `false` (said on stderr) for an ordinary user. As root,
/// a missing podman is a failure with the reason: CI installs it.
fn runnable() -> bool {
    if !common::is_root() {
        eprintln!("in_container: needs root (a rootful podman, and setpriv for the rootless one); not run");
        return false;
    }
    assert!(
        common::which("podman").is_some(),
        "needs podman: apt-get install podman (and runc on a cgroup v1 hybrid host); .ci/run installs both"
    );
    true
}

/// Mount points whose path or source names `dir` or podman's default storage.
fn leaked_mounts(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains(&dir) || l.contains("/var/lib/containers") || l.contains("/run/containers")
        })
        .map(str::to_string)
        .collect()
}

fn assert_mentions(stderr: &str, needles: &[&str]) {
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in:\n{stderr}");
    }
}

#[test]
fn rootful_podman_runs_pristine_with_the_documented_flags() {
    if !runnable() {
        return;
    }
    let before = leaked_mounts(Path::new("/nonexistent"));
    let p = Podman::new(false);
    // The default privileges: no CAP_SYS_ADMIN.
    let (ok, err) = p.pristine(&[], &["--", "true"]);
    assert!(!ok);
    assert_mentions(
        &err,
        &[
            "clone: EPERM",
            "lacks CAP_SYS_ADMIN",
            "--cap-add SYS_ADMIN",
            "podman container",
        ],
    );
    // CAP_SYS_ADMIN alone: `lo` cannot be brought up.
    let (ok, err) = p.pristine(&["--cap-add", "SYS_ADMIN"], &["--", "true"]);
    assert!(!ok);
    assert_mentions(&err, &["lacks CAP_NET_ADMIN", "--cap-add NET_ADMIN"]);
    // The documented flags.
    let (ok, err) = p.pristine(
        ROOTFUL_FLAGS,
        &["--", "sh", "-c", "touch /root/x && test -c /dev/null"],
    );
    assert!(ok, "{err}");
    p.suite(ROOTFUL_FLAGS);
    // Limits need a writable cgroup filesystem: `--privileged`.
    let (ok, err) = p.pristine(ROOTFUL_FLAGS, &["--pids", "64", "--", "true"]);
    assert!(!ok);
    assert_mentions(&err, &["read-only", "--privileged"]);
    let (ok, err) = p.pristine(
        &["--privileged"],
        &["--pids", "64", "--memory", "64m", "--", "true"],
    );
    assert!(ok, "{err}");
    let dir = p.dir.path().to_path_buf();
    drop(p);
    assert_eq!(
        leaked_mounts(&dir),
        before,
        "podman left mounts on the host"
    );
}

#[test]
fn rootless_podman_runs_pristine_with_the_documented_flags() {
    if !runnable() {
        return;
    }
    assert!(
        common::which("setpriv").is_some(),
        "needs setpriv (util-linux)"
    );
    let before = leaked_mounts(Path::new("/nonexistent"));
    let p = Podman::new(true);
    // The default privileges: pristine's own user namespace is allowed (podman's seccomp
    // profile permits it), but a fresh /proc may not be mounted over podman's masks.
    let (ok, err) = p.pristine(&[], &["--", "true"]);
    assert!(!ok);
    assert_mentions(
        &err,
        &[
            "mount proc",
            "EPERM",
            "rootless podman container",
            "--security-opt unmask=/proc/*",
        ],
    );
    // /proc unmasked: podman's seccomp profile allows sethostname only with CAP_SYS_ADMIN.
    let (ok, err) = p.pristine(&ROOTLESS_FLAGS[2..], &["--", "true"]);
    assert!(!ok);
    assert_mentions(
        &err,
        &[
            "sethostname",
            "EPERM",
            "lacks CAP_SYS_ADMIN",
            "--cap-add SYS_ADMIN",
        ],
    );
    let (ok, err) = p.pristine(
        ROOTLESS_FLAGS,
        &["--", "sh", "-c", "touch /root/x && test -c /dev/null"],
    );
    assert!(ok, "{err}");
    p.suite(ROOTLESS_FLAGS);
    let dir = p.dir.path().to_path_buf();
    drop(p);
    assert_eq!(
        leaked_mounts(&dir),
        before,
        "podman left mounts on the host"
    );
}

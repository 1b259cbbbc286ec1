//! The container is hostile: every attack of issue 9 tried from inside a container and
//! asserted blocked, with the host asserted unchanged. Each probe is harmless (it writes
//! back the value it just read, unmounts at once what did mount, writes only under this
//! test's own temporary directories), and where that is safe the same attack is shown to
//! succeed in a privileged container, so that each assertion can fail.
//!
//! Runs as the invoking user; as root, `rootless_mode_passes_too` runs this binary again as
//! `nobody`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pristine::{Bind, Container, Image, User};

mod common;

/// Where the probe binary (this test binary) is bound inside containers.
const PROBE: &str = "/probe";

/// A directory under `/var/tmp`, which containers see in both modes (their `/tmp` is a
/// fresh tmpfs, and the rootless re-run's home is under the host's `/tmp`).
fn var_tmp_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

struct Fixture {
    store: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let store = var_tmp_dir();
        // Made a store first: the tests put layer directories of their own in it, and
        // pristine opens only an empty directory or a store as one.
        pristine::Store::open(store.path()).expect("open the test store");
        Fixture { store }
    }

    /// A container of `image` with the probe bound in.
    fn container(&self, image: Image) -> Container {
        Container::new(image)
            .store(self.store.path())
            .timeout(Duration::from_secs(60))
            .bind(Bind {
                source: std::env::current_exe().unwrap(),
                target: PROBE.into(),
                readonly: true,
            })
    }

    /// Runs the probe `name` in `c`; its report (`ok …` or `errno N`).
    fn probe(&self, c: Container, name: &str) -> String {
        let out = c
            .env("PRISTINE_PROBE", name)
            .run([PROBE, "--ignored", "--exact", "probe", "--nocapture"])
            .unwrap_or_else(|e| panic!("probe {name}: {e}"));
        out.stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix("PROBE "))
            .unwrap_or_else(|| panic!("probe {name} said nothing: {out:?}"))
            .to_string()
    }

    fn sh(&self, c: Container, script: &str) -> pristine::Outcome {
        c.run(["/bin/sh", "-c", script]).unwrap()
    }
}

/// The probe itself, run inside containers by the other tests (never on the host: it is
/// ignored, and refuses to run outside a container).
#[test]
#[ignore = "run inside containers by the other tests of this file"]
fn probe() {
    let name = std::env::var("PRISTINE_PROBE").expect("PRISTINE_PROBE names the probe");
    assert_eq!(
        std::process::id(),
        2,
        "probes run only as a container's command"
    );
    let result = probes::run(&name);
    println!("PROBE {result}");
}

mod probes {
    use std::ffi::CString;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn report(rc: libc::c_long) -> String {
        match rc {
            rc if rc < 0 => format!("errno {}", errno()),
            rc => format!("ok {rc}"),
        }
    }

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// `mount(2)` of `fstype` on a fresh directory; unmounted at once if it worked.
    fn mount(fstype: &str, data: &str) -> String {
        let dir = format!("/tmp/probe-{fstype}");
        std::fs::create_dir_all(&dir).unwrap();
        let (src, target, fs, data) = (c(fstype), c(&dir), c(fstype), c(data));
        // SAFETY: NUL-terminated strings alive for the calls.
        unsafe {
            let rc = libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                data.as_ptr().cast(),
            );
            let r = report(rc as libc::c_long);
            if rc == 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
            r
        }
    }

    /// `mknod` of a device in `/dev` (the one mount with usable nodes), opened and read
    /// (one record or block), then removed.
    fn device(kind: libc::mode_t, major: u32, minor: u32) -> String {
        let path = c("/dev/probe-node");
        // SAFETY: a NUL-terminated path; plain system calls.
        unsafe {
            let dev = libc::makedev(major, minor);
            if libc::mknod(path.as_ptr(), kind | 0o600, dev) != 0 {
                return format!("errno {}", errno());
            }
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
            libc::unlink(path.as_ptr());
            if fd < 0 {
                return format!("errno {} (open)", errno());
            }
            let mut buf = [0u8; 512];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            format!("ok read {n}")
        }
    }

    /// Reads a sysctl and writes the same value back.
    fn sysctl(path: &str) -> String {
        let value = std::fs::read(path).unwrap();
        match std::fs::write(path, &value) {
            Ok(()) => "ok".into(),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
        }
    }

    /// The controlling terminal as the command sees it: `tty_nr` of `/proc/self/stat`,
    /// opening `/dev/tty`, and `TIOCSTI` on stdin (the caller's terminal, in the test;
    /// the byte pushed, if it gets through, lands in the test's own pty).
    fn terminal() -> String {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let tty_nr = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(4)
            .unwrap();
        let tty = c("/dev/tty");
        // SAFETY: a NUL-terminated path and a one-byte buffer, alive for the calls.
        let (open, sti) = unsafe {
            let fd = libc::open(tty.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            let open = report(fd as libc::c_long);
            if fd >= 0 {
                libc::close(fd);
            }
            let sti = report(libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) as libc::c_long);
            (open, sti)
        };
        format!("tty_nr {tty_nr}, /dev/tty {open}, tiocsti {sti}")
    }

    pub(super) fn run(name: &str) -> String {
        let env = |k: &str| std::env::var(k).unwrap().parse::<u32>().unwrap();
        // SAFETY (the raw calls below): system calls with integer arguments or null
        // pointers, each harmless when it succeeds (see the comments).
        unsafe {
            match name {
                "mount-tmpfs" => mount("tmpfs", ""),
                "mount-sysfs" => mount("sysfs", ""),
                "mount-cgroup" => mount("cgroup", "memory"),
                "block-device" => device(libc::S_IFBLK, env("MAJOR"), env("MINOR")),
                "kmsg" => device(libc::S_IFCHR, 1, 11),
                "sysctl" => sysctl("/proc/sys/vm/swappiness"),
                // Looks the user keyring up without creating it.
                "keyctl" => report(libc::syscall(libc::SYS_keyctl, 0, -4i64, 0)),
                // An invalid descriptor: EBADF if the call gets through.
                "module" => report(libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0)),
                // Bad magic numbers: EINVAL if the call gets through.
                "reboot" => report(libc::syscall(libc::SYS_reboot, 0, 0, 0, 0)),
                // SYSLOG_ACTION_SIZE_BUFFER: the size of the kernel log.
                "syslog" => report(libc::syscall(libc::SYS_syslog, 10, 0, 0)),
                "unshare-user" => report(libc::unshare(libc::CLONE_NEWUSER) as libc::c_long),
                "euid" => format!("ok {}", libc::geteuid()),
                "tiocsti" => report(libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) as libc::c_long),
                "terminal" => terminal(),
                other => panic!("no probe {other}"),
            }
        }
    }
}

fn blocked(r: &str) -> bool {
    r.starts_with("errno")
}

#[test]
fn confined_by_default_and_not_when_privileged() {
    let f = Fixture::new();
    let status = |c: Container| {
        let out = f.sh(c, "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status");
        assert!(out.status.success(), "{out:?}");
        out.stdout_str()
    };
    let text = status(f.container(Image::host()));
    // Docker's default set less CAP_MKNOD, in every set; inheritable and ambient empty.
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t00000000a00425fb",
        "CapEff:\t00000000a00425fb",
        "CapBnd:\t00000000a00425fb",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    let text = status(f.container(Image::host()).privileged());
    assert!(text.contains("NoNewPrivs:\t0"), "{text}");
    assert!(text.contains("Seccomp:\t0"), "{text}");
    // No input pushed into a terminal (stdin is /dev/null here: ENOTTY once the call
    // reaches the kernel).
    let r = f.probe(f.container(Image::host()), "tiocsti");
    assert_eq!(r, format!("errno {}", libc::EPERM));
    let r = f.probe(f.container(Image::host()).privileged(), "tiocsti");
    assert_eq!(r, format!("errno {}", libc::ENOTTY));
}

/// `pristine run` with a pty as its controlling terminal (`script` makes one): the
/// container has no controlling terminal, `/dev/tty` is ENXIO, and `TIOCSTI` on the
/// terminal it has as stdin is refused; privileged too, where only `CAP_SYS_ADMIN` (root's)
/// may still push input into a terminal that is not its own.
#[test]
fn the_callers_terminal_is_out_of_reach() {
    let f = Fixture::new();
    let probe = std::env::current_exe().unwrap();
    for privileged in [false, true] {
        let command = format!(
            "{bin} run --store {store} --bind {probe}:{PROBE}:ro --env PRISTINE_PROBE=terminal \
             {flag} -- {PROBE} --ignored --exact probe --nocapture; \
             (exec 3<>/dev/tty) && echo caller-has-a-terminal",
            bin = common::pristine_bin().display(),
            store = f.store.path().display(),
            probe = probe.display(),
            flag = if privileged { "--privileged" } else { "" },
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script (util-linux), which gives the test a pty");
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert!(out.status.success(), "{text}");
        // The attack's premise: the caller has a terminal that /dev/tty reaches.
        assert!(text.contains("caller-has-a-terminal"), "{text}");
        // (A byte that root's TIOCSTI pushes in is echoed at the start of the line.)
        let line = text
            .lines()
            .find_map(|l| l.split_once("PROBE ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("the probe said nothing: {text}"));
        let refused = format!("tty_nr 0, /dev/tty errno {}, tiocsti ", libc::ENXIO);
        assert!(
            line.starts_with(&refused),
            "privileged {privileged}: {line}"
        );
        if !privileged || !common::is_root() {
            assert!(line.ends_with(&format!("errno {}", libc::EPERM)), "{line}");
        }
    }
}

#[test]
fn mounts_of_any_kind_are_refused() {
    let f = Fixture::new();
    for probe in ["mount-tmpfs", "mount-sysfs", "mount-cgroup"] {
        let r = f.probe(f.container(Image::host()), probe);
        assert!(blocked(&r), "{probe}: {r}");
    }
    // The probe can tell: privileged, a tmpfs mounts (in the container's namespace).
    let r = f.probe(f.container(Image::host()).privileged(), "mount-tmpfs");
    assert_eq!(r, "ok 0");
    let r = f.probe(
        f.container(Image::host()).cap_add("CAP_SYS_ADMIN"),
        "mount-tmpfs",
    );
    assert_eq!(r, "ok 0", "--cap-add CAP_SYS_ADMIN opens mount");
}

/// The host root's block device, `(major, minor)`.
fn root_device() -> (u32, u32) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    let (major, minor) = line.split(' ').nth(2).unwrap().split_once(':').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

#[test]
fn host_devices_cannot_be_made_and_opened() {
    let f = Fixture::new();
    let (major, minor) = root_device();
    let c = |c: Container| {
        c.env("MAJOR", major.to_string())
            .env("MINOR", minor.to_string())
    };
    let r = f.probe(c(f.container(Image::host())), "block-device");
    assert!(blocked(&r), "mknod of the host disk: {r}");
    let r = f.probe(f.container(Image::host()), "kmsg");
    assert!(blocked(&r), "mknod of /dev/kmsg: {r}");
    if common::is_root() {
        // Privileged, root makes the nodes (opening them, read-only, is then up to the
        // host's own policy: this machine's kernel refuses to open its disk, for one).
        let made = |r: &str| r.starts_with("ok") || r.ends_with("(open)");
        let r = f.probe(c(f.container(Image::host()).privileged()), "block-device");
        assert!(made(&r), "{r}");
        let r = f.probe(f.container(Image::host()).privileged(), "kmsg");
        assert!(r.starts_with("ok read"), "{r}");
    }
}

#[test]
fn host_sysctls_stay_unchanged() {
    let f = Fixture::new();
    let before = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    let r = f.probe(f.container(Image::host()), "sysctl");
    assert_eq!(r, format!("errno {}", libc::EROFS));
    let out = f.sh(
        f.container(Image::host()),
        "echo '|/bin/false' > /proc/sys/kernel/core_pattern; echo 1 > /proc/sysrq-trigger; \
         cat /proc/keys /proc/timer_list 2>&1 | wc -c",
    );
    assert_eq!(out.stdout_str(), "0\n", "{out:?}");
    if common::is_root() {
        // Privileged, the same value written back goes through (to the host's kernel).
        let r = f.probe(f.container(Image::host()).privileged(), "sysctl");
        assert_eq!(r, "ok");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        before
    );
}

#[test]
fn keyrings_modules_reboot_kernel_log_and_user_namespaces_are_refused() {
    let f = Fixture::new();
    for probe in ["keyctl", "module", "reboot", "syslog", "unshare-user"] {
        let r = f.probe(f.container(Image::host()), probe);
        assert_eq!(r, format!("errno {}", libc::EPERM), "{probe}");
    }
    // Privileged, each call gets through to the kernel (and fails there harmlessly).
    let privileged = |p| f.probe(f.container(Image::host()).privileged(), p);
    // EBADF, or ENOSYS from a kernel built without modules. Rootless, the kernel itself may
    // refuse first: loading a module needs CAP_SYS_MODULE in the initial user namespace,
    // which Linux 6.1 checks before the descriptor (6.18 checks the descriptor first).
    let module = privileged("module");
    let mut expected = vec![libc::EBADF, libc::ENOSYS];
    if !common::is_root() {
        expected.push(libc::EPERM);
    }
    assert!(
        expected.iter().any(|e| module == format!("errno {e}")),
        "{module}"
    );
    assert_eq!(privileged("reboot"), format!("errno {}", libc::EINVAL));
    // (EINVAL: the probe runs in a thread of its test harness, and a multithreaded process
    // may not enter a new user namespace; what counts is that no filter refused it.)
    let unshare = privileged("unshare-user");
    assert!(
        unshare == "ok 0" || unshare == format!("errno {}", libc::EINVAL),
        "{unshare}"
    );
}

#[test]
fn setuid_binaries_give_nothing_back() {
    let f = Fixture::new();
    // A layer holding a copy of the probe, setuid to its owner (root, when root runs this).
    let layer = var_tmp_dir();
    let bin = layer.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(std::env::current_exe().unwrap(), bin.join("probe-suid")).unwrap();
    std::fs::set_permissions(
        bin.join("probe-suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let run = |c: Container| {
        let out = c
            .user(User::Id(65534, 65534))
            .env("PRISTINE_PROBE", "euid")
            .run([
                "/usr/local/bin/probe-suid",
                "--ignored",
                "--exact",
                "probe",
                "--nocapture",
            ])
            .unwrap();
        out.stdout_str().to_string()
    };
    let image = || Image::host().layer(layer.path());
    let out = run(f.container(image()));
    assert!(out.contains("PROBE ok 65534"), "{out}");
    if common::is_root() {
        let out = run(f.container(image()).privileged());
        assert!(
            out.contains("PROBE ok 0"),
            "privileged honours setuid: {out}"
        );
    }
}

#[test]
fn read_only_binds_stay_read_only() {
    let f = Fixture::new();
    let vol = var_tmp_dir();
    std::fs::write(vol.path().join("f"), "host\n").unwrap();
    std::fs::set_permissions(vol.path().join("f"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let c = || {
        f.container(Image::host()).bind(Bind {
            source: vol.path().to_path_buf(),
            target: "/vol".into(),
            readonly: true,
        })
    };
    let attack = "echo a > /vol/f; mount -o remount,rw,bind /vol; echo b > /vol/f; \
                  unshare -Urm sh -c 'mount -o remount,rw,bind /vol; echo c > /vol/f'; \
                  cat /vol/f";
    let out = f.sh(c(), attack);
    assert_eq!(out.stdout_str(), "host\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("f")).unwrap(),
        "host\n"
    );
    // With CAP_SYS_ADMIN the filter lets a nested user namespace be made; the kernel still
    // keeps the read-only flag it inherits locked there.
    let nested =
        "unshare -Urm sh -c 'mount -o remount,rw,bind /vol && echo c > /vol/f'; cat /vol/f";
    let out = f.sh(c().cap_add("CAP_SYS_ADMIN"), nested);
    assert_eq!(out.stdout_str(), "host\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("f")).unwrap(),
        "host\n"
    );
    // Privileged, the remount goes through (and writes this test's own file).
    let out = f.sh(c().privileged(), attack);
    assert_ne!(out.stdout_str(), "host\n", "{out:?}");
}

#[test]
fn the_store_and_its_layers_stay_unchanged() {
    let f = Fixture::new();
    let layer = f.store.path().join("layers/probe/root");
    std::fs::create_dir_all(layer.join("srv")).unwrap();
    std::fs::write(layer.join("srv/f"), "layer\n").unwrap();
    let store = f.store.path().display().to_string();
    let file = layer.join("srv/f").display().to_string();
    let attack = format!(
        "echo a > /srv/f; echo b > {file}; mount -o remount,rw,bind {store}; echo c > {file}; \
         unshare -Urm sh -c 'mount -o remount,rw,bind {store}; echo d > {file}'; cat /srv/f"
    );
    let out = f.sh(f.container(Image::host().layer(&layer)), &attack);
    // The container's own copy changed; the stored layer did not.
    assert_eq!(out.stdout_str(), "a\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(layer.join("srv/f")).unwrap(),
        "layer\n"
    );
    let again = f.sh(f.container(Image::host().layer(&layer)), "cat /srv/f");
    assert_eq!(again.stdout_str(), "layer\n");
    if !common::is_root() {
        // Rootless, the store is a read-only bind: privileged, the remount poisons it.
        let c = f.container(Image::host().layer(&layer)).privileged();
        let out = f.sh(
            c,
            &format!("mount -o remount,rw,bind {store}; echo c > {file}"),
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read_to_string(layer.join("srv/f")).unwrap(), "c\n");
    }
}

/// A layer with `srv/evil -> HOST` (an absolute symlink to a host directory).
fn symlink_layer(host: &Path) -> tempfile::TempDir {
    let layer = var_tmp_dir();
    std::fs::create_dir_all(layer.path().join("srv")).unwrap();
    std::os::unix::fs::symlink(host, layer.path().join("srv/evil")).unwrap();
    layer
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn bind_targets_never_follow_symlinks_onto_the_host() {
    let f = Fixture::new();
    let host = var_tmp_dir();
    let layer = symlink_layer(host.path());
    let vol = var_tmp_dir();
    std::fs::write(vol.path().join("v"), "volume\n").unwrap();
    let out = f.sh(
        f.container(Image::host().layer(layer.path())).bind(Bind {
            source: vol.path().join("v"),
            target: "/srv/evil/x/y".into(),
            readonly: true,
        }),
        "cat /srv/evil/x/y",
    );
    assert_eq!(
        out.stdout_str(),
        "volume\n",
        "the volume shows where asked: {out:?}"
    );
    assert_eq!(
        entries(host.path()),
        Vec::<PathBuf>::new(),
        "nothing made on the host"
    );
    // The host image's own symlinks: /var/run -> /run.
    let name = format!("pristine-probe-{}", std::process::id());
    let c = f.container(Image::host()).bind(Bind {
        source: vol.path().join("v"),
        target: Path::new("/var/run").join(&name),
        readonly: true,
    });
    if let Ok(out) = c.run(["cat", &format!("/var/run/{name}")]) {
        assert_eq!(out.stdout_str(), "volume\n", "{out:?}");
    }
    assert!(
        !Path::new("/run").join(&name).exists(),
        "nothing made in the host's /run"
    );
}

#[test]
fn an_image_whose_dev_proc_and_tmp_are_symlinks_gets_them_mounted_inside_its_root() {
    let f = Fixture::new();
    let hosts: Vec<tempfile::TempDir> = (0..3).map(|_| var_tmp_dir()).collect();
    let layer = var_tmp_dir();
    for (name, host) in ["tmp", "dev", "proc"].iter().zip(&hosts) {
        std::os::unix::fs::symlink(host.path(), layer.path().join(name)).unwrap();
    }
    let out = f.sh(
        f.container(Image::host().layer(layer.path())),
        "echo x > /tmp/f && stat -f -c %T /tmp/ && echo y > /dev/null && cat /proc/self/comm",
    );
    assert_eq!(out.stdout_str(), "tmpfs\ncat\n", "{out:?}");
    for host in &hosts {
        assert_eq!(
            entries(host.path()),
            Vec::<PathBuf>::new(),
            "nothing made on the host"
        );
    }
}

#[test]
fn unknown_capabilities_are_a_clear_error() {
    let f = Fixture::new();
    let err = f
        .container(Image::host())
        .cap_add("CAP_NOT_A_THING")
        .run(["true"])
        .unwrap_err();
    assert!(err.to_string().contains("CAP_NOT_A_THING"), "{err}");
}

#[test]
fn rootless_mode_passes_too() {
    common::rerun_as_nobody("rootless_mode_passes_too");
}

/// `pristine shell` on a terminal (a pty from `script`): the shell reads and answers it,
/// Ctrl-C (the terminal's SIGINT, which pristine and PID 1 pass on to the command's process
/// group) interrupts the command the shell runs, and the shell's exit status comes back.
#[test]
fn pristine_shell_on_a_terminal_is_interactive_and_ctrl_c_interrupts_its_command() {
    use std::io::{Read, Write};
    let f = Fixture::new();
    let command = format!(
        "exec {bin} shell host --store {store}",
        bin = common::pristine_bin().display(),
        store = f.store.path().display(),
    );
    /// Kills and reaps `script` if the test fails before it exits: the pty's hangup then
    /// ends `pristine shell` and its container (with their `sleep 600`) before the
    /// fixture's store goes.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = Reap(
        std::process::Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run script (util-linux), which gives the shell a pty"),
    );
    let child = &mut child.0;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // Waits for `marker` in the output (a guard against hanging, not a timing assertion).
    let wait_for = |marker: &str| {
        for _ in 0..600 {
            if seen.lock().unwrap().contains(marker) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{marker:?} never came: {}", seen.lock().unwrap());
    };
    let mut stdin = child.stdin.take().unwrap();
    // `$((…))` so that the terminal's echo of the input is not mistaken for the answer.
    stdin.write_all(b"echo ready-$((1+1))\n").unwrap();
    wait_for("ready-2");
    stdin
        .write_all(b"echo started-$((2+2)); sleep 600; echo slept-$((3+3))\n")
        .unwrap();
    wait_for("started-4");
    stdin.write_all(b"\x03").unwrap();
    stdin.write_all(b"echo after-$((4+4))-$?\n").unwrap();
    wait_for("after-8-130");
    stdin.write_all(b"exit 7\n").unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let text = seen.lock().unwrap().clone();
    assert!(!text.contains("slept-6"), "{text}");
    assert_eq!(status.code(), Some(7), "{text}");
}

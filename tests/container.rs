//! The container core, end to end: isolation, exit statuses, timeouts, keep + diff, leaks,
//! bad input. Runs as the invoking user; when that is root, `rootless_mode_passes_too`
//! runs this same binary again as `nobody` so the user-namespace path is tested as well.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pristine::{Bind, Container, ExitStatus, Image, Keep, Upper, User};

mod common;

/// A store of its own for each test, so that tests can assert on its contents.
struct TestStore {
    dir: tempfile::TempDir,
}

impl TestStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Made a store first: the tests put files of their own beside its directories, and
        // pristine opens only an empty directory or a store as one.
        pristine::Store::open(dir.path()).expect("open the test store");
        TestStore { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn container(&self, image: Image) -> Container {
        Container::new(image)
            .store(self.path())
            .timeout(Duration::from_secs(60))
    }

    /// Every path under the store, relative to it.
    fn listing(&self) -> BTreeSet<PathBuf> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                out.insert(p.strip_prefix(root).unwrap().to_path_buf());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.path(), self.path(), &mut out);
        out
    }
}

fn sh(store: &TestStore, image: Image, script: &str) -> pristine::Outcome {
    store
        .container(image)
        .run(["/bin/sh", "-c", script])
        .unwrap_or_else(|e| panic!("container failed: {e}"))
}

/// A layer directory with a few data files, stacked over the host image in tests.
fn data_layer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("keep.txt"), "keep\n").unwrap();
    std::fs::write(d.join("edit.txt"), "before\n").unwrap();
    std::fs::write(d.join("gone.txt"), "gone\n").unwrap();
    std::fs::write(d.join("sub/inner.txt"), "inner\n").unwrap();
    dir
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn pid_one_and_host_processes_invisible() {
    let store = TestStore::new();
    let out = sh(&store, Image::host(), "echo $$; ls /proc");
    assert!(out.status.success(), "{}", out.stderr_str());
    let mut lines = out
        .stdout_str()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let shell_pid: u32 = lines.remove(0).parse().unwrap();
    assert_eq!(shell_pid, 2, "the command is the init's only child");
    let pids: Vec<u32> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    assert!(pids.contains(&1), "PID 1 is the init: {pids:?}");
    assert!(
        pids.iter().all(|&p| p < 100),
        "host processes must be invisible, saw {pids:?}"
    );
}

#[test]
fn only_loopback_and_it_is_up() {
    let store = TestStore::new();
    let out = sh(
        &store,
        Image::host(),
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; grep -q 127.0.0.1 /proc/net/fib_trie && echo lo-up",
    );
    assert_eq!(out.stdout_str(), "lo\nlo-up\n", "{}", out.stderr_str());
}

#[test]
fn hostname_is_private() {
    let store = TestStore::new();
    let host = nix::unistd::gethostname().unwrap();
    // Changing the hostname takes CAP_SYS_ADMIN, which a confined container lacks.
    let script = "hostname; hostname changed-inside 2>/dev/null; hostname";
    let box_one = || store.container(Image::host()).hostname("box-one");
    let out = box_one().run(["/bin/sh", "-c", script]).unwrap();
    assert_eq!(out.stdout_str(), "box-one\nbox-one\n");
    let out = box_one()
        .cap_add("CAP_SYS_ADMIN")
        .run(["/bin/sh", "-c", script])
        .unwrap();
    assert_eq!(out.stdout_str(), "box-one\nchanged-inside\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
    let default = sh(&store, Image::host(), "hostname");
    assert!(
        default.stdout_str().starts_with("pristine-"),
        "{}",
        default.stdout_str()
    );
}

#[test]
fn writes_do_not_reach_the_lower_layer() {
    let store = TestStore::new();
    let name = format!("pristine-test-{}", std::process::id());
    let out = sh(
        &store,
        Image::host(),
        &format!("echo inside > /etc/{name} && cat /etc/{name} && mkdir -p /usr/{name}/x"),
    );
    assert_eq!(out.stdout_str(), "inside\n", "{}", out.stderr_str());
    assert!(!Path::new("/etc").join(&name).exists());
    assert!(!Path::new("/usr").join(&name).exists());

    // Modify and delete files of a layer: the layer itself is untouched.
    let layer = data_layer();
    let out = sh(
        &store,
        Image::host().layer(layer.path()),
        "echo after > /data/edit.txt && rm /data/gone.txt && cat /data/edit.txt && ls /data",
    );
    assert_eq!(
        out.stdout_str(),
        "after\nedit.txt\nkeep.txt\nsub\n",
        "{}",
        out.stderr_str()
    );
    let d = layer.path().join("data");
    assert_eq!(
        std::fs::read_to_string(d.join("edit.txt")).unwrap(),
        "before\n"
    );
    assert!(d.join("gone.txt").exists());
}

#[test]
fn parallel_containers_do_not_see_each_other() {
    let store = TestStore::new();
    let layer = data_layer();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let c = store.container(Image::host().layer(layer.path()));
            std::thread::spawn(move || {
                c.run([
                    "/bin/sh",
                    "-c",
                    &format!(
                        "echo {i} > /data/mine; sleep 0.2; cat /data/mine; ls /data | tr '\\n' ' '"
                    ),
                ])
                .unwrap()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(
            out.stdout_str(),
            format!("{i}\nedit.txt gone.txt keep.txt mine sub "),
            "{}",
            out.stderr_str()
        );
    }
}

#[test]
fn exit_codes_and_signals_propagate() {
    let store = TestStore::new();
    assert_eq!(
        sh(&store, Image::host(), "exit 0").status,
        ExitStatus::Exited(0)
    );
    assert_eq!(
        sh(&store, Image::host(), "exit 42").status,
        ExitStatus::Exited(42)
    );
    let killed = sh(&store, Image::host(), "kill -KILL $$").status;
    assert_eq!(killed, ExitStatus::Signaled(9));
    assert_eq!(killed.code(), 137);
    let out = sh(&store, Image::host(), "echo out; echo err >&2; exit 3");
    assert_eq!(
        (out.stdout_str(), out.stderr_str()),
        ("out\n".into(), "err\n".into())
    );
}

fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn user_runs_the_command_unprivileged() {
    let store = TestStore::new();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("nobody in /etc/passwd")
        .split(':')
        .collect();
    let (uid, gid): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    let out = store
        .container(Image::host())
        .user(User::Name("nobody".into()))
        .run([
            "/bin/sh",
            "-c",
            "id -u; id -g; grep CapEff /proc/self/status | tr -d '\\t'; touch /tmp/x && echo tmp-ok",
        ])
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        format!("{uid}\n{gid}\nCapEff:0000000000000000\ntmp-ok\n"),
        "{}",
        out.stderr_str()
    );
    let err = store
        .container(Image::host())
        .user(User::Name("no-such-user-xyz".into()))
        .run(["/bin/true"])
        .unwrap_err();
    assert!(err.to_string().contains("no-such-user-xyz"), "{err}");
}

/// Every `pristine-ID` cgroup directory under /sys/fs/cgroup (a few levels deep).
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, name: &str, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy() == name {
                    out.push(e.path());
                } else if depth > 0 {
                    walk(&e.path(), depth - 1, name, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        Path::new("/sys/fs/cgroup"),
        4,
        &format!("pristine-{id}"),
        &mut out,
    );
    out
}

/// The caller's cgroup v2 (`None` on v1 or hybrid hosts), skipping the leaf pristine may
/// have moved it into.
fn own_cgroup_v2() -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let own = root.join(rel.trim_start_matches('/'));
    Some(match own.ends_with("pristine.leaf") {
        true => own.parent().unwrap().to_path_buf(),
        false => own,
    })
}

/// Whether this process may have limits: root, or an ordinary user in a cgroup v2 subtree
/// delegated to it.
fn limits_allowed() -> bool {
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    common::is_root()
        || own_cgroup_v2().is_some_and(|c| {
            writable(&c.join("cgroup.procs")) && writable(&c.join("cgroup.subtree_control"))
        })
}

#[test]
fn limits_cap_memory_and_processes() {
    let store = TestStore::new();
    let forks = "import os, time\nn = 0\ntry:\n    while n < 100:\n        if os.fork() == 0:\n            time.sleep(2); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)\n";
    let limited = store.container(Image::host()).pids_limit(12);
    if !limits_allowed() {
        let err = limited.run(["python3", "-c", forks]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("Delegate=yes") || msg.contains("cgroup v2"),
            "{msg}"
        );
        return;
    }
    let control = own_cgroup_v2().map(|c| c.join("cgroup.subtree_control"));
    let read = |p: &Option<PathBuf>| p.as_ref().map(|p| std::fs::read_to_string(p).unwrap());
    let (control_before, cgroup_before) = (
        read(&control),
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
    );
    let out = limited.run(["python3", "-c", forks]).unwrap();
    // PID 1 and python itself count: ten more processes, then EAGAIN.
    assert_eq!(out.stdout_str(), "10 11\n", "{}", out.stderr_str());
    assert_eq!(
        out.pids_limit_hit,
        Some(12),
        "the pids limit hit is reported"
    );
    assert!(cgroups_named(&out.id).is_empty(), "the cgroup is removed");
    let out = store
        .container(Image::host())
        .memory_limit(32 << 20)
        .run([
            "python3",
            "-c",
            "b = bytearray(256 << 20); print('survived')",
        ])
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Signaled(9),
        "OOM-killed: {}",
        out.stdout_str()
    );
    // The OOM kill is reported: from memory.events' oom_kill (v2), memory.failcnt (v1).
    assert_eq!(out.oom_killed, Some(32 << 20), "the OOM kill is reported");
    assert_eq!(out.pids_limit_hit, None);
    assert!(cgroups_named(&out.id).is_empty(), "the cgroup is removed");
    // The CLI says so.
    let cli = Command::new(common::pristine_bin())
        .args(["run", "--memory", "32m", "--store"])
        .arg(store.path())
        .args(["--", "python3", "-c", "b = bytearray(256 << 20)"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(137), "{stderr}");
    assert!(
        stderr.contains("pristine: killed: out of memory, limit 32 MiB"),
        "{stderr}"
    );
    // cgroup v2: the controllers pristine turned on for its containers are off again, and
    // this process is back where it was.
    assert_eq!(read(&control), control_before);
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        cgroup_before
    );
}

#[test]
fn timeout_kills_the_whole_tree_even_if_it_ignores_sigterm() {
    let store = TestStore::new();
    let marker = format!("{}", 900_000 + std::process::id() % 10_000);
    let out = store
        .container(Image::host())
        .timeout(Duration::from_millis(300))
        .run([
            "/bin/sh",
            "-c",
            &format!("trap '' TERM; (trap '' TERM; sleep {marker}) & sleep {marker}"),
        ])
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.status, ExitStatus::Signaled(9));
    assert_eq!(
        processes_with(&format!("sleep\0{marker}")),
        Vec::<u32>::new()
    );
}

#[test]
fn keep_lists_exactly_what_changed() {
    let store = TestStore::new();
    let layer = data_layer();
    let out = store
        .container(Image::host().layer(layer.path()))
        .keep(Keep::Always)
        .run([
            "/bin/sh",
            "-c",
            "echo after > /data/edit.txt; rm /data/gone.txt; echo new > /data/new.txt; \
             mkdir /data/newdir; echo x > /data/newdir/f; rm -r /data/sub",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_str());
    let kept = out.kept.expect("kept");
    assert!(kept.dir.starts_with(store.path()));
    let changes: Vec<String> = kept.diff().unwrap().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        changes,
        [
            "C /data",
            "C /data/edit.txt",
            "D /data/gone.txt",
            "A /data/new.txt",
            "A /data/newdir",
            "A /data/newdir/f",
            "D /data/sub",
        ]
    );
    // The same list from the CLI, later.
    let cli = Command::new(common::pristine_bin())
        .arg("diff")
        .arg(&kept.dir)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout),
        changes.join("\n") + "\n"
    );
    // Keep::OnFailure keeps nothing on success.
    let ok = store
        .container(Image::host())
        .keep(Keep::OnFailure)
        .run(["/bin/true"])
        .unwrap();
    assert!(ok.kept.is_none());
    let failed = store
        .container(Image::host())
        .keep(Keep::OnFailure)
        .run(["/bin/sh", "-c", "touch /etc/failed-marker; exit 1"])
        .unwrap();
    let changes = failed.kept.expect("kept on failure").diff().unwrap();
    assert_eq!(
        changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        ["C /etc", "A /etc/failed-marker"]
    );
}

#[test]
fn binds_bypass_the_overlay() {
    let store = TestStore::new();
    let vol = tempfile::tempdir().unwrap();
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(vol.path().join("in.txt"), "from host\n").unwrap();
    let out = store
        .container(Image::host())
        .bind(Bind {
            source: vol.path().into(),
            target: "/vol".into(),
            readonly: false,
        })
        .bind(format!("{}:/ro:ro", vol.path().display()).parse().unwrap())
        .env("GREETING", "hello")
        .workdir("/vol")
        .run([
            "/bin/sh",
            "-c",
            "cat in.txt; echo $GREETING > out.txt; pwd; touch /ro/x 2>/dev/null || echo ro-refused",
        ])
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "from host\n/vol\nro-refused\n",
        "{}",
        out.stderr_str()
    );
    assert_eq!(
        std::fs::read_to_string(vol.path().join("out.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn dev_and_tmp_are_minimal_and_private() {
    let store = TestStore::new();
    let out = sh(
        &store,
        Image::host(),
        "ls /dev | tr '\\n' ' '; echo; ls -A /tmp | wc -l; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok",
    );
    assert_eq!(
        out.stdout_str(),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \n0\n4\nnull-ok\n",
        "{}",
        out.stderr_str()
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let store = TestStore::new();
    let missing = store.path().join("no-such-rootfs");
    let err = store
        .container(Image::rootfs(&missing))
        .run(["/bin/true"])
        .unwrap_err();
    assert!(err.to_string().contains("no-such-rootfs"), "{err}");
    let file = store.path().join("file");
    std::fs::write(&file, "").unwrap();
    let err = store
        .container(Image::rootfs(&file))
        .run(["/bin/true"])
        .unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
    let err = store
        .container(Image::host())
        .run(Vec::<String>::new())
        .unwrap_err();
    assert!(err.to_string().contains("no command"), "{err}");
    let err = store
        .container(Image::host())
        .run(["/definitely/not/here"])
        .unwrap_err();
    assert!(err.to_string().contains("/definitely/not/here"), "{err}");
    let err = store
        .container(Image::host())
        .bind(Bind {
            source: missing.clone(),
            target: "/x".into(),
            readonly: false,
        })
        .run(["/bin/true"])
        .unwrap_err();
    assert!(err.to_string().contains("bad bind"), "{err}");
    assert!("/a:relative".parse::<Bind>().is_err());
    let err = store
        .container(Image::host())
        .workdir("relative")
        .run(["/bin/true"])
        .unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
    // Nothing was created for any of these. (The store's open remembers what its
    // filesystem can do, where the kernel has never-reused mount ids: Linux 6.8.)
    let mut listing = store.listing();
    listing.remove(Path::new("reflink.probe"));
    assert_eq!(
        listing,
        [
            "containers",
            "file",
            "images",
            "kept",
            "layers",
            "locks",
            "pristine-store",
            "run",
            "run/mnt",
            "squashed",
        ]
        .iter()
        .map(PathBuf::from)
        .collect()
    );
}

fn cli() -> Command {
    Command::new(common::pristine_bin())
}

#[test]
fn cli_errors_name_the_problem_and_exit_nonzero() {
    let store = TestStore::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--image", "/no/such/dir", "--", "true"],
            "/no/such/dir",
        ),
        (&["run", "--bind", "nocolon", "--", "true"], "bad bind"),
        (&["run", "--timeout", "soon", "--", "true"], "bad duration"),
        (&["run", "--env", "NOEQUALS", "--", "true"], "KEY=VALUE"),
        // No command (and the host image has no Cmd): the library says so.
        (&["run"], "no command given"),
        (&["run", "--", "no-such-program-xyz"], "no-such-program-xyz"),
        (&["diff", "/no/such/kept"], "not a kept container directory"),
    ];
    for (args, needle) in cases {
        let out = cli()
            .args(*args)
            .env("PRISTINE_STORE", store.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let out = cli()
        .args(["run", "--", "no-such-program-xyz"])
        .env("PRISTINE_STORE", store.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn cli_passes_output_and_exit_code_through() {
    let store = TestStore::new();
    let out = cli()
        .args([
            "run",
            "--hostname",
            "cli-box",
            "--env",
            "A=b",
            "--",
            "sh",
            "-c",
            "hostname; echo $A; exit 5",
        ])
        .env("PRISTINE_STORE", store.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cli-box\nb\n");
    assert_eq!(out.status.code(), Some(5));
    let keep = cli()
        .args(["run", "--keep", "--", "sh", "-c", "touch /etc/kept-by-cli"])
        .env("PRISTINE_STORE", store.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&keep.stderr);
    assert!(stderr.contains("kept upper layer: "), "{stderr}");
    assert!(stderr.contains("A /etc/kept-by-cli"), "{stderr}");
}

#[test]
fn sigterm_to_cli_is_forwarded_to_the_command() {
    let store = TestStore::new();
    let mut child = cli()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .env("PRISTINE_STORE", store.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(
        (rest.as_str(), status.code()),
        ("got-term\n", Some(0)),
        "{status:?}"
    );
}

/// A SIGTERM sent at any moment of `pristine run`'s start (before its handlers exist, before
/// the container's pid is known, before PID 1 waits for signals) ends the run: it is never
/// lost in a window where nobody passes it on, which would leave the command running.
#[test]
fn sigterm_during_start_is_never_lost() {
    let store = TestStore::new();
    for attempt in 0..60u64 {
        let mut child = cli()
            .args(["run", "--", "sleep", "1000"])
            .env("PRISTINE_STORE", store.path())
            .spawn()
            .unwrap();
        // Spread the signal over the start: from at once to past the command's exec.
        std::thread::sleep(Duration::from_micros(attempt * 200));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("attempt {attempt}: SIGTERM was lost, the run went on");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Killed before forwarding was set up, or the command was: 128 + SIGTERM.
        assert!(
            status.signal() == Some(libc::SIGTERM) || status.code() == Some(143),
            "attempt {attempt}: {status:?}"
        );
    }
}

#[test]
fn sigkilled_cli_leaves_nothing_behind() {
    let store = TestStore::new();
    let before_mounts = host_mounts();
    let marker = format!("{}", 800_000 + std::process::id() % 10_000);
    // An on-disk upper, so there is something on disk to leak.
    let mut child = cli()
        .args(["run", "--upper-on-disk", "--", "sh", "-c"])
        .arg(format!("echo ready; sleep {marker}"))
        .env("PRISTINE_STORE", store.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert_eq!(
        std::fs::read_dir(store.path().join("containers"))
            .unwrap()
            .count(),
        2,
        "the running container has its directory and its lock"
    );
    child.kill().unwrap(); // SIGKILL: no destructor, no handler runs.
    child.wait().unwrap();
    // Die-with-parent: the container's processes go with it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_with(&format!("sleep\0{marker}")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "container outlived its SIGKILLed caller"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its PID 1 may still be exiting: the leftover is free once nothing holds its lock.
    let leftover = std::fs::read_dir(store.path().join("containers"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("the killed container's directory is still there")
        .path();
    while let Err((_, e)) = nix::fcntl::Flock::lock(
        std::fs::File::open(leftover.with_extension("lock")).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    ) {
        assert_eq!(e, nix::errno::Errno::EWOULDBLOCK);
        assert!(
            Instant::now() < deadline,
            "the container's lock is never released"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its mounts were only ever in its own namespace.
    assert_eq!(host_mounts(), before_mounts);
    // The next run removes the leftover directory.
    let out = cli()
        .args(["run", "--", "true"])
        .env("PRISTINE_STORE", store.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_dir(store.path().join("containers"))
            .unwrap()
            .count(),
        0
    );
}

/// A multithreaded caller (this test binary, on the zygote path) SIGKILLed while its
/// container runs: the zygote dies with it, and the container with the zygote.
#[test]
fn sigkilled_multithreaded_caller_takes_its_containers_down() {
    if let Ok(marker) = std::env::var("PRISTINE_TEST_HOLD") {
        // In the child process: start a container that would run for a long time, in the
        // parent's store (this process is killed: it could not remove a store of its own).
        let store = std::env::var_os("PRISTINE_TEST_HOLD_STORE").expect("store from the parent");
        let _ = Container::new(Image::host()).store(store).run([
            "/bin/sh",
            "-c",
            &format!("sleep {marker}"),
        ]);
        return;
    }
    let store = TestStore::new();
    let marker = format!("{}", 700_000 + std::process::id() % 10_000);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkilled_multithreaded_caller_takes_its_containers_down",
        ])
        .env("PRISTINE_TEST_HOLD", &marker)
        .env("PRISTINE_TEST_HOLD_STORE", store.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pattern = format!("sleep\0{marker}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&pattern).is_empty() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_with(&pattern).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the container outlived its SIGKILLed caller"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_thousand_containers_leak_nothing() {
    let store = TestStore::new();
    // One container first, so the store's own directories exist in `before`.
    assert!(sh(&store, Image::host(), "true").status.success());
    let before_mounts = host_mounts();
    let before_files = store.listing();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let tmpfs = store.container(Image::host());
            let disk = store.container(Image::host()).upper(Upper::Disk);
            std::thread::spawn(move || {
                for i in 0..500 {
                    // Every tenth container writes to an on-disk upper.
                    let c = if i % 10 == t { &disk } else { &tmpfs };
                    let out = c
                        .run(["/bin/sh", "-c", "echo x > /etc/leak-probe"])
                        .unwrap();
                    assert!(out.status.success(), "{}", out.stderr_str());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(host_mounts(), before_mounts, "mount table changed");
    assert_eq!(store.listing(), before_files, "store contents changed");
}

/// Runs this test binary again with the zygote disabled, so multithreaded callers take the
/// path that execs an init per container (used when no zygote can be started).
#[test]
fn exec_init_path_passes_too() {
    if std::env::var_os("PRISTINE_NO_ZYGOTE").is_some() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--skip",
            "exec_init_path_passes_too",
            "--skip",
            "rootless_mode_passes_too",
        ])
        .args([
            "--skip",
            "a_thousand_containers_leak_nothing",
            "--test-threads",
            "2",
        ])
        .env("PRISTINE_NO_ZYGOTE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test result: ok"), "{stdout}");
}

/// Runs this test binary again as `nobody`, which exercises the rootless path.
#[test]
fn rootless_mode_passes_too() {
    common::rerun_as_nobody("rootless_mode_passes_too");
}

//! Shared by the integration tests.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// The newest `NAME-HASH` executable next to this test binary (cargo's `deps` directory).
pub fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap();
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&prefix) && !f.contains('.')
        })
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no {name}-* binary in {}: build with `cargo test`",
                dir.display()
            )
        })
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The `pristine` binary: beside the test binary's `deps/` directory (which also holds when
/// the binaries were copied elsewhere for the rootless run), else cargo's.
pub fn pristine_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let sibling = me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("pristine"));
    match sibling {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(env!("CARGO_BIN_EXE_pristine")),
    }
}

/// The package's directory at run time. cargo and nextest set `CARGO_MANIFEST_DIR` for every
/// test they run (nextest remaps it when it runs an archive elsewhere), so this is where
/// the sources are now, not where they were when the test was built.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .expect("CARGO_MANIFEST_DIR is set by cargo test and cargo nextest run")
}

/// A scratch directory for this test binary's files: `tmp` beside the profile directory
/// of the target directory the binary runs from (what cargo calls `CARGO_TARGET_TMPDIR`,
/// found at run time, so an archive extracted elsewhere uses its own), when this user can
/// write there; else the temporary directory.
pub fn scratch_base() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    // TARGET/PROFILE/deps/BINARY
    let tmp = me.ancestors().nth(3).map(|target| target.join("tmp"));
    if let Some(tmp) = tmp {
        let writable =
            |p: &std::path::Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
        let usable = writable(&tmp) || (!tmp.exists() && tmp.parent().is_some_and(writable));
        if usable && std::fs::create_dir_all(&tmp).is_ok() {
            return tmp;
        }
    }
    std::env::temp_dir()
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs this test binary again as `nobody` (skipping `this_test`), which exercises the
/// rootless path: user namespace, uid mapped to root inside, overlayfs with `userxattr`.
/// The binaries (this one, `pristine` and `extra`, which go beside this one) are copied
/// somewhere `nobody` can read: the checkout may be under /root.
pub fn rerun_as_nobody(this_test: &str) {
    rerun_as_nobody_with(this_test, &[]);
}

/// [`rerun_as_nobody`], copying `extra` binaries beside this one.
pub fn rerun_as_nobody_with(this_test: &str, extra: &[PathBuf]) {
    rerun_as_nobody_skipping(&[this_test], extra);
}

/// [`rerun_as_nobody_with`], skipping the tests named `skip` (this one, and tests that need
/// what `nobody` does not have, such as a cargo toolchain: they show as filtered out).
pub fn rerun_as_nobody_skipping(skip: &[&str], extra: &[PathBuf]) {
    if !is_root() {
        eprintln!("already running rootless; nothing more to do");
        return;
    }
    let args: Vec<String> = skip
        .iter()
        .flat_map(|s| ["--skip".to_string(), s.to_string()])
        .collect();
    run_copy_as_nobody(&args, extra, &[]);
}

/// Runs only the test `name` of this test binary again as `nobody`, with `env` set (how
/// the root half of a test hands the rootless half what it prepared).
pub fn run_as_nobody_exact(name: &str, env: &[(&str, &std::path::Path)]) {
    assert!(is_root(), "only root can run a test as nobody");
    let args = ["--exact".to_string(), name.to_string()];
    let stdout = run_copy_as_nobody(&args, &[], env);
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the test {name} did not run as nobody:\n{stdout}"
    );
}

/// Runs a copy of this test binary (and `pristine`, and `extra` beside it) as `nobody`
/// with `args`, requires it to pass and returns its standard output.
fn run_copy_as_nobody(
    args: &[String],
    extra: &[PathBuf],
    env: &[(&str, &std::path::Path)],
) -> String {
    assert!(
        which("setpriv").is_some(),
        "setpriv (util-linux) is needed to test the rootless path"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Laid out as cargo's target directory (`target/debug/deps/BINARY`, `pristine` in
    // `target/debug`), so that `scratch_base` finds `target/tmp` inside `dir`, which is
    // removed below, never a `tmp` beside `dir` in the host's temporary directory.
    let debug = dir.path().join("target/debug");
    let deps = debug.join("deps");
    std::fs::create_dir_all(&deps).unwrap();
    for d in [dir.path().join("target"), debug.clone(), deps.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let me = std::env::current_exe().unwrap();
    let test_bin = deps.join(me.file_name().unwrap());
    std::fs::copy(&me, &test_bin).unwrap();
    for bin in extra {
        std::fs::copy(bin, deps.join(bin.file_name().unwrap())).unwrap();
    }
    std::fs::copy(pristine_bin(), debug.join("pristine")).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(65534.into()), Some(65534.into())).unwrap();
    // What the tests read of the sources at run time, where `nobody` can read it: the
    // checkout may be in a directory only root can enter (/root, a mktemp directory).
    let sources = dir.path().join("sources");
    for part in ["snapshots", "tests/data"] {
        copy_tree(&manifest_dir().join(part), &sources.join(part));
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&test_bin)
        .args(args)
        .args(["--test-threads", "2"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CARGO_MANIFEST_DIR", &sources)
        .env("INSTA_WORKSPACE_ROOT", &sources)
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .env("PRISTINE_STORE", home.join("store"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(&home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rootless run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("test result: ok"), "{stdout}");
    eprintln!(
        "rootless: {}",
        stdout
            .lines()
            .filter(|l| l.starts_with("test result"))
            .collect::<String>()
    );
    stdout.into_owned()
}

/// Copies the files and directories below `from` to `to` (made if missing).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        match e.file_type().unwrap() {
            t if t.is_dir() => copy_tree(&src, &dst),
            t if t.is_file() => {
                std::fs::copy(&src, &dst).unwrap();
            }
            _ => {}
        }
    }
}

/// overlayfs's layer format as README describes it ("Overlay-native"), read and written
/// here on its own rather than through pristine's internals, so that the tests check
/// what pristine writes against the format itself: a whiteout is a character device 0/0,
/// an opaque directory has `user.overlay.opaque` (and, as root, `trusted.overlay.opaque`)
/// set to `y`.
pub mod layer_format {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;

    /// Whether `meta` (of `symlink_metadata`) is a whiteout.
    pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
        meta.file_type().is_char_device() && meta.rdev() == 0
    }

    /// Whether the entry at `path` is a whiteout (a missing one is not).
    pub fn is_whiteout_path(path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| is_whiteout(&m))
    }

    /// Makes a whiteout at `path` (unprivileged on Linux 5.8 and later).
    pub fn make_whiteout(path: &Path) {
        use nix::sys::stat::{mknod, Mode, SFlag};
        mknod(path, SFlag::S_IFCHR, Mode::empty(), 0)
            .unwrap_or_else(|e| panic!("mknod whiteout {}: {e}", path.display()));
    }

    /// Whether the directory at `path` is opaque.
    pub fn is_opaque(path: &Path) -> bool {
        ["user.overlay.opaque", "trusted.overlay.opaque"]
            .iter()
            .any(|name| {
                let mut buf = [0u8; 8];
                matches!(rustix::fs::lgetxattr(path, *name, &mut buf), Ok(1) if buf[0] == b'y')
            })
    }

    /// Makes the directory at `path` opaque.
    pub fn make_opaque(path: &Path) {
        let set =
            |name: &str| rustix::fs::lsetxattr(path, name, b"y", rustix::fs::XattrFlags::empty());
        set("user.overlay.opaque")
            .unwrap_or_else(|e| panic!("set user.overlay.opaque on {}: {e}", path.display()));
        if super::is_root() {
            set("trusted.overlay.opaque").unwrap_or_else(|e| {
                panic!("set trusted.overlay.opaque on {}: {e}", path.display())
            });
        }
    }
}

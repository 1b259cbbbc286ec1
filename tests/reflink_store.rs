//! The store's reflink filesystem: as root, a store on a filesystem that cannot reflink gets
//! a loop-mounted XFS image, where a container's first write to a big stored file clones it
//! instead of copying it; the image is found again by the next process and unmounted on
//! request, leaving the mount table as it was. Rootless, a store on a filesystem that
//! reflinks by itself (a btrfs or XFS home) is used as it is, and copy-up there is a clone
//! too.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use pristine::{Container, Image, Keep, LayerSpec, Recipe, Store};

/// Unmounts a store's reflink image when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Store::unmount_image(&self.0);
    }
}

/// Mount points at or under `dir` (other tests may mount elsewhere meanwhile).
fn mount_points(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

fn used_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

fn pristine_store(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(common::pristine_bin())
        .arg("store")
        .args(extra)
        .arg("--store")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A store opened at an explicit directory on a filesystem without reflinks gets no image
/// (nothing mounted) and says what a copy-up costs there.
#[test]
fn an_explicit_store_without_reflinks_mounts_nothing_and_says_so() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = Store::open(dir.path()).unwrap();
    if store.reflink().works() {
        return; // /var/tmp is on btrfs or XFS here: nothing to fall back from.
    }
    assert_eq!(store.root(), dir.path());
    assert!(mount_points(dir.path()).is_empty());
    let shown = pristine_store(dir.path(), &[]);
    assert!(shown.contains("no reflinks"), "{shown}");
    assert!(shown.contains("copies the whole file"), "{shown}");
    assert!(!dir.path().join("reflink.img").exists());
}

/// As root: the image is made and mounted, a copy-up there is a clone, the next process
/// finds the image again, and `pristine store --unmount` restores the mount table.
#[test]
fn as_root_a_reflink_image_makes_copy_up_a_clone() {
    if !common::is_root() {
        return; // only root mounts the image; the rootless case is the test above.
    }
    if common::which("mkfs.xfs").is_none() && common::which("mkfs.btrfs").is_none() {
        panic!("needs mkfs.xfs (xfsprogs) or mkfs.btrfs (btrfs-progs)");
    }
    // Under /tmp: rootless containers get a fresh /tmp and never overlay the host's, so the
    // image mounted here cannot disturb the rootless containers of tests running beside
    // this one (a new mount inside a directory they overlay would).
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = Store::open_with_image(dir.path()).unwrap();
    // Unmounted even if an assertion fails (dropped before `dir`).
    let _unmount = Unmount(dir.path().to_path_buf());
    if !matches!(store.reflink(), pristine::store::Reflink::Image { .. }) {
        // /tmp reflinks by itself: no image is needed (and none was made).
        assert!(store.reflink().works());
        assert!(!dir.path().join("reflink.img").exists());
        return;
    }
    assert_eq!(store.root(), dir.path().join("reflink"));
    // Another process finds it again (and says so) without making anything.
    let shown = pristine_store(dir.path(), &[]);
    assert!(shown.contains("reflink.img via /dev/loop"), "{shown}");

    assert_copy_up_is_a_clone(&store, dir.path());

    assert_eq!(mount_points(dir.path()).len(), 1);
    assert!(pristine_store(dir.path(), &["--unmount"]).contains("unmounted"));
    assert!(mount_points(dir.path()).is_empty());
    assert!(pristine_store(dir.path(), &["--unmount"]).contains("no reflink image"));
}

/// A 64 MiB stored file, appended to by a container whose upper is kept: the kept upper
/// holds a whole 64 MiB file, but the store's filesystem grew by far less (shared blocks).
fn assert_copy_up_is_a_clone(store: &Store, store_dir: &Path) {
    let image: Image = Recipe::host()
        .layer(LayerSpec::new("big").run([
            "sh",
            "-c",
            "head -c 67108864 /dev/urandom > /srv/pristine-big",
        ]))
        .build(store)
        .unwrap();
    let used = used_bytes(store.root());
    let out = Container::new(image)
        .store(store_dir)
        .keep(Keep::Always)
        .run([
            "sh",
            "-c",
            "echo x >> /srv/pristine-big && wc -c < /srv/pristine-big",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_str());
    assert_eq!(out.stdout_str().trim(), "67108866");
    let kept = out.kept.expect("the upper was kept");
    let copied = kept.dir.join("upper/srv/pristine-big");
    assert_eq!(std::fs::metadata(&copied).unwrap().len(), 67108866);
    let grew = used_bytes(store.root()).saturating_sub(used);
    assert!(grew < 8 << 20, "copy-up took {grew} bytes: not a clone");
}

/// Where the root half of the rootless test hands `nobody` a directory on a filesystem
/// that reflinks.
const REFLINK_DIR_ENV: &str = "PRISTINE_TEST_REFLINK_DIR";

/// Rootless, a store on a filesystem that reflinks by itself is used in place (no image,
/// nothing mounted: rootless cannot mount one), `pristine store` says a copy-up there is a
/// clone, and it is. As root the test makes such a filesystem (an XFS image, loop-mounted
/// under /tmp), gives `nobody` a directory on it and runs itself as `nobody` (which must
/// then run exactly this test and pass); an ordinary user's run says it needs root.
#[test]
fn rootless_a_store_on_a_reflinking_filesystem_clones_on_copy_up() {
    if let Some(dir) = std::env::var_os(REFLINK_DIR_ENV) {
        let dir = Path::new(&dir).join("store");
        let store = Store::open(&dir).unwrap();
        assert!(store.reflink().works(), "{:?}", store.reflink());
        assert_eq!(store.root(), dir, "rootless, the store is used in place");
        assert!(!dir.join("reflink.img").exists());
        let shown = pristine_store(&dir, &[]);
        assert!(shown.contains("copy-up    reflink"), "{shown}");
        assert_copy_up_is_a_clone(&store, &dir);
        return;
    }
    if !common::is_root() {
        // An ordinary user's `cargo test`: the root run does this as nobody.
        eprintln!("needs root to make the XFS filesystem for its rootless half; not run");
        return;
    }
    assert!(
        common::which("mkfs.xfs").is_some(),
        "needs mkfs.xfs (xfsprogs)"
    );
    let base = tempfile::tempdir_in("/tmp").unwrap();
    let (img, mnt) = (base.path().join("xfs.img"), base.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&img));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    /// Unmounts the filesystem even if the rootless half fails (before `base` is removed).
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let unmounted = Command::new("umount").arg(&self.0).status();
            if !unmounted.is_ok_and(|s| s.success()) {
                // Still busy (a failed half left something open): detach it instead.
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
    let _umount = Umount(mnt.clone());
    // `nobody` owns the directory its store goes in; the parents stay root's (0755).
    let home = mnt.join("home");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(65534.into()), Some(65534.into())).unwrap();
    for d in [base.path(), mnt.as_path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    common::run_as_nobody_exact(
        "rootless_a_store_on_a_reflinking_filesystem_clones_on_copy_up",
        &[(REFLINK_DIR_ENV, &home)],
    );
    assert_eq!(
        mount_points(base.path()),
        BTreeSet::from([mnt.display().to_string()])
    );
}

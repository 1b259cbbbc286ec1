//! Snapshot layers end to end: cache rules, concurrent builders, failed and killed builds,
//! whiteouts across layers, deep stacks, import/export through the store. Runs again as
//! `nobody` when run as root (`rootless_mode_passes_too`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pristine::layers::{Catalog, Recipe};
use pristine::{BuildError, Container, Image, LayerSpec, Store};

mod common;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn sh(image: &Image, store: &Store, script: &str) -> String {
    let out = Container::new(image.clone())
        .store(store.location())
        .timeout(Duration::from_secs(60))
        .run(["/bin/sh", "-c", script])
        .unwrap();
    assert!(out.status.success(), "{script}: {}", out.stderr_str());
    out.stdout_str()
}

/// Runs `pristine ARGS --store STORE`: whether it succeeded, and its stdout then stderr.
fn cli(args: &[&str], store: &Store) -> (bool, String) {
    let out = Command::new(common::pristine_bin())
        .args(args)
        .arg("--store")
        .arg(store.root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn cached(recipe: &Recipe, store: &Store) -> Vec<bool> {
    recipe
        .build_report(store)
        .unwrap()
        .layers
        .iter()
        .map(|l| l.cached)
        .collect()
}

#[test]
fn copied_content_decides_what_is_rebuilt() {
    let (_d, store) = store();
    let ctx = tempfile::tempdir().unwrap();
    let seed = ctx.path().join("seed.sql");
    std::fs::write(&seed, "v1").unwrap();
    let recipe = Recipe::host()
        .layer(LayerSpec::new("base").run(["sh", "-c", "mkdir -p /srv && echo base > /srv/base"]))
        .layer(LayerSpec::new("seed").copy(&seed, "/srv/seed.sql"))
        .layer(LayerSpec::new("derived").run(["sh", "-c", "cat /srv/seed.sql > /srv/derived"]));
    assert_eq!(cached(&recipe, &store), [false, false, false]);
    assert_eq!(
        cached(&recipe, &store),
        [true, true, true],
        "nothing changed"
    );

    // Touching the file (same content) rebuilds nothing.
    let f = std::fs::File::options().append(true).open(&seed).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert_eq!(
        cached(&recipe, &store),
        [true, true, true],
        "touch is not a change"
    );

    // New content rebuilds that layer and the one above, not the one below.
    std::fs::write(&seed, "v2").unwrap();
    assert_eq!(cached(&recipe, &store), [true, false, false]);
    let image = recipe.build(&store).unwrap();
    assert_eq!(sh(&image, &store, "cat /srv/base /srv/derived"), "base\nv2");

    // A warm lookup starts no container: it is fast even on a loaded machine.
    let started = Instant::now();
    let report = recipe.build_report(&store).unwrap();
    assert!(report.layers.iter().all(|l| l.cached));
    eprintln!("warm lookup of 3 layers: {:?}", started.elapsed());
}

#[test]
fn rust_and_toml_recipes_make_the_same_layers() {
    let (_d, store) = store();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("seed.txt"), "seed\n").unwrap();
    let rust = Recipe::host().layer(
        LayerSpec::new("seed")
            .copy(ctx.path().join("seed.txt"), "/srv/seed.txt")
            .run_with(
                ["sh", "-c", "wc -l /srv/seed.txt > /srv/lines"],
                [("LANG", "C")],
                "/",
            ),
    );
    let file = ctx.path().join("seed.toml");
    std::fs::write(
        &file,
        "base = \"host\"\n[[layer]]\nname = \"seed\"\n[[layer.step]]\ncopy = { from = \"seed.txt\", to = \"/srv/seed.txt\" }\n[[layer.step]]\nrun = { argv = [\"sh\", \"-c\", \"wc -l /srv/seed.txt > /srv/lines\"], env = { LANG = \"C\" } }\n",
    )
    .unwrap();
    let toml = Recipe::from_toml_file(&file).unwrap();
    let a = rust.build_report(&store).unwrap();
    let b = toml.build_report(&store).unwrap();
    assert_eq!(a.layers[0].key, b.layers[0].key);
    assert!(
        !a.layers[0].cached && b.layers[0].cached,
        "built once, reused"
    );
    // The same content elsewhere (a moved checkout) is the same layer too.
    let moved = tempfile::tempdir().unwrap();
    std::fs::write(moved.path().join("seed.txt"), "seed\n").unwrap();
    std::fs::copy(&file, moved.path().join("seed.toml")).unwrap();
    let c = Recipe::from_toml_file(&moved.path().join("seed.toml"))
        .unwrap()
        .build_report(&store)
        .unwrap();
    assert_eq!(c.layers[0].key, a.layers[0].key);
}

#[test]
fn whiteouts_and_opaque_directories_stack() {
    let (_d, store) = store();
    let recipe = Recipe::host()
        .layer(LayerSpec::new("files").run([
            "sh",
            "-c",
            "mkdir -p /srv/d/sub /srv/keep && echo a > /srv/a && echo b > /srv/d/b && echo s > /srv/d/sub/s && echo k > /srv/keep/k",
        ]))
        .layer(LayerSpec::new("delete-and-replace").run([
            "sh",
            "-c",
            "rm /srv/a && rm -r /srv/d && mkdir /srv/d && echo new > /srv/d/new && echo changed > /srv/keep/k",
        ]));
    let image = recipe.build(&store).unwrap();
    assert_eq!(
        sh(
            &image,
            &store,
            "cd /srv && find . | sort && cat keep/k d/new"
        ),
        ".\n./d\n./d/new\n./keep\n./keep/k\nchanged\nnew\n"
    );
    // The layers themselves use overlay-native whiteouts and opaque directories.
    let top = image.layers().last().unwrap();
    let meta = std::fs::symlink_metadata(top.join("srv/a")).unwrap();
    assert!(
        common::layer_format::is_whiteout(&meta),
        "deletion is a 0/0 device"
    );
    assert!(
        common::layer_format::is_opaque(&top.join("srv/d")),
        "replaced dir is opaque"
    );
}

/// Host files beside the store, as a checkout and a home directory have them: `.gitconfig`
/// is rewritten, `notes` moved and `old` removed by [`HOST_FILES_SCRIPT`].
const HOST_FILES: [(&str, &str); 3] = [
    (".gitconfig", "[user]\n"),
    ("notes", "notes\n"),
    ("old", "old\n"),
];

/// Writes [`HOST_FILES`] into `dir`.
fn write_host_files(dir: &Path) {
    for (name, text) in HOST_FILES {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Changes every one of [`HOST_FILES`] in `dir`, inside a container: all must succeed.
fn host_files_script(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "echo '\tname = x' >> {d}/.gitconfig && mv {d}/notes {d}/notes.moved && rm {d}/old && \
         cat {d}/.gitconfig {d}/notes.moved && echo host-files-changed"
    )
}

/// What [`host_files_script`] prints.
const HOST_FILES_CHANGED: &str = "[user]\n\tname = x\nnotes\nhost-files-changed\n";

/// Asserts that [`HOST_FILES`] in `dir` are as [`write_host_files`] left them.
fn assert_host_files_untouched(dir: &Path) {
    for (name, text) in HOST_FILES {
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).unwrap(),
            text,
            "{name}"
        );
    }
    assert!(!dir.join("notes.moved").exists());
}

/// As root, layers stored on the root filesystem stack over a read-only view of `/`: every
/// host directory stays copy-on-write, including the one that holds the store (overlaid
/// directly, the layers would overlap `lowerdir=/`), and the files beside the store.
#[test]
fn layers_over_the_host_keep_every_directory_writable() {
    if !common::is_root() {
        return; // the rootless counterpart is the next test
    }
    // A store on the root filesystem, in a top-level directory the container does not
    // replace (the checkout, and so CARGO_TARGET_TMPDIR, may be under /tmp).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    write_host_files(dir.path());
    let image = Recipe::host()
        .layer(LayerSpec::new("seed").run(["sh", "-c", "echo seeded > /srv/seed-probe"]))
        .build(&store)
        .unwrap();
    let top = Path::new("/").join(dir.path().components().nth(1).unwrap());
    let probe = top.join(format!("pristine-probe-{}", std::process::id()));
    let script = format!(
        "cat /srv/seed-probe && echo written > {p} && cat {p} && ls {s} >/dev/null && {h}",
        p = probe.display(),
        s = store.root().display(),
        h = host_files_script(dir.path()),
    );
    assert_eq!(
        sh(&image, &store, &script),
        format!("seeded\nwritten\n{HOST_FILES_CHANGED}")
    );
    assert!(!probe.exists(), "the write reached the host");
    assert_host_files_untouched(dir.path());
}

/// Rootless, the host root is overlaid per directory, and a directory holding the store
/// cannot be overlaid directly (its layers would be nested lowers): it goes over a read-only
/// view of itself, so everything in it but the store stays copy-on-write (files beside the
/// store and in `$HOME` are rewritten, moved and removed, the host's untouched) and the store
/// is read-only; directories keep their modes, and an untouched run's diff is empty. Run as
/// `nobody` (from root), with the store in a home directory of its own under /var/tmp.
#[test]
fn rootless_layers_over_the_host_keep_files_beside_the_store_copy_on_write() {
    if !common::is_root() {
        return; // the root run does this as nobody
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("sibling")).unwrap();
    write_host_files(&home);
    let bin = home.join("pristine");
    std::fs::copy(common::pristine_bin(), &bin).unwrap();
    std::fs::write(
        home.join("r.toml"),
        "name = \"split\"\nbase = \"host\"\n[[layer]]\nname = \"seed\"\n[[layer.step]]\n\
         run = { argv = [\"sh\", \"-c\", \"mkdir -p /srv/split && echo seeded > /srv/split/f\"] }\n",
    )
    .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .status()
        .unwrap();
    // The store as given (through a symlink in another top-level directory, for the last
    // run) or, by default, where it is.
    let store = std::cell::RefCell::new(home.join("store"));
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home)
            .env("PRISTINE_STORE", &*store.borrow())
            .current_dir(&home)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    as_nobody(&["build", "r.toml"]);
    let home_s = home.display().to_string();
    let script = format!(
        "cat /srv/split/f; stat -c '%a %n' / /var /var/tmp; \
         echo a > /var/probe && echo b > {home_s}/sibling/probe && echo c > {home_s}/new && \
         {{ echo d > {home_s}/store/x 2>/dev/null && echo store-writable || echo store-read-only; }} && \
         {}",
        host_files_script(&home)
    );
    let (stdout, stderr) = as_nobody(&[
        "run", "--image", "split", "--keep", "--", "sh", "-c", &script,
    ]);
    assert_eq!(
        stdout,
        format!("seeded\n755 /\n755 /var\n1777 /var/tmp\nstore-read-only\n{HOST_FILES_CHANGED}"),
        "{stderr}"
    );
    // Nothing reached the host; the diff has exactly the writes and their parents.
    assert!(!Path::new("/var/probe").exists());
    assert!(!home.join("sibling/probe").exists() && !home.join("new").exists());
    assert_host_files_untouched(&home);
    let mut want = vec!["A /var/probe".to_string()];
    // Every directory from /var down to `home` was changed on the way.
    for a in home.ancestors().filter(|a| a.starts_with("/var")) {
        want.push(format!("C {}", a.display()));
    }
    want.extend([
        format!("A {home_s}/new"),
        format!("C {home_s}/sibling"),
        format!("A {home_s}/sibling/probe"),
        format!("C {home_s}/.gitconfig"),
        format!("D {home_s}/notes"),
        format!("A {home_s}/notes.moved"),
        format!("D {home_s}/old"),
    ]);
    want.sort();
    let mut got: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with("A ") || l.starts_with("C ") || l.starts_with("D "))
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, want, "{stderr}");
    // An untouched run changes nothing.
    let (_, stderr) = as_nobody(&["run", "--image", "split", "--keep", "--", "true"]);
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("A ") || l.starts_with("C ")),
        "{stderr}"
    );
    // Three mounts instead of the host image's one overlay of /var, two of them visible
    // (the view is reached only through the overlay), and no copy of the container's own
    // mounts below the store.
    let count = "wc -l < /proc/self/mountinfo";
    let mounts = |args: &[&str]| -> usize {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--", "sh", "-c", count])
            .collect();
        as_nobody(&args).0.trim().parse().unwrap()
    };
    let (host, layered) = (mounts(&["run"]), mounts(&["run", "--image", "split"]));
    assert!(
        layered <= host + 1,
        "{layered} mounts over a layer, {host} on the host image"
    );
    // An upper on disk (in the store) without layers: the same.
    let script = host_files_script(&home);
    let (stdout, stderr) = as_nobody(&["run", "--upper-on-disk", "--", "sh", "-c", &script]);
    assert_eq!(stdout, HOST_FILES_CHANGED, "{stderr}");
    assert_host_files_untouched(&home);
    // The store named through a symlink in another top-level directory: what counts is the
    // directory that really holds it (/var here), else its layers overlap /var's overlay.
    let elsewhere = tempfile::tempdir_in("/run").unwrap();
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&home, elsewhere.path().join("home")).unwrap();
    *store.borrow_mut() = elsewhere.path().join("home/store");
    let (stdout, stderr) = as_nobody(&["run", "--image", "split", "--", "sh", "-c", &script]);
    assert_eq!(stdout, HOST_FILES_CHANGED, "{stderr}");
    assert_host_files_untouched(&home);
}

/// Rootless, where the directory holding the store is on overlayfs already, a view over it
/// and the overlay over the view would stack three deep (the kernel allows two): the way to
/// the store is split instead, and a container over a layer stored there still starts. Run
/// as `nobody` in a mount namespace of its own (made by root) where `/var` is an overlay,
/// with a layer built before (a build cannot put its upper on overlayfs).
#[test]
fn rootless_layers_over_a_directory_on_overlayfs_split_the_way_to_the_store() {
    if !common::is_root() {
        return; // the root run does this as nobody
    }
    assert!(
        common::which("unshare").is_some(),
        "unshare (util-linux) is needed to put /var on overlayfs in a namespace of its own"
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // The overlay's upper, outside /var (a mount below /var would make it a read-only bind).
    let scratch = tempfile::tempdir().unwrap();
    assert!(!scratch.path().starts_with("/var"), "{scratch:?}");
    std::fs::copy(common::pristine_bin(), home.join("pristine")).unwrap();
    std::fs::write(
        home.join("r.toml"),
        "name = \"deep\"\nbase = \"host\"\n[[layer]]\nname = \"seed\"\n[[layer.step]]\n\
         run = { argv = [\"sh\", \"-c\", \"echo seeded > /srv-deep\"] }\n",
    )
    .unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .status()
        .unwrap();
    let (h, s) = (home.display(), scratch.path().display());
    let nobody = format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups -- \
         env -i PATH=/usr/bin:/bin HOME={h} PRISTINE_STORE={h}/store {h}/pristine"
    );
    let built = Command::new("sh")
        .args(["-c", &format!("cd {h} && {nobody} build r.toml")])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let script = format!(
        "set -e
         mount -t tmpfs tmpfs {s}
         mkdir {s}/u {s}/w
         mount -t overlay overlay -o lowerdir=/var,upperdir={s}/u,workdir={s}/w /var
         test \"$(stat -f -c %T /var)\" = overlayfs
         cd {h}
         {nobody} run --image deep -- sh -c 'cat /srv-deep; touch {h}/store/x 2>/dev/null || echo store-read-only'"
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "seeded\nstore-read-only\n",
        "{stderr}"
    );
    assert!(!home.join("store/x").exists());
}

#[test]
fn failed_build_leaves_no_layer_and_reports_the_output() {
    let (_d, store) = store();
    let recipe = Recipe::host().layer(LayerSpec::new("broken").run([
        "sh",
        "-c",
        "echo partial > /srv-partial; echo oops >&2; exit 3",
    ]));
    let err = recipe.build(&store).unwrap_err();
    match &err {
        BuildError::StepFailed { stderr, status, .. } => {
            assert_eq!(stderr, "oops\n");
            assert_eq!(status.code(), 3);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("broken"), "{err}");
    let catalog = Catalog::new(&store).unwrap();
    assert!(catalog.layers().unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn killed_build_is_cleaned_and_rebuilt() {
    let (_d, store) = store();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slow.toml");
    std::fs::write(
        &file,
        "base = \"host\"\n[[layer]]\nname = \"slow\"\n[[layer.step]]\nrun = { argv = [\"sh\", \"-c\", \"echo started > /srv-started; sleep ${SLEEP:-0}; echo done > /srv-done\"], env = { SLEEP = \"30\" } }\n",
    )
    .unwrap();
    let mut child = Command::new(common::pristine_bin())
        .args(["build", "--store"])
        .arg(store.root())
        .arg(&file)
        .spawn()
        .unwrap();
    // Wait until the build container runs, then SIGKILL the builder.
    let layers = store.root().join("layers");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&layers)
        .map(|d| {
            d.flatten()
                .any(|e| e.path().join("root/srv-started").exists())
        })
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "build did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let catalog = Catalog::new(&store).unwrap();
    assert!(
        catalog.layers().unwrap().is_empty(),
        "a killed build publishes nothing"
    );
    // gc finds the dead staging directory.
    let removed = catalog.gc(None, None, true).unwrap();
    assert!(
        removed.iter().any(|r| r.starts_with("staging")),
        "{removed:?}"
    );
    // Building again (same key, a quick step this time via a second recipe file would
    // change the key; instead the same recipe must complete) cleans up and succeeds.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("\"30\"", "\"0\""),
    )
    .unwrap();
    let recipe = Recipe::from_toml_file(&file).unwrap();
    let image = recipe.build(&store).unwrap();
    assert_eq!(sh(&image, &store, "cat /srv-done"), "done\n");
    // ...and gc removes the dead one.
    catalog.gc(None, None, false).unwrap();
    let names: Vec<String> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "staging left: {names:?}");
}

/// `gc --keep-last N` keeps the N most recently used of the layers no image names (what a
/// CI cache needs after every job) and removes the others; named images' layers stay.
#[test]
fn gc_keeps_the_most_recently_used_unnamed_layers() {
    let (_d, store) = store();
    let recipe = |n: &str| {
        Recipe::host().layer(LayerSpec::new(n).run(["sh", "-c", &format!("echo {n} > /srv-{n}")]))
    };
    // Use times are file times, which advance in clock ticks: space the uses out.
    let key = |r: &Recipe| {
        let k = r.build_report(&store).unwrap().layers[0].key.clone();
        std::thread::sleep(Duration::from_millis(20));
        k
    };
    let named = key(&recipe("named").name("kept-by-name"));
    let (a, b, c) = (key(&recipe("a")), key(&recipe("b")), key(&recipe("c")));
    assert_eq!(key(&recipe("a")), a, "a is used again: now the most recent");
    let (ok, text) = cli(&["gc", "--keep-last", "2"], &store);
    assert!(ok, "{text}");
    let catalog = Catalog::new(&store).unwrap();
    let present = |k: &str| catalog.has_layer(k);
    assert!(present(&named), "a named image's layer stays");
    assert!(
        present(&a) && present(&c),
        "the two most recently used stay"
    );
    assert!(!present(&b), "the least recently used goes");
    assert!(text.contains(&format!("layer {} (b)", &b[..12])), "{text}");
}

/// Rebuilding a named recipe after a change replaces its layers: the old ones go at once,
/// unless a running container holds them (its lease), in which case `gc` takes them after.
#[test]
fn a_changed_named_recipe_replaces_its_layers() {
    let (_d, store) = store();
    let recipe = |v: &str| {
        Recipe::host()
            .name("replaced")
            .layer(LayerSpec::new("v").run(["sh", "-c", &format!("echo {v} > /srv-version")]))
    };
    let key = |r: &Recipe| r.build_report(&store).unwrap().layers[0].key.clone();
    let catalog = Catalog::new(&store).unwrap();
    let v1 = key(&recipe("one"));
    let v2 = key(&recipe("two"));
    assert!(catalog.has_layer(&v2));
    assert!(
        !catalog.has_layer(&v1),
        "the replaced layer is gone at once"
    );

    // A container on v2 holds its layer while v3 replaces it: v2 stays until gc.
    let out = tempfile::tempdir().unwrap();
    let mut running = Command::new(common::pristine_bin())
        .args(["run", "--image", "replaced", "--bind"])
        .arg(format!("{}:/out", out.path().display()))
        .args(["--store"])
        .arg(store.root())
        .args([
            "--",
            "sh",
            "-c",
            "cat /srv-version > /out/started; sleep 60",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.path().join("started").exists() {
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v3 = key(&recipe("three"));
    assert!(catalog.has_layer(&v3));
    assert!(
        catalog.has_layer(&v2),
        "a layer a running container holds stays"
    );
    running.kill().unwrap();
    running.wait().unwrap();
    // Its PID 1 may still be exiting: gc takes the layer once nothing holds it.
    while catalog.has_layer(&v2) {
        assert!(
            Instant::now() < deadline,
            "gc never took the released layer"
        );
        let (ok, text) = cli(&["gc"], &store);
        assert!(ok, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(out.path().join("started")).unwrap(),
        "two\n"
    );
}

/// Layers built on one machine reach another through `pristine save` / `pristine load`:
/// the second store then finds every layer of the recipe cached (its keys are the
/// same: no inode numbers or times in them), whiteouts included. A damaged layer is never
/// added.
#[test]
fn saved_layers_load_into_another_store_and_stay_cached() {
    let (_a, built) = store();
    let recipe = Recipe::host()
        .name("shipped")
        .layer(LayerSpec::new("files").run([
            "sh",
            "-c",
            "mkdir -p /srv-ship && echo payload-4242 > /srv-ship/a && echo b > /srv-ship/b",
        ]))
        .layer(LayerSpec::new("delete").run(["rm", "/srv-ship/a"]));
    assert_eq!(cached(&recipe, &built), [false, false]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("layers.tar");
    let (ok, text) = cli(&["save", archive.to_str().unwrap()], &built);
    assert!(ok && text.contains("saved 2 layers"), "{text}");

    let (_b, other) = store();
    let (ok, text) = cli(&["load", archive.to_str().unwrap()], &other);
    assert!(ok && text.contains("loaded 2 layers (0 already"), "{text}");
    assert!(
        text.contains("shipped"),
        "the image record came too: {text}"
    );
    assert_eq!(cached(&recipe, &other), [true, true], "nothing to rebuild");
    let image = recipe.build(&other).unwrap();
    assert_eq!(
        sh(&image, &other, "ls /srv-ship; cat /srv-ship/b"),
        "b\nb\n"
    );
    let (ok, text) = cli(&["load", archive.to_str().unwrap()], &other);
    assert!(ok && text.contains("loaded 0 layers (2 already"), "{text}");

    // One byte of a layer's content changed: rejected, and nothing of it is published.
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes
        .windows(12)
        .position(|w| w == b"payload-4242")
        .expect("the layer tar is uncompressed");
    bytes[at] = b'P';
    let tampered = dir.path().join("tampered.tar");
    std::fs::write(&tampered, &bytes).unwrap();
    let (_c, third) = store();
    let (ok, text) = cli(&["load", tampered.to_str().unwrap()], &third);
    assert!(!ok && text.contains("damaged or was altered"), "{text}");
    let catalog = Catalog::new(&third).unwrap();
    let files_key = recipe.build_report(&built).unwrap().layers[0].key.clone();
    assert!(
        !catalog.has_layer(&files_key),
        "the damaged layer is not published"
    );
    assert!(
        catalog.layers().unwrap().is_empty(),
        "nor the layer above it, which comes after it in the archive"
    );
    let leftovers: Vec<_> = std::fs::read_dir(third.root().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "nothing staged is left: {leftovers:?}"
    );
    // Not a store archive at all: a clear error.
    let (ok, text) = cli(&["load", "/etc/hostname"], &third);
    assert!(!ok && text.contains("cannot load store archive"), "{text}");
}

#[test]
fn concurrent_builders_build_once() {
    let (_d, store) = store();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.toml");
    std::fs::write(
        &file,
        "name = \"shared\"\nbase = \"host\"\n[[layer]]\nname = \"slow-shared\"\n[[layer.step]]\nrun = { argv = [\"sh\", \"-c\", \"sleep 0.5; echo built > /srv-built\"] }\n",
    )
    .unwrap();
    // Four processes ask for the same layer at the same time, as nextest's per-test
    // processes would.
    let spawned: Vec<_> = (0..4)
        .map(|_| {
            Command::new(common::pristine_bin())
                .args(["build", "--store"])
                .arg(store.root())
                .arg(&file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut built = 0;
    let mut reused = 0;
    for child in spawned {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        built += stdout.matches(" built ").count();
        reused += stdout.matches(" cached ").count();
    }
    assert_eq!(
        (built, reused),
        (1, 3),
        "exactly one process builds the layer"
    );
}

#[test]
fn a_hundred_layers_stack() {
    let (_d, store) = store();
    let ctx = tempfile::tempdir().unwrap();
    let mut recipe = Recipe::host().name("deep");
    for i in 0..100 {
        let f = ctx.path().join(format!("f{i}"));
        std::fs::write(&f, format!("{i}\n")).unwrap();
        recipe = recipe.layer(LayerSpec::new(format!("l{i}")).copy(&f, format!("/deep/f{i:03}")));
    }
    let image = recipe.build(&store).unwrap();
    assert_eq!(image.layers().len(), 100);
    let total: usize = image.layers().iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(
        total > 4096,
        "the stack must exceed one mount option page ({total} bytes)"
    );
    assert_eq!(
        sh(
            &image,
            &store,
            "ls /deep | wc -l; cat /deep/f000 /deep/f099"
        ),
        "100\n0\n99\n"
    );
    // Store layers are immutable: the container mounted them squashed into one.
    let squashed: Vec<_> = std::fs::read_dir(store.root().join("squashed"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(squashed.len(), 1, "one squashed stack");
}

/// Whether the running kernel is older than `major.minor`.
fn kernel_older_than(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (major, minor)
}

#[test]
fn a_hundred_plain_layer_directories_stack_with_lowerdir_plus() {
    let (_d, store) = store();
    // Directories that are not store layers are mounted as they are: past the 4096-byte
    // option page that takes the new mount API's `lowerdir+`.
    let dirs = tempfile::tempdir().unwrap();
    let mut image = Image::host();
    for i in 0..100 {
        let d = dirs
            .path()
            .join(format!("layer-with-a-long-name-to-fill-the-page-{i:03}"));
        std::fs::create_dir_all(d.join("deep")).unwrap();
        std::fs::write(d.join(format!("deep/f{i:03}")), format!("{i}\n")).unwrap();
        std::fs::write(d.join("deep/top"), format!("{i}\n")).unwrap();
        image = image.layer(d);
    }
    if kernel_older_than(6, 8) {
        // No `lowerdir+`: the error says which kernel it needs and what to do instead.
        let err = Container::new(image)
            .store(store.root())
            .run(["true"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("6.8") && err.contains("fewer layers"), "{err}");
        return;
    }
    assert_eq!(
        sh(&image, &store, "ls /deep | wc -l; cat /deep/top"),
        "101\n99\n"
    );
    let squashed = std::fs::read_dir(store.root().join("squashed")).map_or(0, |d| d.count());
    assert_eq!(squashed, 0, "plain directories are not squashed");
}

#[test]
fn build_and_named_images_from_the_cli() {
    let (_d, store) = store();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greeting.txt"), "hello\n").unwrap();
    let file = dir.path().join("app.toml");
    std::fs::write(
        &file,
        "base = \"host\"\n[[layer]]\nname = \"greet\"\n[[layer.step]]\ncopy = { from = \"greeting.txt\", to = \"/etc/greeting\" }\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(common::pristine_bin())
            .args(args)
            .arg("--store")
            .arg(store.root())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["build", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("image app: 1 layers"), "{out}");
    let (_, out, _) = cli(&["images"]);
    assert!(out.lines().any(|l| l.starts_with("app ")), "{out}");
    let (_, out, _) = cli(&["layers"]);
    assert!(out.contains("greet"), "{out}");
    let run = Command::new(common::pristine_bin())
        .args(["run", "--image", "app", "--store"])
        .arg(store.root())
        .args(["--", "cat", "/etc/greeting"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello\n");
    let (code, _, err) = cli(&["build", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("missing.toml"), "{err}");
    // gc keeps what a named image uses and removes the rest.
    let orphan = Recipe::host().layer(LayerSpec::new("orphan").run(["true"]));
    let _orphan = orphan.build(&store).unwrap();
    let (_, out, _) = cli(&["gc"]);
    assert!(out.contains("orphan"), "{out}");
    assert!(!out.contains("greet"), "{out}");
    let (_, out, _) = cli(&["layers"]);
    assert!(out.contains("greet") && !out.contains("orphan"), "{out}");
}

/// Two layers over the host: one step, then a run and a copy.
const TWO_LAYERS: &str = "name = \"two\"\nbase = \"host\"\n\
    [[layer]]\nname = \"base\"\n[[layer.step]]\n\
    run = { argv = [\"sh\", \"-c\", \"echo one > /srv-one\"] }\n\
    [[layer]]\nname = \"top\"\n[[layer.step]]\n\
    run = { argv = [\"sh\", \"-c\", \"echo two > /srv-two\"] }\n\
    [[layer.step]]\ncopy = { from = \"r.toml\", to = \"/srv-r.toml\" }\n";

/// A progress line of `pristine build` without what changes from run to run: the
/// `pristine: ` prefix, a 12-digit key (shown as `KEY`) and a duration (` in …`).
fn progress_line(line: &str) -> Option<String> {
    let line = line.strip_prefix("pristine: layer ")?;
    let line = match line.find(" in ") {
        Some(at) if line.ends_with('s') => &line[..at],
        _ => line,
    };
    let key = line.find('(').and_then(|open| {
        let hex = line.get(open + 1..open + 13)?;
        let is_key =
            hex.chars().all(|c| c.is_ascii_hexdigit()) && line[open + 13..].starts_with(')');
        is_key.then_some(open)
    });
    Some(match key {
        Some(open) => format!("layer {}(KEY){}", &line[..open], &line[open + 13 + 1..]),
        None => format!("layer {line}"),
    })
}

/// `pristine build` shows each layer and step on stderr as it goes (plain lines: stderr is
/// not a terminal here), says which layers came from the cache, and shows a failed step's
/// output; stdout holds only the summary.
#[test]
fn build_shows_each_step_the_cached_layers_and_a_failed_steps_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), TWO_LAYERS).unwrap();
    let broken = format!(
        "{TWO_LAYERS}[[layer]]\nname = \"broken\"\n[[layer.step]]\n\
         run = {{ argv = [\"sh\", \"-c\", \"echo partial; echo oops >&2; exit 3\"] }}\n"
    );
    std::fs::write(dir.path().join("broken.toml"), broken).unwrap();
    let build = |file: &str| {
        let out = Command::new(common::pristine_bin())
            .args(["build", file, "--store"])
            .arg(dir.path().join("store"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let stderr = text(&out.stderr);
        let progress: Vec<String> = stderr.lines().filter_map(progress_line).collect();
        (out.status.code(), text(&out.stdout), stderr, progress)
    };
    let (code, stdout, stderr, progress) = build("r.toml");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        progress,
        [
            "layer 1/2 base: building (KEY), 1 step",
            "layer 1/2 base: step 1/1: run sh -c echo one > /srv-one",
            "layer 1/2 base: step 1/1 done",
            "layer 1/2 base: built",
            "layer 2/2 top: building (KEY), 2 steps",
            "layer 2/2 top: step 1/2: run sh -c echo two > /srv-two",
            "layer 2/2 top: step 1/2 done",
            "layer 2/2 top: step 2/2: copy r.toml -> /srv-r.toml",
            "layer 2/2 top: step 2/2 done",
            "layer 2/2 top: built",
        ],
        "{stderr}"
    );
    assert!(
        !stdout.contains("pristine:") && stdout.lines().count() == 3,
        "{stdout}"
    );
    let (code, _, stderr, progress) = build("r.toml");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        progress,
        [
            "layer 1/2 base: cached (KEY)",
            "layer 2/2 top: cached (KEY)"
        ],
        "{stderr}"
    );
    let (code, stdout, stderr, progress) = build("broken.toml");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        progress,
        [
            "layer 1/3 base: cached (KEY)",
            "layer 2/3 top: cached (KEY)",
            "layer 3/3 broken: building (KEY), 1 step",
            "layer 3/3 broken: step 1/1: run sh -c echo partial; echo oops >&2; exit 3",
            "layer 3/3 broken: step 1/1 failed: exit code 3",
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("failed (exit code 3)\n--- stdout ---\npartial\n--- stderr ---\noops\n"),
        "{stderr}"
    );
    assert_eq!(stdout, "");
}

#[test]
fn export_import_round_trip_through_the_store() {
    let (_d, store) = store();
    // A small rootfs of our own: a static busybox if available, else a copy of the host's
    // `sh` with its libraries would do; busybox keeps it tiny.
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(busybox) = busybox else {
        panic!("busybox (package busybox-static) is needed for this test; .ci/run installs it");
    };
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rootfs.path().join("bin")).unwrap();
    std::fs::copy(busybox, rootfs.path().join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "ls", "rm", "mkdir", "echo", "find", "sort"] {
        std::os::unix::fs::symlink("busybox", rootfs.path().join("bin").join(tool)).unwrap();
    }
    std::fs::create_dir_all(rootfs.path().join("etc")).unwrap();
    std::fs::write(rootfs.path().join("etc/old"), "old\n").unwrap();
    std::fs::write(rootfs.path().join("etc/replaced"), "before\n").unwrap();
    let recipe = Recipe::rootfs(rootfs.path())
        .name("tiny")
        .layer(LayerSpec::new("edit").run([
            "/bin/sh",
            "-c",
            "rm /etc/old && echo after > /etc/replaced && mkdir -p /data && echo d > /data/d",
        ]));
    let image = recipe.build(&store).unwrap();
    let view = "cd / && find etc data | sort && cat etc/replaced";
    let expected = sh(&image, &store, view);
    assert_eq!(expected, "data\ndata/d\netc\netc/replaced\nafter\n");

    let archive = tempfile::tempdir().unwrap();
    let tar = archive.path().join("tiny.tar");
    pristine::layers::export_image(&store, "tiny", &tar).unwrap();
    let (_d2, other) = self::store();
    let record = pristine::layers::import_image(&other, &tar, Some("tiny-again")).unwrap();
    assert_eq!(record.layers.len(), 2, "rootfs base + one layer");
    let imported = pristine::layers::resolve_image(&other, "tiny-again").unwrap();
    assert_eq!(sh(&imported, &other, view), expected);
    // Importing again stores nothing new.
    let before = Catalog::new(&other).unwrap().layers().unwrap().len();
    pristine::layers::import_image(&other, &tar, Some("tiny-3")).unwrap();
    assert_eq!(
        Catalog::new(&other).unwrap().layers().unwrap().len(),
        before
    );
    // The host root cannot be exported: a clear error.
    let _hosty = Recipe::host().name("hosty").build(&store).unwrap();
    let err =
        pristine::layers::export_image(&store, "hosty", &archive.path().join("h.tar")).unwrap_err();
    assert!(err.to_string().contains("host"), "{err}");
    // A podman-made archive imports too (podman is installed by .ci/run when root).
    if common::is_root() && common::which("podman").is_some() {
        let podman_root = tempfile::tempdir().unwrap();
        let podman = |args: &[&str]| {
            let out = Command::new("podman")
                .arg(format!(
                    "--root={}",
                    podman_root.path().join("root").display()
                ))
                .arg(format!(
                    "--runroot={}",
                    podman_root.path().join("run").display()
                ))
                .args([
                    "--storage-driver=vfs",
                    "--cgroup-manager=cgroupfs",
                    "--events-backend=file",
                ])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "podman {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        podman(&["load", "-i", tar.to_str().unwrap()]);
        // Dated by its layers, not the epoch ("56 years ago").
        let created = podman(&["image", "inspect", "--format", "{{.Created}}", "tiny"]);
        assert!(
            !created.starts_with("1970"),
            "podman sees it created {created}"
        );
        let saved = archive.path().join("podman.tar");
        podman(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            saved.to_str().unwrap(),
            "tiny",
        ]);
        pristine::layers::import_image(&other, &saved, Some("from-podman")).unwrap();
        let from_podman = pristine::layers::resolve_image(&other, "from-podman").unwrap();
        assert_eq!(sh(&from_podman, &other, view), expected);
    } else {
        eprintln!("podman not available (or not root): skipped the podman leg of the round trip");
    }
}

#[test]
fn shell_runs_an_interactive_shell_in_a_throwaway_container() {
    let (_d, store) = store();
    let mut child = Command::new(common::pristine_bin())
        .args(["shell", "host", "--store"])
        .arg(store.root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo pid=$$; echo scratch > /etc/shell-probe; cat /etc/shell-probe; exit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "pid=2\nscratch\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(!Path::new("/etc/shell-probe").exists());
}

#[test]
fn rootless_mode_passes_too() {
    common::rerun_as_nobody("rootless_mode_passes_too");
}

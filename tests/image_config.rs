//! An imported image's config (Env, Entrypoint, Cmd, WorkingDir, User, ExposedPorts) is
//! honoured by the library's `Container`, `pristine run`, `shell` and `wrap`, under the
//! caller's own settings; hostile configs fail clearly and never reach the host. Images are
//! a static busybox rootfs written by the test, exported as an OCI archive with the test's
//! config and imported through `pristine import`. Root and rootless (as `nobody`).

mod common;

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pristine::oci::{export_archive, ImageConfig};
use pristine::{Container, Image, Store, User};

/// The script the images' entrypoint runs: what the process sees.
const SHOW: &str = r#"#!/bin/sh
echo "args=$*"
echo "env=$GREETING/$SHADOW path=$PATH"
echo "ids=$(id -u):$(id -g) groups=$(id -G)"
echo "pwd=$(pwd)"
"#;

/// A store and the directory that holds its archives.
struct World {
    _dir: tempfile::TempDir,
    store: Store,
    work: PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    World {
        _dir: dir,
        store,
        work,
    }
}

/// A rootfs with a static busybox, `/bin/show`, users `root` and `app` (1000, also in
/// group `wheel`), and what `extra` adds.
fn rootfs(at: &Path, extra: impl FnOnce(&Path)) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox (package busybox-static) is needed; .ci/run installs it");
    let root = at.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for tool in ["sh", "id", "pwd", "echo", "cat", "ls", "env"] {
        symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::write(root.join("bin/show"), SHOW).unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(root.join("bin/show"), exec).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
    )
    .unwrap();
    extra(&root);
    root
}

/// The config most tests use.
fn config() -> ImageConfig {
    let mut c = ImageConfig::default();
    c.env = vec![
        "PATH=/bin".into(),
        "GREETING=hello".into(),
        "SHADOW=image".into(),
    ];
    c.entrypoint = vec!["/bin/show".into()];
    c.cmd = vec!["default".into(), "cmd".into()];
    c.working_dir = Some("/srv/app".into());
    c.user = Some("app".into());
    c.exposed_ports = vec!["5432/tcp".into(), "53/udp".into()];
    c
}

/// Exports `root` with `config` as an OCI archive and imports it as `name` through the CLI.
fn import(w: &World, name: &str, root: &Path, config: &ImageConfig) {
    let tar = w.work.join(format!("{name}.tar"));
    export_archive(&[root.to_path_buf()], config, &tar, Some(name)).unwrap();
    let out = cli(w, &["import", "--name", name, tar.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", text(&out));
}

fn cli(w: &World, args: &[&str]) -> Output {
    Command::new(common::pristine_bin())
        .args(args)
        .arg("--store")
        .arg(w.store.root())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `pristine run --store S ARGS…` (the store flag goes before the command).
fn run_cli(w: &World, args: &[&str]) -> Output {
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    Command::new(common::pristine_bin())
        .arg("run")
        .arg("--store")
        .arg(w.store.root())
        .args(&args[..split])
        .args(&args[split..])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn image(w: &World, name: &str) -> Image {
    pristine::layers::resolve_image(&w.store, name).unwrap()
}

fn container(w: &World, name: &str) -> Container {
    Container::new(image(w, name))
        .store(w.store.location())
        .timeout(Duration::from_secs(60))
}

/// The groups `app` ends up with: as root its supplementary group too; rootless only the
/// caller's one gid is mapped, so there are no others to set.
fn app_groups() -> &'static str {
    if common::is_root() {
        "1000 10"
    } else {
        "1000"
    }
}

#[test]
fn the_library_runs_the_image_as_its_config_says() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    let out = container(&w, "cfg").env_clear().run([""; 0]).unwrap();
    assert!(out.status.success(), "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        format!(
            "args=default cmd\nenv=hello/image path=/bin\nids=1000:1000 groups={}\npwd=/srv/app\n",
            app_groups()
        )
    );
    let c = container(&w, "cfg");
    assert_eq!(
        c.image_config().and_then(|c| c.user.as_deref()),
        Some("app")
    );
    let ports: Vec<String> = c.exposed_ports().iter().map(|p| p.to_string()).collect();
    assert_eq!(ports, ["53/udp", "5432/tcp"]);
    assert_eq!(
        c.image_config().and_then(|c| c.first_tcp_port()),
        Some(5432)
    );
}

#[test]
fn the_callers_settings_win_over_the_images() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    let run = |c: Container, argv: &[&str]| {
        let out = c.run(argv).unwrap();
        assert!(out.status.success(), "{argv:?}: {}", out.stderr_str());
        out.stdout_str()
    };
    // Arguments replace Cmd and keep the entrypoint.
    let out = run(container(&w, "cfg"), &["a", "b"]);
    assert!(out.starts_with("args=a b\n"), "{out}");
    // The caller's environment goes over the image's, which goes over the inherited one.
    let out = run(container(&w, "cfg").env("SHADOW", "caller"), &[]);
    assert!(out.contains("env=hello/caller path=/bin\n"), "{out}");
    // Working directory and user.
    let out = run(
        container(&w, "cfg").workdir("/tmp").user(User::Id(0, 0)),
        &[],
    );
    assert!(out.contains("ids=0:0"), "{out}");
    assert!(out.ends_with("pwd=/tmp\n"), "{out}");
    let out = run(
        container(&w, "cfg").user(User::Name("app:wheel".into())),
        &[],
    );
    assert!(out.contains("ids=1000:10 "), "{out}");
    // An explicit entrypoint replaces the image's and drops its Cmd.
    let out = run(container(&w, "cfg").entrypoint(["/bin/echo"]), &["hi"]);
    assert_eq!(out, "hi\n");
    let out = run(container(&w, "cfg").entrypoint(["/bin/echo", "x"]), &[]);
    assert_eq!(out, "x\n");
    // No entrypoint and no command: a clear error, not the image's Cmd alone.
    let err = container(&w, "cfg")
        .entrypoint(Vec::<String>::new())
        .run([""; 0])
        .unwrap_err();
    assert!(err.to_string().contains("no command"), "{err}");
    // Without its config the image runs like a rootfs directory.
    let bare = Container::new(image(&w, "cfg").without_config())
        .store(w.store.location())
        .run(["/bin/sh", "-c", "id -u; pwd; echo ${GREETING:-unset}"])
        .unwrap();
    assert_eq!(bare.stdout_str(), "0\n/\nunset\n");
}

#[test]
fn home_comes_from_the_images_passwd_and_recipes_keep_the_config() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    let home = |c: Container| {
        let out = c
            .entrypoint(["/bin/sh", "-c", "echo $HOME"])
            .run([""; 0])
            .unwrap();
        out.stdout_str()
    };
    assert_eq!(
        home(container(&w, "cfg").env("HOME", "/elsewhere")),
        "/elsewhere\n"
    );
    assert_eq!(home(container(&w, "cfg")), "/home/app\n");
    // A recipe on the image: its steps run as the recipe says (root, no entrypoint); the
    // image it makes runs as the imported one does.
    let _ = pristine::Recipe::image("cfg")
        .name("on-cfg")
        .layer(pristine::LayerSpec::new("who").run(["/bin/sh", "-c", "id -u > /built-by"]))
        .build(&w.store)
        .unwrap();
    let out = container(&w, "on-cfg")
        .entrypoint(["/bin/sh", "-c", "cat /built-by; id -u"])
        .run([""; 0])
        .unwrap();
    assert_eq!(out.stdout_str(), "0\n1000\n", "{}", out.stderr_str());
    let out = container(&w, "on-cfg").env_clear().run([""; 0]).unwrap();
    assert!(
        out.stdout_str().starts_with("args=default cmd\n"),
        "{}",
        out.stdout_str()
    );
}

#[test]
fn an_image_with_neither_entrypoint_nor_cmd_needs_a_command() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    let mut c = ImageConfig::default();
    c.env = vec!["PATH=/bin".into()];
    import(&w, "plain", &root, &c);
    let err = container(&w, "plain").run([""; 0]).unwrap_err();
    assert!(
        err.to_string().contains("neither an Entrypoint nor a Cmd"),
        "{err}"
    );
    let out = run_cli(&w, &["--image", "plain"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(
        text(&out).contains("neither an Entrypoint nor a Cmd"),
        "{}",
        text(&out)
    );
}

#[test]
fn pristine_run_follows_dockers_rules() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    let stdout = |out: Output| {
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = stdout(run_cli(&w, &["--image", "cfg", "--clear-env"]));
    assert_eq!(
        out,
        format!(
            "args=default cmd\nenv=hello/image path=/bin\nids=1000:1000 groups={}\npwd=/srv/app\n",
            app_groups()
        )
    );
    let out = stdout(run_cli(
        &w,
        &["--image", "cfg", "--env", "GREETING=bye", "--", "x"],
    ));
    assert!(out.starts_with("args=x\nenv=bye/image "), "{out}");
    let out = stdout(run_cli(
        &w,
        &[
            "--image",
            "cfg",
            "--user",
            "0:0",
            "--workdir",
            "/",
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            "id -u; pwd",
        ],
    ));
    assert_eq!(out, "0\n/\n");
    let out = stdout(run_cli(
        &w,
        &[
            "--image",
            "cfg",
            "--user",
            "root",
            "--entrypoint",
            "",
            "--",
            "id",
            "-G",
        ],
    ));
    assert_eq!(out, "0\n");
}

#[test]
fn shell_picks_a_shell_the_image_has() {
    let w = world();
    // Only busybox, no `sh` link: the shell is `busybox sh`.
    let root = rootfs(&w.work, |root| {
        std::fs::remove_file(root.join("bin/sh")).unwrap();
        std::fs::write(root.join("bin/bash"), "not executable").unwrap();
    });
    import(&w, "cfg", &root, &config());
    assert_eq!(
        image(&w, "cfg").shell(),
        Some(vec!["/bin/busybox".to_string(), "sh".to_string()])
    );
    let mut child = Command::new(common::pristine_bin())
        .args(["shell", "cfg", "--store"])
        .arg(w.store.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo $GREETING; id -u; pwd; exit 0\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // After busybox's banner and prompt (on stdout).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("$ hello\n1000\n/srv/app\n"), "{stdout}");
    // No shell at all: a clear error, nothing run.
    let bare = w.work.join("bare");
    std::fs::create_dir_all(bare.join("bin")).unwrap();
    std::fs::write(bare.join("bin/tool"), "").unwrap();
    import(&w, "noshell", &bare, &ImageConfig::default());
    let out = cli(&w, &["shell", "noshell"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(text(&out).contains("has no shell"), "{}", text(&out));
}

#[test]
fn wrap_takes_named_images_and_their_config_but_not_their_entrypoint() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    // The caller's working directory is bound into the container: one `app` can enter.
    let cwd = tempfile::tempdir().unwrap();
    let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(cwd.path(), open).unwrap();
    // Host programs, carried into the image with their libraries as test binaries are.
    let wrap = |image: &str, program: &str, args: &[&str]| {
        let program = common::which(program).expect("coreutils");
        Command::new(common::pristine_bin())
            .current_dir(cwd.path())
            .args(["wrap", "--image", image, "--store"])
            .arg(w.store.root())
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = wrap("cfg", "env", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let env = String::from_utf8_lossy(&out.stdout);
    for want in ["GREETING=hello", "SHADOW=image", "PATH=/bin"] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }
    let out = wrap("cfg", "id", &["-u"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n");
    let out = wrap("no-such-image", "true", &[]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(text(&out).contains("no-such-image"), "{}", text(&out));
}

#[test]
fn a_user_the_image_lacks_is_a_clear_error() {
    let w = world();
    let root = rootfs(&w.work, |root| {
        // A passwd that points at the host's: never read.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink("/../../../../etc/passwd", root.join("etc/passwd")).unwrap();
    });
    let mut c = config();
    c.user = Some("root".into());
    import(&w, "ghost", &root, &c);
    let err = container(&w, "ghost").run(["true"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"root\" is not in the image's /etc/passwd"),
        "{err}"
    );
    let mut c = config();
    c.user = Some("app:nogroup".into());
    import(&w, "nogroup", &rootfs(&w.work.join("g"), |_| {}), &c);
    let out = run_cli(&w, &["--image", "nogroup", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(
        text(&out).contains("group \"nogroup\" is not in the image's /etc/group"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
}

#[test]
fn a_hostile_working_directory_stays_inside_the_container() {
    let w = world();
    // A host directory the config aims at: it must stay empty.
    let host = tempfile::tempdir().unwrap();
    let host_dir = host.path().join("target");
    std::fs::create_dir(&host_dir).unwrap();
    let target = host_dir.clone();
    let root = rootfs(&w.work, move |root| {
        std::fs::create_dir(root.join("inside")).unwrap();
        symlink("/../../../inside", root.join("out")).unwrap();
        symlink(&target, root.join("dangle")).unwrap();
    });
    let host_path = host_dir.display().to_string();
    let cases = [
        ("dots", format!("/../../../../..{host_path}/made"), true),
        ("rel", format!("../../x/..{host_path}/made"), true),
        ("link", "/out/made".to_string(), true),
        // Into a directory the image does not have: a clear error.
        ("dangle", "/dangle/made".to_string(), false),
    ];
    for (name, wd, works) in cases {
        let mut c = config();
        c.working_dir = Some(wd.clone());
        c.user = None;
        import(&w, name, &root, &c);
        let run = container(&w, name).entrypoint(["/bin/pwd"]).run([""; 0]);
        match (run, works) {
            (Ok(out), true) => assert!(out.status.success(), "{wd}: {}", out.stderr_str()),
            (Err(e), false) => assert!(e.to_string().contains("working directory"), "{e}"),
            (r, _) => panic!("{wd}: {r:?}"),
        }
        assert!(
            std::fs::read_dir(&host_dir).unwrap().next().is_none(),
            "{wd}: the host directory was written"
        );
        assert!(!Path::new("/inside").exists(), "{wd}: made on the host");
    }
    let out = container(&w, "link")
        .entrypoint(["/bin/sh", "-c", "cd /inside/made && echo made"])
        .run([""; 0])
        .unwrap();
    assert_eq!(out.stdout_str(), "made\n", "{}", out.stderr_str());
}

#[test]
fn huge_and_malformed_environments_never_panic() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    // 20 000 variables, 1.2 MB: they all arrive.
    let mut c = config();
    c.user = None;
    c.env = (0..20_000).map(|i| format!("V{i}={:050}", i)).collect();
    c.env.push("PATH=/bin".into());
    import(&w, "big", &root, &c);
    let out = container(&w, "big")
        .env_clear()
        .entrypoint(["/bin/sh", "-c", "env | grep -c '^V'; echo $V19999"])
        .run([""; 0])
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), format!("20000\n{:050}\n", 19_999));
    // Far more than the kernel passes to a program: a clear error.
    c.env = (0..100_000).map(|i| format!("V{i}={:100}", i)).collect();
    import(&w, "huge", &root, &c);
    let err = container(&w, "huge").env_clear().run(["true"]).unwrap_err();
    assert!(err.to_string().contains("Argument list too long"), "{err}");
    // An entry that is not KEY=VALUE.
    c.env = vec!["JUSTAKEY".into()];
    import(&w, "malformed", &root, &c);
    let err = container(&w, "malformed").run(["true"]).unwrap_err();
    assert!(err.to_string().contains("JUSTAKEY"), "{err}");
}

#[test]
fn images_lists_readable_bases_and_import_says_what_it_replaces() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    let _ = pristine::Recipe::rootfs(&root)
        .name("on-rootfs")
        .build(&w.store)
        .unwrap();
    let _ = pristine::Recipe::host()
        .name("on-host")
        .build(&w.store)
        .unwrap();
    let out = cli(&w, &["images"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let root_text = root.display().to_string();
    insta::with_settings!({
        snapshot_path => common::manifest_dir().join("snapshots"),
        prepend_module_to_snapshot => false,
        filters => vec![
            (root_text.as_str(), "[ROOTFS]"),
            (r"\b[0-9a-f]{12}\b", "[KEY]"),
            (r" +\d+ (B|KiB|MiB)\b", " [SIZE]"),
            (r" +\d+[smhd] ago", " [AGE]"),
        ],
    }, {
        insta::assert_snapshot!("image_config_images_listing", listing);
    });
    // The same image again: said so. Another under the name: said what it replaces.
    let tar = w.work.join("cfg.tar");
    let out = cli(&w, &["import", "--name", "cfg", tar.to_str().unwrap()]);
    assert!(
        text(&out).contains("cfg is already this image"),
        "{}",
        text(&out)
    );
    let mut other = config();
    other.cmd = vec!["other".into()];
    let tar = w.work.join("other.tar");
    export_archive(std::slice::from_ref(&root), &other, &tar, None).unwrap();
    let out = cli(&w, &["import", "--name", "cfg", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("replacing the image of that name"),
        "{}",
        text(&out)
    );
}

#[test]
fn exports_carry_the_layers_dates() {
    let w = world();
    let root = rootfs(&w.work, |_| {});
    import(&w, "cfg", &root, &config());
    let created = pristine::layers::Catalog::new(&w.store)
        .unwrap()
        .image_record("cfg")
        .unwrap()
        .unwrap()
        .created;
    let tar = w.work.join("out.tar");
    let config_json = |env: Option<&str>| {
        let mut c = Command::new(common::pristine_bin());
        c.args(["export", "cfg", tar.to_str().unwrap(), "--store"])
            .arg(w.store.root());
        if let Some(e) = env {
            c.env("SOURCE_DATE_EPOCH", e);
        } else {
            c.env_remove("SOURCE_DATE_EPOCH");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        image_config_json(&tar)
    };
    let json = config_json(None);
    let date = json["created"].as_str().unwrap().to_string();
    let year: u64 = date[..4].parse().unwrap();
    let now_year = 1970 + created / 31_556_952;
    assert!(year + 1 >= now_year && year > 2000, "{date}");
    assert_eq!(json["history"][0]["created"].as_str(), Some(date.as_str()));
    assert_eq!(
        json["config"]["ExposedPorts"]["5432/tcp"],
        serde_json::json!({})
    );
    let first = std::fs::read(&tar).unwrap();
    config_json(None);
    assert_eq!(
        std::fs::read(&tar).unwrap(),
        first,
        "exports are reproducible"
    );
    let json = config_json(Some("1700000000"));
    assert_eq!(json["created"], "2023-11-14T22:13:20Z");
    assert_eq!(json["history"][0]["created"], "2023-11-14T22:13:20Z");
}

/// The config blob of the one image of an OCI archive.
fn image_config_json(tar: &Path) -> serde_json::Value {
    let mut blobs = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(tar).unwrap());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        blobs.insert(path, data);
    }
    let blob = |digest: &str| &blobs[&format!("blobs/sha256/{}", &digest[7..])];
    let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()
}

#[test]
fn rootless_mode_passes_too() {
    common::rerun_as_nobody("rootless_mode_passes_too");
}

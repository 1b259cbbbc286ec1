//! Pulling images from a real registry: Debian's `docker-registry` (the reference
//! distribution registry) on a loopback port, images pushed with skopeo.
//!
//! As root, `rootless` re-runs the suite as `nobody`.

mod common;
#[path = "registry/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::Command;

use fixture::{
    busybox, host_arch, push, tar_of, Break, Comp, Entry, Layout, Proxy, Registry, TokenFront,
};
use pristine::layers::Catalog;
use pristine::pull::{pull, PullError, PullOptions};
use pristine::Store;

/// Options that find no credentials (the host's files are not the test's business).
fn anonymous() -> PullOptions {
    PullOptions::new().auth_files(Vec::new())
}

fn store_in(dir: &Path) -> Store {
    Store::open(dir.join("store")).unwrap()
}

/// Everything under the store's `layers/` and `images/`, for before/after comparisons.
fn stored(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["layers", "images"] {
        // The store makes both when it is opened: a missing one is a failure, not "empty".
        let dir = store.root().join(d);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for e in entries {
            out.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

fn pristine_cli(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::pristine_bin())
        .arg(args[0])
        .arg("--store")
        .arg(store)
        .args(&args[1..])
        .output()
        .unwrap()
}

/// `pristine` with `args` on `store`, which must succeed: its stdout.
fn pristine_ok(store: &Path, args: &[&str]) -> String {
    let out = pristine_cli(store, args);
    assert!(
        out.status.success(),
        "pristine {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pull, run, re-pull (no layer transferred), pin by digest with the registry gone (no
/// network at all), and the image's config stored as an import stores it.
#[test]
fn busybox_pull_run_repull_and_digest_pin() {
    let tmp = fixture::scratch();
    let mut reg = Registry::start(None);
    let (layout, manifest_digest, layers) = busybox(tmp.path().join("layout"));
    let reference = format!("{}/test/busybox:1", reg.host());
    push(&layout.dir, &reference, None);

    let store_dir = tmp.path().join("store");
    let stdout = pristine_ok(&store_dir, &["pull", &reference]);
    assert!(stdout.contains("2 layers, 2 downloaded"), "{stdout}");
    assert!(stdout.contains(&manifest_digest), "{stdout}");
    for d in &layers {
        assert_eq!(reg.blob_gets("test/busybox", d), 1, "{d}");
    }

    let out = pristine_cli(
        &store_dir,
        &[
            "run",
            "--image",
            &reference,
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/motd; ls /bin",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("pulled\nbusybox\ncat\nsh\n"), "{stdout}");

    let store = Store::open(&store_dir).unwrap();
    let record = Catalog::new(&store)
        .unwrap()
        .image_record(&format!("127.0.0.1-{}-test-busybox-1", reg.port))
        .unwrap()
        .expect("recorded under the reference's name");
    assert_eq!(record.config.env, ["PATH=/bin", "GREETING=hello"]);
    assert_eq!(record.config.cmd, ["sh"]);
    let source = record.source.as_ref().unwrap();
    assert_eq!(source.manifest_digest, manifest_digest);
    assert_eq!(source.reference, reference);

    let manifests = reg.manifest_gets("test/busybox");
    let again = pull(&store, &reference, &anonymous()).unwrap();
    assert_eq!(again.downloaded, 0);
    assert!(again.contacted_registry);
    assert_eq!(reg.manifest_gets("test/busybox"), manifests + 1);
    for d in &layers {
        assert_eq!(
            reg.blob_gets("test/busybox", d),
            1,
            "no layer is fetched again"
        );
    }

    reg.stop();
    let pinned = format!("{}/test/busybox@{manifest_digest}", reg.host());
    let offline = pull(&store, &pinned, &anonymous()).unwrap();
    assert!(!offline.contacted_registry);
    assert_eq!(offline.record.layers, record.layers);
    let err = pull(&store, &reference, &anonymous()).unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{err}");
    assert!(err.to_string().contains(&reg.host()), "{err}");
    let before = stored(&store);
    assert_eq!(
        before.iter().filter(|e| e.starts_with("layers/")).count(),
        2,
        "two layers, shared by the tag and the pin: {before:?}"
    );
}

/// An index with another platform first: this machine's image is the one pulled; an
/// index without it says which platforms it has.
#[test]
fn multi_platform_index_picks_the_hosts_image() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let other = if host_arch() == "s390x" {
        "amd64"
    } else {
        "s390x"
    };
    let layout = Layout::new(tmp.path().join("layout"));
    let layer = |what: &str| {
        tar_of(&[(
            "platform",
            Entry::File(format!("{what}\n").into_bytes(), 0o644),
        )])
    };
    let (foreign, _) = layout.image(other, &[(layer("foreign"), Comp::Zstd)], &[]);
    let (native, _) = layout.image(host_arch(), &[(layer("native"), Comp::Plain)], &[]);
    let index = layout.index(&[foreign.clone(), native]);
    layout.name(&index);
    let reference = format!("{}/test/multi:1", reg.host());
    push(&layout.dir, &reference, None);

    let store = store_in(tmp.path());
    let pulled = pull(&store, &reference, &anonymous()).unwrap();
    let top = &pulled.image.layers()[0];
    assert_eq!(
        std::fs::read_to_string(top.join("platform")).unwrap(),
        "native\n"
    );
    let source = pulled.record.source.unwrap();
    assert_eq!(source.index_digest.as_deref(), index["digest"].as_str());

    let only_foreign = layout.index(&[foreign]);
    layout.name(&only_foreign);
    let reference = format!("{}/test/foreign:1", reg.host());
    push(&layout.dir, &reference, None);
    let err = pull(&store, &reference, &anonymous()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::NoPlatform { .. }), "{msg}");
    assert!(msg.contains(&format!("only for linux/{other}")), "{msg}");
    assert!(msg.contains(&format!("linux/{}", host_arch())), "{msg}");
}

/// Basic auth: anonymous and wrong credentials are refused naming what was tried; the
/// right ones from an auth file (`REGISTRY_AUTH_FILE`) or `--creds` work.
#[test]
fn basic_auth_with_credentials_files() {
    let tmp = fixture::scratch();
    let reg = Registry::start(Some(("alice", "s3cret")));
    let (layout, _, _) = busybox(tmp.path().join("layout"));
    let reference = format!("{}/private/busybox:1", reg.host());
    push(&layout.dir, &reference, Some("alice:s3cret"));
    let store = store_in(tmp.path());

    let err = pull(&store, &reference, &anonymous()).unwrap_err();
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("anonymous access"), "{err}");

    let auth_file = |name: &str, creds: &str| {
        let p = tmp.path().join(name);
        let b64 = base64_of(creds);
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, reg.host()),
        )
        .unwrap();
        p
    };
    let wrong = auth_file("wrong.json", "alice:nope");
    let err = pull(
        &store,
        &reference,
        &PullOptions::new().auth_files(vec![wrong.clone()]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("\"alice\"") && msg.contains(&wrong.display().to_string()),
        "{msg}"
    );
    assert!(stored(&store).iter().all(|e| !e.starts_with("images/")));

    let right = auth_file("auth.json", "alice:s3cret");
    let out = Command::new(common::pristine_bin())
        .args(["pull", &reference, "--store"])
        .arg(store.root())
        .env("REGISTRY_AUTH_FILE", &right)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = pristine_ok(
        store.root(),
        &[
            "pull",
            "--creds",
            "alice:s3cret",
            "--name",
            "bb",
            &reference,
        ],
    );
    assert!(stdout.contains("0 downloaded"), "{stdout}");

    // `--creds USER`: the password from standard input, never from the command line.
    let with_stdin = |input: &str| {
        use std::io::Write;
        let mut child = Command::new(common::pristine_bin())
            .args([
                "pull", "--creds", "alice", "--name", "bb2", &reference, "--store",
            ])
            .arg(store.root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = with_stdin("s3cret\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_stdin("");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("no password") && msg.contains("standard input"),
        "{msg}"
    );
    let out = with_stdin("wrong\n");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && msg.contains("\"alice\""), "{msg}");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Docker Hub's anonymous bearer-token flow, against a token-auth front over the real
/// registry: with no credentials at all, the pull is challenged, fetches a token for
/// `repository:test/busybox:pull` from the realm, and every manifest and blob request
/// bears it; the pulled image runs.
#[test]
fn anonymous_bearer_token_pull() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let (layout, manifest_digest, layers) = busybox(tmp.path().join("layout"));
    push(&layout.dir, &format!("{}/test/busybox:1", reg.host()), None);
    let front = TokenFront::start(reg.port, None);
    let reference = format!("{}/test/busybox:1", front.host());
    let store = store_in(tmp.path());

    let pulled = pull(&store, &reference, &anonymous()).unwrap();
    assert_eq!(pulled.downloaded, 2, "{pulled:?}");
    assert_eq!(
        pulled.record.source.as_ref().unwrap().manifest_digest,
        manifest_digest
    );

    let seen = front.seen();
    assert!(
        !seen.token_queries.is_empty(),
        "no token asked for: {seen:?}"
    );
    for q in &seen.token_queries {
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("service"), Some(fixture::TOKEN_SERVICE), "{seen:?}");
        assert_eq!(
            get("scope"),
            Some("repository:test/busybox:pull"),
            "{seen:?}"
        );
    }
    // Challenged first; nothing about the image was asked without the token.
    assert!(!seen.rejected.is_empty(), "never challenged: {seen:?}");
    assert!(
        seen.rejected.iter().all(|r| r == "GET /v2/"),
        "only the version check goes without a token: {seen:?}"
    );
    assert!(
        seen.forwarded
            .contains(&"GET /v2/test/busybox/manifests/1".to_string()),
        "{seen:?}"
    );
    for d in &layers {
        assert!(
            seen.forwarded
                .contains(&format!("GET /v2/test/busybox/blobs/{d}")),
            "{d} without the token: {seen:?}"
        );
        assert_eq!(reg.blob_gets("test/busybox", d), 1, "{d}");
    }

    drop(front);
    let stdout = pristine_ok(
        store.root(),
        &[
            "run",
            "--image",
            &reference,
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/motd",
        ],
    );
    assert_eq!(stdout, "pulled\n");
}

/// A token endpoint that refuses (401 or 403) to hand out a token: the pull fails saying
/// which registry's token service refused, for which repository, that it was asked
/// anonymously, what it said and what to do; nothing is stored and nothing reached the
/// registry.
#[test]
fn refused_bearer_token_is_a_clear_error() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let (layout, _, _) = busybox(tmp.path().join("layout"));
    push(&layout.dir, &format!("{}/test/busybox:1", reg.host()), None);
    let store = store_in(tmp.path());
    for status in [401, 403] {
        let front = TokenFront::start(reg.port, Some(status));
        let reference = format!("{}/test/busybox:1", front.host());
        let err = pull(&store, &reference, &anonymous()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PullError::TokenRefused { .. }),
            "{status}: {msg}"
        );
        assert!(
            msg.contains(&format!(
                "registry {} wants a token for test/busybox",
                front.host()
            )) && msg.contains(&reference)
                && msg.contains("token service refused one to anonymous access")
                && msg.contains("the requested resource is not authorized")
                && msg.contains(&format!("podman login {}", front.host())),
            "{status}: {msg}"
        );
        let seen = front.seen();
        assert!(!seen.token_queries.is_empty(), "{status}: {seen:?}");
        assert!(seen.forwarded.is_empty(), "{status}: {seen:?}");
    }
    assert!(stored(&store).is_empty(), "{:?}", stored(&store));
    assert_eq!(reg.manifest_gets("test/busybox"), 0);
}

/// A deleted tag and a repository that never was: a clear "no manifest" error, nothing
/// stored.
#[test]
fn deleted_tag_and_unknown_repository() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let (layout, _, _) = busybox(tmp.path().join("layout"));
    let reference = format!("{}/test/gone:1", reg.host());
    push(&layout.dir, &reference, None);
    fixture::delete(&reference, &layout.dir);
    let store = store_in(tmp.path());
    let err = pull(&store, &reference, &anonymous()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::NotFound { .. }), "{msg}");
    assert!(
        msg.contains(&reg.host()) && msg.contains("test/gone:1"),
        "{msg}"
    );
    let err = pull(&store, &format!("{}/no/such:1", reg.host()), &anonymous()).unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
    assert!(stored(&store).is_empty(), "{:?}", stored(&store));
}

/// A registry that breaks off a layer mid-transfer: a clear error and nothing
/// half-written; a pull killed while a transfer hangs leaves nothing published either,
/// and the next pull completes.
#[test]
fn interrupted_pulls_leave_nothing_half_written() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let (layout, _, layers) = busybox(tmp.path().join("layout"));
    push(&layout.dir, &format!("{}/test/busybox:1", reg.host()), None);
    let store = store_in(tmp.path());

    let cut = Proxy::start(reg.port, 64 << 10, Break::Cut);
    let reference = format!("{}/test/busybox:1", cut.host());
    let err = pull(&store, &reference, &anonymous()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Registry { .. }), "{msg}");
    assert!(
        msg.contains("downloading layer") && msg.contains(&cut.host()),
        "{msg}"
    );
    // No image, no staging; a layer that arrived whole may stay (verified, published).
    let complete = |s: &Store| {
        let catalog = Catalog::new(s).unwrap();
        stored(s).iter().all(|e| {
            e.strip_prefix("layers/")
                .is_some_and(|key| catalog.has_layer(key))
        })
    };
    assert!(complete(&store), "{:?}", stored(&store));

    let stall = Proxy::start(reg.port, 64 << 10, Break::Stall);
    let reference = format!("{}/test/busybox:1", stall.host());
    let mut child = Command::new(common::pristine_bin())
        .args(["pull", &reference, "--store"])
        .arg(store.root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the big layer's transfer hangs (the proxy stalled it; its staging directory
    // exists), then kill.
    let staging = |s: &Store| {
        stored(s)
            .into_iter()
            .any(|e| e.starts_with("layers/.staging-"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(staging(&store) && stall.broken() > 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(staging(&store), "the pull never started a layer");
    assert!(
        stall.broken() > 0,
        "the pull never reached the stalled transfer"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The registry logs a GET once it has sent the response: let the stalled one end.
    drop(stall);
    let left = stored(&store);
    let catalog = Catalog::new(&store).unwrap();
    assert!(
        left.iter().all(|e| e.starts_with("layers/.staging-")
            || e.strip_prefix("layers/")
                .is_some_and(|k| catalog.has_layer(k))),
        "only the dead pull's staging and whole layers are left, no image: {left:?}"
    );
    let pulled = pull(
        &store,
        &format!("{}/test/busybox:1", reg.host()),
        &anonymous(),
    )
    .unwrap();
    // The busybox layer never arrived whole; the small one may have, and is not fetched again.
    assert!(pulled.downloaded >= 1, "{pulled:?}");
    assert_eq!(pulled.record.layers.len(), layers.len());
    let big = &layers[0];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reg.blob_gets("test/busybox", big) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        reg.blob_gets("test/busybox", big) >= 3,
        "cut, stalled, completed"
    );
    Catalog::new(&store).unwrap().gc(None, None, false).unwrap();
    assert!(stored(&store).iter().all(|e| !e.contains(".staging-")));
}

/// Two processes pulling one image into one store at once download each blob once.
#[test]
fn concurrent_pulls_download_each_blob_once() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let (layout, _, layers) = busybox(tmp.path().join("layout"));
    push(&layout.dir, &format!("{}/test/busybox:1", reg.host()), None);
    // Slowed down, so that the two pulls overlap.
    let slow = Proxy::start(reg.port, 0, Break::Slow);
    let reference = format!("{}/test/busybox:1", slow.host());
    let store_dir = tmp.path().join("store");
    Store::open(&store_dir).unwrap();
    let spawn = || {
        Command::new(common::pristine_bin())
            .args(["pull", &reference, "--store"])
            .arg(&store_dir)
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let downloaded: Vec<String> = [&a, &b].iter().map(|o| said(o)).collect();
    for d in &layers {
        assert_eq!(reg.blob_gets("test/busybox", d), 1, "{d}: {downloaded:?}");
    }
}

/// A layer with a `..` entry from the registry is refused by the hostile-archive checks;
/// nothing of the image is kept.
#[test]
fn hostile_layer_from_a_registry_is_refused() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let mut tar = tar_of(&[("placeholder", Entry::File(b"x".to_vec(), 0o644))]);
    // Rename the entry to `../escape` in its header (the tar crate refuses to write it).
    let name = b"../escapeholder";
    tar[..name.len()].copy_from_slice(name);
    let sum: u32 = tar[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let layout = Layout::new(tmp.path().join("layout"));
    let (desc, _) = layout.image(host_arch(), &[(tar, Comp::Gzip)], &[]);
    layout.name(&desc);
    let reference = format!("{}/test/hostile:1", reg.host());
    push(&layout.dir, &reference, None);
    let store = store_in(tmp.path());
    let err = pull(&store, &reference, &anonymous()).unwrap_err();
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(matches!(err, PullError::Layer { .. }), "{chain}");
    assert!(chain.contains("../escapeholder"), "{chain}");
    assert!(stored(&store).is_empty(), "{:?}", stored(&store));
    assert!(!tmp.path().join("escapeholder").exists());
}

/// A recipe over a registry reference pulls it once, then builds on it; a second build
/// asks no registry (the image is held).
#[test]
fn recipe_over_a_reference_pulls_its_base() {
    let tmp = fixture::scratch();
    let mut reg = Registry::start(None);
    let (layout, _, _) = busybox(tmp.path().join("layout"));
    let reference = format!("{}/test/busybox:1", reg.host());
    push(&layout.dir, &reference, None);
    let store = store_in(tmp.path());
    let recipe = pristine::Recipe::image(reference.as_str())
        .layer(pristine::LayerSpec::new("built").run(["/bin/sh", "-c", "cat /etc/motd > /built"]));
    let image = recipe.build(&store).unwrap();
    let top = image.layers().last().unwrap();
    assert_eq!(
        std::fs::read_to_string(top.join("built")).unwrap(),
        "pulled\n"
    );
    assert_eq!(image.layers().len(), 3);
    reg.stop();
    let again = recipe.build(&store).unwrap();
    assert_eq!(again, image);
}

/// A pulled image's config says how `pristine run --image REF` runs it without a command:
/// its entrypoint with `Cmd` as arguments, its `Env`, its `WorkingDir` (created) and its
/// `User` (by name, from the image's own passwd); a command replaces `Cmd` only.
#[test]
fn pulled_image_runs_as_its_config_says() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let layout = fixture::configured_busybox(tmp.path().join("layout"));
    let reference = format!("{}/test/configured:1", reg.host());
    push(&layout.dir, &reference, None);
    let store_dir = tmp.path().join("store");
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(pristine_cli(&store_dir, &["pull", &reference]));
    let out = ok(pristine_cli(
        &store_dir,
        &["run", "--image", &reference, "--clear-env"],
    ));
    assert_eq!(
        out,
        "args=default cmd\nenv=hello path=/bin\nids=1000:1000\npwd=/srv/app\n"
    );
    let out = ok(pristine_cli(
        &store_dir,
        &["run", "--image", &reference, "--clear-env", "--", "given"],
    ));
    assert_eq!(
        out,
        "args=given\nenv=hello path=/bin\nids=1000:1000\npwd=/srv/app\n"
    );
}

/// Set for the child that runs [`service_over_a_pulled_image`]'s harness: the reference.
const SERVICE_REF_ENV: &str = "PRISTINE_TEST_SERVICE_REF";
/// What the service's setup layer puts in its site.
const SITE: &str = "served from a layer over a pulled image";

/// A ready-made service over a pulled image, under the harness: `services::Generic` runs
/// the image's busybox `httpd` (as the image's user) on a site that a setup layer froze
/// over the pulled layers, ready once its port accepts; the test in each container fetches
/// the page and sees the image's environment. The harness runs in a child process of this
/// binary (this test, `--exact`, with `SERVICE_REF_ENV` set), which each test's container
/// runs again.
#[test]
fn service_over_a_pulled_image() {
    if std::env::var_os(pristine::testing::INSIDE_ENV).is_some()
        || std::env::var_os(SERVICE_REF_ENV).is_some()
    {
        service_harness();
        return;
    }
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let layout = fixture::configured_busybox(tmp.path().join("layout"));
    let reference = format!("{}/test/configured:1", reg.host());
    push(&layout.dir, &reference, None);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "service_over_a_pulled_image", "--nocapture"])
        .env(SERVICE_REF_ENV, &reference)
        .env("PRISTINE_STORE", tmp.path().join("store"))
        // This binary's main is libtest's: the containers' init is pristine's.
        .env("PRISTINE_INIT", common::pristine_bin())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("service harness: 1 passed, 0 failed"),
        "{text}"
    );
    assert!(
        reg.log().contains("\"GET /v2/test/configured/manifests/1 "),
        "the base came from the registry:\n{text}"
    );
}

/// The harness of [`service_over_a_pulled_image`], in its child and in each container.
fn service_harness() {
    use pristine::services::{Generic, Stack};
    use std::io::{Read, Write};
    // Only the child builds the image; in a container, the services are what matters.
    let reference = std::env::var(SERVICE_REF_ENV).unwrap_or_default();
    let web = Generic::new(
        "web",
        ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/srv/www"],
    )
    .setup(pristine::LayerSpec::new("site").run([
        "sh",
        "-c",
        &format!("mkdir -p /srv/www && echo '{SITE}' > /srv/www/index.html"),
    ]))
    .wait_port(8080)
    .timeout(std::time::Duration::from_secs(20));
    let stack = Stack::new(pristine::Recipe::image(reference.as_str())).with(web);
    let fetch = |_: &pristine::testing::Ctx| -> pristine::testing::TestResult {
        let mut conn = std::net::TcpStream::connect("127.0.0.1:8080")?;
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        if !reply.starts_with("HTTP/1.") || !reply.contains(SITE) {
            return Err(format!("not the site: {reply:?}").into());
        }
        let greeting = std::env::var("GREETING");
        if greeting.as_deref() != Ok("hello") {
            return Err(format!("the image's Env did not reach the test: {greeting:?}").into());
        }
        Ok(())
    };
    let finished = pristine::testing::Harness::new()
        .services(stack)
        // Its name is this binary's test's: a container runs `--exact NAME` again.
        .test("service_over_a_pulled_image", fetch)
        .execute(&libtest_mimic::Arguments::default());
    let c = &finished.conclusion;
    println!(
        "service harness: {} passed, {} failed",
        c.num_passed, c.num_failed
    );
    assert!(!c.has_failed(), "the harness's tests failed");
}

/// The whole suite again as `nobody` (rootless), when run as root.
#[test]
fn rootless() {
    common::rerun_as_nobody("rootless");
}

/// The PostgreSQL 15 image from a Debian rootfs (four gzip layers), pulled and run.
#[test]
#[ignore = "slow: builds a PostgreSQL rootfs with mmdebstrap (minutes, as root, from Debian's mirror; cached); .ci/run runs it"]
fn postgres_image_from_a_debian_rootfs() {
    let tmp = fixture::scratch();
    let reg = Registry::start(None);
    let (layout, digest) = fixture::postgres_layout();
    let reference = format!("{}/bench/postgres:15", reg.host());
    push(&layout.dir, &reference, None);
    let store_dir = tmp.path().join("store");
    let stdout = pristine_ok(&store_dir, &["pull", &reference]);
    assert!(
        stdout.contains("4 layers, 4 downloaded") && stdout.contains(&digest),
        "{stdout}"
    );
    let stdout = pristine_ok(
        &store_dir,
        &[
            "run",
            "--image",
            &reference,
            "--",
            "/usr/lib/postgresql/15/bin/postgres",
            "--version",
        ],
    );
    assert!(stdout.starts_with("postgres (PostgreSQL) 15."), "{stdout}");
}

//! The test harness (`pristine::testing`), driven from outside: the fixture harness
//! (`tests/harness_fixture.rs`, whose tests pass, fail, panic, hang or have a service that
//! never comes up) is run the way `cargo test` runs it, the way nextest runs it (list, then
//! one process per test), and by a real `cargo nextest run` (with `--partition`); and an
//! ordinary test binary is run under `pristine wrap` as a nextest wrapper script. As root,
//! the suite runs itself again as `nobody`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn fixture() -> PathBuf {
    common::sibling("harness_fixture")
}

/// A store and scratch directory of this suite's own: `pristine-harness-suite-PID` in
/// cargo's scratch directory for integration tests (the temporary directory when that is
/// not writable, as for the rootless re-run, whose parent removes it). A static is never
/// dropped, so instead of a `TempDir` the first use removes the directories of earlier runs
/// whose process is gone (as pristine's store does with its own leftovers).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = common::scratch_base();
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("pristine-harness-suite-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = pristine::store::remove_tree(&e.path());
                }
            }
        }
        let d = base.join(format!("pristine-harness-suite-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    })
}

/// The environment every run of the fixture gets (directly or under nextest).
fn fixture_env(c: &mut Command) -> &mut Command {
    c.env("PRISTINE_FIXTURE_FAILING", "1")
        // Generous: two python3 services starting on a loaded 2-core machine took over 2 s.
        // The group that checks the timeout itself has its own (`group_timeout`).
        .env("PRISTINE_TEST_TIMEOUT", "120s")
        .env("PRISTINE_STORE", scratch().join("store"))
        .env("PRISTINE_FIXTURE_SCRATCH", scratch())
        .env_remove("PRISTINE_KEEP")
        .env("RUST_BACKTRACE", "0")
}

fn fixture_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(fixture());
    fixture_env(c.args(args));
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What each test of the fixture must give (`ok`, `FAILED` or `ignored`) when run the
/// cargo-test way without `--include-ignored`.
fn expected() -> BTreeMap<String, &'static str> {
    let mut m: BTreeMap<String, &'static str> = [
        ("pid_and_hostname_are_the_containers", "ok"),
        ("writes_stay_private", "ok"),
        ("ignored_but_passes", "ignored"),
        ("attribute_declared_runs_in_its_container", "ok"),
        ("attribute::ignored_by_attribute", "ignored"),
        ("svc::attribute::uses_the_groups_services", "ok"),
        ("isolation::same_file_and_port_0", "ok"),
        ("isolation::same_file_and_port_1", "ok"),
        ("isolation::same_file_and_port_2", "ok"),
        ("isolation::same_file_and_port_3", "ok"),
        ("svc::all_ready_before_the_body_and_logged", "ok"),
        ("svc::same_port_in_every_container", "ok"),
        ("busybox::runs_without_the_hosts_libc", "ok"),
        ("exposed::service_ready_on_the_images_port", "ok"),
        ("fail::returns_an_error", "FAILED"),
        ("fail::panics", "FAILED"),
        ("fail::hangs", "FAILED"),
        ("fail::ignored_and_fails", "ignored"),
        ("down::service_never_ready", "FAILED"),
        ("kept::fails_after_writing", "FAILED"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if is_root() {
        m.insert("user::service_runs_as_its_user".into(), "ok");
    }
    m
}

/// `test NAME ... RESULT` lines of libtest output.
fn results(stdout: &str) -> BTreeMap<String, &'static str> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, result) = rest.split_once(" ... ")?;
            let r = match result.trim() {
                "ok" => "ok",
                "FAILED" => "FAILED",
                "ignored" => "ignored",
                _ => return None,
            };
            Some((name.trim().to_string(), r))
        })
        .collect()
}

/// The whole fixture run the way `cargo test` runs it (shared by several tests).
fn cargo_test_run() -> &'static (Output, Duration) {
    static RUN: OnceLock<(Output, Duration)> = OnceLock::new();
    RUN.get_or_init(|| {
        let t = Instant::now();
        let out = fixture_cmd(&["--test-threads", "2"]).output().unwrap();
        (out, t.elapsed())
    })
}

fn section<'a>(stdout: &'a str, test: &str) -> &'a str {
    let start = stdout
        .find(&format!("---- {test} ----"))
        .unwrap_or_else(|| panic!("no failure section for {test} in:\n{stdout}"));
    let rest = &stdout[start..];
    let end = rest[5..].find("\n---- ").map(|e| {
        // Skip the test's own sub-sections (stdout, stderr, service logs, kept layer).
        let mut at = 5 + e;
        while let Some(n) = rest[at + 1..].find("\n---- ") {
            let next = &rest[at + 1 + n + 1..];
            if next.starts_with("---- stdout")
                || next.starts_with("---- stderr")
                || next.starts_with("---- service")
                || next.starts_with("---- kept")
            {
                at = at + 1 + n;
                continue;
            }
            return at + 1 + n;
        }
        rest.find("\nfailures:\n").unwrap_or(rest.len())
    });
    &rest[..end.unwrap_or(rest.len())]
}

#[test]
fn list_is_terse_complete_and_builds_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = fixture_cmd(&["--list", "--format", "terse"])
        .env("PRISTINE_STORE", scratch.path().join("store"))
        .env("PRISTINE_FIXTURE_SCRATCH", scratch.path())
        .output()
        .unwrap();
    let listing = t.elapsed();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let names: BTreeSet<String> = stdout
        .lines()
        .map(|l| {
            l.strip_suffix(": test")
                .filter(|n| !n.is_empty() && !n.contains(' '))
                .unwrap_or_else(|| panic!("not a terse list line: {l:?}"))
                .to_string()
        })
        .collect();
    assert_eq!(names, expected().keys().cloned().collect());
    let out = fixture_cmd(&["--list", "--format", "terse", "--ignored"])
        .env("PRISTINE_STORE", scratch.path().join("store"))
        .env("PRISTINE_FIXTURE_SCRATCH", scratch.path())
        .output()
        .unwrap();
    assert_eq!(
        text(&out).0,
        "ignored_but_passes: test\nattribute::ignored_by_attribute: test\n\
         fail::ignored_and_fails: test\n"
    );
    // No store, no image: listing created nothing at all.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    eprintln!("listing took {listing:?}");
}

#[test]
fn cargo_test_style_run_gives_each_test_its_result() {
    let (out, took) = cargo_test_run();
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(101), "{stdout}\n{stderr}");
    assert_eq!(results(&stdout), expected(), "{stdout}\n{stderr}");
    assert!(stderr.contains("pristine: "), "timing summary: {stderr}");
    eprintln!("cargo-test-style run of the fixture: {took:?}\n{stderr}");
}

#[test]
fn failures_show_output_logs_and_timeouts() {
    let (out, _) = cargo_test_run();
    let stdout = text(out).0;
    let s = section(&stdout, "fail::returns_an_error");
    for want in [
        "failed in container",
        "with exit code 1",
        "---- stdout ----\nto stdout: before the error",
        "---- stderr ----\nto stderr: before the error\nerror: deliberate failure",
        "PRISTINE_KEEP=failed",
    ] {
        assert!(s.contains(want), "{want:?} not in:\n{s}");
    }
    let s = section(&stdout, "fail::panics");
    assert!(
        s.contains("deliberate panic") && s.contains("exit code 101"),
        "{s}"
    );
    let s = section(&stdout, "fail::hangs");
    assert!(
        s.contains("timed out after 2s and was killed with its container")
            && s.contains("the limit is its group's own"),
        "{s}"
    );
    assert!(s.contains("about to hang"), "{s}");
    let s = section(&stdout, "down::service_never_ready");
    for want in [
        "service \"never\" was not ready after 300ms",
        "/never.log) ----\ncannot bind: address in use",
    ] {
        assert!(s.contains(want), "{want:?} not in:\n{s}");
    }
}

#[test]
fn exact_filters_skip_and_ignored_select_like_libtest() {
    let run = |args: &[&str]| {
        let out = fixture_cmd(args).output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), results(&stdout), stdout, stderr)
    };
    let (code, r, ..) = run(&["--exact", "writes_stay_private"]);
    assert_eq!((code, r.len()), (Some(0), 1));
    // Unknown exact name: zero tests, success (libtest's behaviour).
    let (code, r, stdout, _) = run(&["--exact", "writes_stay"]);
    assert_eq!((code, r.len()), (Some(0), 0), "{stdout}");
    assert!(stdout.contains("running 0 tests"), "{stdout}");
    let (code, r, ..) = run(&["isolation::"]);
    assert_eq!(code, Some(0));
    assert_eq!(r.keys().filter(|k| k.starts_with("isolation::")).count(), 4);
    assert_eq!(r.len(), 4);
    let (code, r, ..) = run(&[
        "fail::",
        "--skip",
        "hangs",
        "--skip",
        "panics",
        "--include-ignored",
    ]);
    assert_eq!(code, Some(101));
    assert_eq!(
        r,
        [
            ("fail::returns_an_error".to_string(), "FAILED"),
            ("fail::ignored_and_fails".to_string(), "FAILED"),
        ]
        .into_iter()
        .collect()
    );
    let (code, r, ..) = run(&["--ignored", "ignored_but"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        r,
        [("ignored_but_passes".to_string(), "ok")]
            .into_iter()
            .collect()
    );
}

/// What nextest does: list (normal and `--ignored`), then one process per test with
/// `--exact NAME --nocapture`, here two at a time.
#[test]
fn nextest_style_one_process_per_test_agrees_with_cargo_test() {
    let list = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--list", "--format", "terse"];
        args.extend(extra);
        let out = fixture_cmd(&args).output().unwrap();
        text(&out)
            .0
            .lines()
            .map(|l| l.strip_suffix(": test").unwrap().to_string())
            .collect()
    };
    let ignored: BTreeSet<String> = list(&["--ignored"]).into_iter().collect();
    let all = list(&[]);
    let queue = std::sync::Mutex::new(all.clone());
    let got = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(name) = queue.lock().unwrap().pop() else {
                    break;
                };
                let mut args = vec!["--exact", name.as_str(), "--nocapture"];
                if ignored.contains(&name) {
                    args.push("--ignored");
                }
                let out = fixture_cmd(&args).output().unwrap();
                let (stdout, stderr) = text(&out);
                let r = results(&stdout);
                assert_eq!(
                    r.len(),
                    1,
                    "{name}: exactly one test runs\n{stdout}\n{stderr}"
                );
                let verdict = if out.status.success() { "ok" } else { "FAILED" };
                assert_eq!(r[&name], verdict, "{name}\n{stdout}");
                got.lock().unwrap().insert(name, verdict);
            });
        }
    });
    let got = got.into_inner().unwrap();
    let mut want = expected();
    want.insert("ignored_but_passes".into(), "ok");
    want.insert("attribute::ignored_by_attribute".into(), "ok");
    want.insert("fail::ignored_and_fails".into(), "FAILED");
    assert_eq!(got, want);
}

#[test]
fn kept_upper_layer_of_a_failed_test_is_reported_with_its_diff() {
    let store = tempfile::tempdir().unwrap();
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fixture_cmd(&["--exact", "kept::fails_after_writing"])
        .env("PRISTINE_KEEP", "failed")
        .env("PRISTINE_STORE", store.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(101), "{stdout}\n{stderr}");
    let s = section(&stdout, "kept::fails_after_writing");
    let kept = s
        .lines()
        .find_map(|l| {
            l.strip_prefix("---- kept upper layer: ")?
                .strip_suffix(" ----")
        })
        .unwrap_or_else(|| panic!("no kept layer in:\n{s}"));
    assert!(kept.starts_with(store.path().to_str().unwrap()), "{kept}");
    assert_eq!(
        std::fs::read_to_string(Path::new(kept).join("data/new/dir/file.txt")).unwrap(),
        "new\n"
    );
    let store_path = store.path().display().to_string();
    insta::with_settings!({
        // Found at run time: an archive runs where its sources were remapped to.
        snapshot_path => common::manifest_dir().join("snapshots"),
        prepend_module_to_snapshot => false,
        filters => vec![
            (store_path.as_str(), "[STORE]"),
            // Container ids: 32 random hex digits.
            (r"\[STORE\]/kept/[0-9a-f]{32}", "[STORE]/kept/[ID]"),
            (r"container [0-9a-f]{32}", "container [ID]"),
            (r"after [0-9.]+ ms", "after [DURATION]"),
        ],
    }, {
        insta::assert_snapshot!("harness_kept_failure_report", s.trim_end());
    });
}

/// A real `cargo nextest run`, twice (`--partition hash:1/2` and `hash:2/2`), on the
/// already-built fixture: nextest is pointed at the binaries with `--binaries-metadata` and
/// `--cargo-metadata`, so it builds nothing and takes no cargo lock.
#[test]
fn cargo_nextest_partitions_agree_with_cargo_test() {
    let nextest = NextestEnv::new();
    let mut union = BTreeMap::new();
    for part in ["hash:1/2", "hash:2/2"] {
        let (code, results, output) = nextest.run(
            &["--partition", part, "-E", "binary(harness_fixture)"],
            &[],
            "",
        );
        assert!(
            code != Some(0) || results.values().all(|v| *v == "ok"),
            "{output}"
        );
        for (k, v) in results {
            assert!(
                union.insert(k, v).is_none(),
                "a test ran in both partitions"
            );
        }
    }
    let want: BTreeMap<String, &str> = expected()
        .into_iter()
        .filter(|(_, v)| *v != "ignored")
        .collect();
    assert_eq!(union, want);
}

/// `pristine wrap` as a nextest wrapper script: every test of an ordinary `#[test]` binary
/// runs in a container of its own, with no change to the tests.
#[test]
fn nextest_wrapper_runs_each_plain_test_in_its_own_container() {
    let nextest = NextestEnv::new();
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().display().to_string();
    let mut command = vec![pristine_cli().display().to_string(), "wrap".to_string()];
    command.extend(["--bind".into(), format!("{out_dir}:{out_dir}"), "--".into()]);
    let config = format!(
        "experimental = [\"wrapper-scripts\"]\n\n[scripts.wrapper.pristine]\ncommand = {command:?}\n\n[[profile.default.scripts]]\nfilter = \"binary(harness_plain)\"\nrun-wrapper = \"pristine\"\n"
    );
    let (code, results, output) = nextest.run(
        &["-E", "binary(harness_plain)"],
        &[("PRISTINE_PLAIN_OUT", out_dir.as_str())],
        &config,
    );
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(results.len(), 3, "{output}");
    let mut hosts = BTreeSet::new();
    for test in ["first", "second", "third"] {
        let line = std::fs::read_to_string(out.path().join(test))
            .unwrap_or_else(|e| panic!("{test} recorded nothing ({e}):\n{output}"));
        let f: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!(f[0], test);
        assert!(f[1].starts_with("pristine-"), "hostname {}", f[1]);
        assert_eq!(f[2], "2", "the test is PID 1's only child");
        // PID 1 is pristine's: forked from `pristine wrap` (a single-threaded caller), or
        // its exec'd init.
        assert!(
            f[3].contains("pristine wrap") || f[3].contains("__pristine"),
            "PID 1 is pristine's init: {}",
            f[3]
        );
        assert_eq!(Path::new(f[4]), common::manifest_dir(), "cwd preserved");
        hosts.insert(f[1].to_string());
    }
    assert_eq!(hosts.len(), 3, "one container per test");
    assert!(!Path::new("/etc/pristine-plain-marker").exists());
}

/// The `pristine` CLI (beside the test binary when copied for the rootless run).
fn pristine_cli() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    match me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("pristine"))
    {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(env!("CARGO_BIN_EXE_pristine")),
    }
}

/// The id cargo gives the package whose manifest is in `manifest`, read from `cargo
/// metadata`'s output (its form depends on the directory's name: `path+file:///x/pristine#0.1.0`
/// when the directory is named after the package, `…/x#pristine@0.1.0` otherwise).
fn package_id(metadata: &[u8], manifest: &Path) -> String {
    let meta: serde_json::Value = serde_json::from_slice(metadata).unwrap();
    let wanted = manifest.join("Cargo.toml");
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(wanted.as_path()))
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("cargo metadata lists no package at {}", wanted.display()))
        .to_string()
}

/// The tests that run the real cargo-nextest, which `nobody` (in the rootless re-run) has
/// no toolchain for.
const NEEDS_CARGO: [&str; 2] = [
    "cargo_nextest_partitions_agree_with_cargo_test",
    "nextest_wrapper_runs_each_plain_test_in_its_own_container",
];

struct NextestEnv {
    dir: tempfile::TempDir,
}

impl NextestEnv {
    /// Needs cargo and cargo-nextest (as any user; the rootless re-run, whose `nobody`
    /// has no toolchain, skips the tests that use this by name).
    fn new() -> Self {
        if Command::new("cargo")
            .args(["nextest", "--version"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            panic!("cargo-nextest is needed: cargo install cargo-nextest");
        }
        let dir = tempfile::tempdir().unwrap();
        let manifest = common::manifest_dir();
        // `--no-deps`: the workspace's own packages are all nextest needs here, and it
        // neither resolves nor downloads anything (a fresh cargo cache holds only the
        // crates a Linux build fetched, not every one Cargo.lock names).
        let meta = Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(&manifest)
            .output()
            .unwrap();
        assert!(
            meta.status.success(),
            "{}",
            String::from_utf8_lossy(&meta.stderr)
        );
        std::fs::write(dir.path().join("cargo-metadata.json"), &meta.stdout).unwrap();
        let pkg = package_id(&meta.stdout, &manifest);
        let fixture = fixture();
        let target = fixture.ancestors().nth(3).unwrap().to_path_buf();
        let profile_dir = fixture
            .ancestors()
            .nth(2)
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let bin = |name: &str, path: PathBuf| {
            serde_json::json!({
                "binary-id": format!("pristine::{name}"),
                "binary-name": name,
                "package-id": pkg,
                "kind": "test",
                "binary-path": path,
                "build-platform": "target",
            })
        };
        let triple =
            serde_json::json!({"triple": "x86_64-unknown-linux-gnu", "target-features": "unknown"});
        let binaries = serde_json::json!({
            "rust-build-meta": {
                "target-directory": target,
                "build-directory": target,
                "base-output-directories": [profile_dir],
                "non-test-binaries": {},
                "build-script-out-dirs": {},
                "build-script-info": {},
                "linked-paths": [],
                "platforms": {
                    "host": {"platform": triple, "libdir": {"status": "unavailable", "reason": "old-summary"}},
                    "targets": []
                },
                "target-platforms": [triple],
                "target-platform": null
            },
            "rust-binaries": {
                "pristine::harness_fixture": bin("harness_fixture", fixture.clone()),
                "pristine::harness_plain": bin("harness_plain", common::sibling("harness_plain")),
            }
        });
        std::fs::write(
            dir.path().join("binaries-metadata.json"),
            binaries.to_string(),
        )
        .unwrap();
        NextestEnv { dir }
    }

    /// Runs `cargo nextest run ARGS` with `config` as its configuration file; returns the
    /// exit code, each test's verdict and the whole output.
    fn run(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        config: &str,
    ) -> (Option<i32>, BTreeMap<String, &'static str>, String) {
        let d = self.dir.path();
        let config_file = d.join(format!(
            "nextest-{}.toml",
            std::process::id() as u64 * 1000 + config.len() as u64
        ));
        std::fs::write(&config_file, config).unwrap();
        let mut c = Command::new("cargo");
        c.args([
            "nextest",
            "run",
            "--color",
            "never",
            "--no-fail-fast",
            "--hide-progress-bar",
        ])
        .arg("--binaries-metadata")
        .arg(d.join("binaries-metadata.json"))
        .arg("--cargo-metadata")
        .arg(d.join("cargo-metadata.json"))
        .arg("--config-file")
        .arg(&config_file)
        .args([
            "--status-level",
            "all",
            "--final-status-level",
            "none",
            "--test-threads",
            "2",
        ])
        .args(args)
        .current_dir(common::manifest_dir());
        fixture_env(&mut c);
        // When this suite itself runs under nextest, its variables (the profile, the run
        // id) are not for the nextest started here.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NEXTEST") {
                c.env_remove(k);
            }
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let (stdout, stderr) = text(&out);
        let output = format!("{stdout}\n{stderr}");
        let mut results = BTreeMap::new();
        for line in output.lines() {
            let l = line.trim_start();
            let verdict = if l.starts_with("PASS ") {
                "ok"
            } else if l.starts_with("FAIL ") || l.starts_with("TIMEOUT ") || l.starts_with("SIG") {
                "FAILED"
            } else {
                continue;
            };
            let Some(at) = l.find("pristine::harness_") else {
                continue;
            };
            let name = l[at..].split_whitespace().nth(1).unwrap_or("").to_string();
            if !name.is_empty() {
                results.insert(name, verdict);
            }
        }
        (out.status.code(), results, output)
    }
}

/// Runs this suite again as `nobody` (rootless containers: user namespace, `userxattr`).
#[test]
fn rootless_mode_passes_too() {
    common::rerun_as_nobody_skipping(
        &["rootless_mode_passes_too", NEEDS_CARGO[0], NEEDS_CARGO[1]],
        &[fixture(), common::sibling("harness_plain")],
    );
}

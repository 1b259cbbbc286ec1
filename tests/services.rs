//! Ready-made services (`pristine::services`), driven from outside through their fixture
//! (`tests/services_fixture.rs`): seeded PostgreSQL and Redis, generic services, bad seeds
//! and timeouts, cached layers. As root, the suite runs itself again as `nobody`.

use std::path::PathBuf;
use std::process::{Command, Output};

use pristine::services::{Postgres, Redis, ServicesError, Stack};

mod common;

/// The `services_fixture` test binary beside this one.
fn fixture() -> PathBuf {
    common::sibling("services_fixture")
}

fn run_fixture(args: &[&str], failing: bool) -> (Output, String) {
    let mut cmd = Command::new(fixture());
    cmd.args(args).args(["--test-threads", "2"]);
    if failing {
        cmd.env("PRISTINE_SERVICES_FAILING", "1");
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn data(name: &str) -> PathBuf {
    common::manifest_dir()
        .join("tests/data/services")
        .join(name)
}

#[test]
fn seeded_services_start_in_every_test() {
    let (out, text) = run_fixture(&[], false);
    assert!(out.status.success(), "{text}");
    for name in [
        "pg_sql::sees_the_seed_a",
        "pg_sql::sees_the_seed_b",
        "pg_migrations::sees_the_migrations_in_order",
        "pg_on_named_image::sees_the_seed",
        "redis::sees_the_seed_a",
        "redis::sees_the_seed_b",
        "redis_rdb::sees_the_rdb",
        "generic::waits_for_a_port_and_a_log_line",
    ] {
        let passed = text.lines().any(|l| {
            l.strip_prefix("test ")
                .and_then(|l| l.strip_prefix(name))
                .is_some_and(|rest| rest.starts_with(' ') && rest.ends_with("... ok"))
        });
        assert!(passed, "{name}:\n{text}");
    }
}

#[test]
fn bad_seeds_and_timeouts_say_what_failed() {
    let (out, text) = run_fixture(&[], true);
    assert!(!out.status.success(), "{text}");
    let bad_sql = data("pg/bad.sql");
    let bad_redis = data("redis/bad.redis");
    for want in [
        format!(
            "service \"badpg\": seed {} line 3: ERROR:",
            bad_sql.display()
        ),
        "relation \"nowhere\" does not exist".to_string(),
        format!("service \"badredis\": seed {} line 2:", bad_redis.display()),
        "unknown command 'NOSUCHCOMMAND'".to_string(),
        "service \"silent\" was not ready after 300ms (waiting for \"never printed\" in its log)"
            .to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(text.contains(" 3 failed;"), "{text}");
}

/// After the fixture has run, building its stacks again builds nothing.
#[test]
fn layers_are_cached() {
    let (out, text) = run_fixture(&["pg_sql::sees_the_seed_a", "--exact"], false);
    assert!(out.status.success(), "{text}");
    let store = pristine::Store::open_default().unwrap();
    let stack = Stack::host().with(Postgres::new().seed_sql(data("pg/seed.sql")));
    let built = stack.build_report(&store).unwrap();
    assert_eq!(built.layers.len(), 2);
    assert!(built.layers.iter().all(|l| l.cached), "{:?}", built.layers);
}

#[test]
fn missing_programs_and_bad_config_say_what_to_do() {
    let none = Stack::host().with(Postgres::new().bin_dir("/nonexistent/bin"));
    match none.recipe() {
        Err(e @ ServicesError::NotInstalled { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("service \"postgres\""), "{msg}");
            assert!(msg.contains("apt-get install postgresql-15"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let empty = tempfile::tempdir().unwrap();
    let no_sql = Stack::host().with(Postgres::new().migrations(empty.path()));
    assert!(matches!(
        no_sql.recipe(),
        Err(ServicesError::BadConfig { .. })
    ));
    let missing = Stack::host().with(Redis::new().seed_commands("/nonexistent/seed.redis"));
    match missing.recipe() {
        Err(e @ (ServicesError::SeedFile { .. } | ServicesError::NotInstalled { .. })) => {
            assert!(e.to_string().contains("service \"redis\""), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let twice = Stack::host().with(Redis::new()).with(Redis::new());
    assert!(matches!(
        twice.recipe(),
        Err(ServicesError::BadConfig { .. })
    ));
}

#[test]
fn rootless_mode_passes_too() {
    common::rerun_as_nobody_with("rootless_mode_passes_too", &[fixture()]);
}

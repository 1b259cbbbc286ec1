//! The PostgreSQL demo's tests and summary, shared by `examples/postgres.rs` (60 tests),
//! `tests/postgres_demo.rs` (10, under `cargo test`) and `benches/postgres.rs`.
//!
//! PostgreSQL is `pristine::services::Postgres`: initdb and `seed.sql` run once as build
//! steps (cached layers); every test's container starts its own server on a copy-on-write
//! copy. Each test checks it sees exactly the seed, writes (insert, update, delete, drop,
//! truncate) and checks its writes took: a write that leaked would fail another test.
#![allow(dead_code)] // each of the three uses part of it

use std::error::Error;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libtest_mimic::Arguments;
use postgres::{Client, NoTls, SimpleQueryMessage};
use pristine::services::{Postgres, ReadyMade, Stack};
use pristine::testing::{Finished, Harness, TestResult, TestTiming, INSIDE_ENV};
use pristine::{Image, Store};

/// The fingerprint query: `TABLE ROWS CHECKSUM` per table.
pub const FINGERPRINT_SQL: &str = include_str!("fingerprint.sql");
const SEED_SQL: &str = include_str!("seed.sql");

/// How the demo is run: tests per kind, whether a machine that cannot run it skips, and
/// trials that run on the host beside the demo's tests (`tests/postgres_demo.rs`'s
/// rootless re-run).
pub struct Config {
    pub per_kind: usize,
    pub skip_if_unable: bool,
    pub host_trials: Vec<libtest_mimic::Trial>,
}

/// What each kind of test writes after checking the seed.
pub const KINDS: &[(&str, &str)] = &[
    ("inserts_accounts", "INSERT INTO accounts SELECT 1000000 + i, 'mine ' || i, 'mine' || i || '@test', 0, now() FROM generate_series(1, 500) AS i"),
    ("updates_orders", "UPDATE orders SET total_cents = 0, status = 'void' WHERE id <= 2000"),
    ("deletes_orders", "DELETE FROM orders WHERE account_id <= 500"),
    ("drops_events", "DROP TABLE events"),
    ("truncates_everything", "TRUNCATE accounts, orders, events"),
];

/// The service (seeds are added where the image is built).
pub fn postgres() -> Postgres {
    Postgres::new()
}

/// The stack: the host's PostgreSQL seeded with `seed.sql`, then its fingerprint recorded
/// in a table. The seed files are compiled in and written to `dir` (the demo runs from any
/// directory); the layers' keys cover their content, not where they are.
pub fn stack(dir: &std::path::Path) -> std::io::Result<Stack> {
    let record = format!("CREATE TABLE seed_fingerprint AS\n{FINGERPRINT_SQL}");
    std::fs::write(dir.join("seed.sql"), SEED_SQL)?;
    std::fs::write(dir.join("fingerprint.sql"), record)?;
    let pg = postgres()
        .seed_sql(dir.join("seed.sql"))
        .seed_sql(dir.join("fingerprint.sql"));
    Ok(Stack::host().with(pg))
}

/// `TABLE ROWS CHECKSUM` lines of `query`'s rows.
pub fn rows(db: &mut Client, query: &str) -> Result<String, postgres::Error> {
    let mut out = String::new();
    for msg in db.simple_query(query)? {
        if let SimpleQueryMessage::Row(row) = msg {
            let cols: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("")).collect();
            out.push_str(&cols.join(" "));
            out.push('\n');
        }
    }
    Ok(out)
}

/// The database's fingerprint now.
pub fn fingerprint(db: &mut Client) -> Result<String, postgres::Error> {
    rows(db, FINGERPRINT_SQL)
}

/// Checks that `db` is exactly the seed (`expected`), writes, checks the writes took.
/// Also the peers' test body in the bench.
pub fn body(db: &mut Client, expected: &str, name: &str, write_sql: &str) -> TestResult {
    let seen = fingerprint(db)?;
    if seen.trim() != expected.trim() {
        return Err(format!(
            "not the seed: another test's writes leaked in?\nexpected:\n{expected}seen:\n{seen}"
        )
        .into());
    }
    db.batch_execute(write_sql)?;
    // Small writes every test makes: in a shared database they would collide.
    db.execute(
        "INSERT INTO accounts VALUES (2000000, $1, 'marker@test', 0, now())",
        &[&name],
    )?;
    db.execute("UPDATE accounts SET balance_cents = -1 WHERE id = 1", &[])?;
    db.execute("DELETE FROM orders WHERE id = 1", &[])?;
    let markers: Vec<String> = db
        .query("SELECT name FROM accounts WHERE id >= 2000000", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if markers != [name] {
        return Err(format!("expected only this test's marker row, found {markers:?}").into());
    }
    // Only a dropped table may fail the fingerprint; any other error (a lost connection)
    // fails the test.
    let after = match fingerprint(db) {
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
            "(a table was dropped)".to_string()
        }
        other => other?,
    };
    if after.trim() == expected.trim() {
        return Err(format!("{write_sql:?} changed nothing").into());
    }
    Ok(())
}

/// Whether the seeded layers came from the cache, and how long finding or building took.
pub static BUILT: OnceLock<(bool, Duration)> = OnceLock::new();

/// Connects to the test's own server and reads the seed's recorded fingerprint.
pub type Connect = fn() -> Result<(Client, String), Box<dyn Error + Send + Sync>>;

fn connect() -> Result<(Client, String), Box<dyn Error + Send + Sync>> {
    let mut db = Client::connect(&postgres().conn_str(), NoTls)?;
    let expected = rows(&mut db, "TABLE seed_fingerprint")?;
    Ok((db, expected))
}

/// Builds the stack's layers, or finds them cached (on the first test that runs).
fn build() -> Result<Image, Box<dyn Error>> {
    println!("[layers] looking for the seeded PostgreSQL layers (built once, in seconds)...");
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let built = stack(dir.path())?.build_report(&Store::open_default()?)?;
    let _ = BUILT.set((built.layers.iter().all(|l| l.cached), t.elapsed()));
    Ok(built.image)
}

/// What stops the demo before any container starts (no PostgreSQL, no `postgres` user).
fn preflight() -> Result<(), String> {
    let checked = Stack::host().with(postgres()).recipe();
    checked.map(drop).map_err(|e| e.to_string())
}

/// The demo on `services::Postgres`.
pub fn main(cfg: Config) -> ! {
    let harness = Harness::new().service(postgres().service()).image(build);
    run(cfg, harness, connect, preflight)
}

/// Adds the tests to `harness` (image and service set), runs them with the libtest command
/// line, prints the summary and exits.
pub fn run(
    cfg: Config,
    mut harness: Harness,
    connect: Connect,
    ok: fn() -> Result<(), String>,
) -> ! {
    for (kind, sql) in KINDS {
        for i in 0..cfg.per_kind {
            harness = harness.test(format!("{kind}_{i:02}"), move |ctx| {
                let (mut db, expected) = connect()?;
                body(&mut db, &expected, ctx.name(), sql)
            });
        }
    }
    let args = Arguments::from_args();
    // Listing prints the list only (nextest parses it); inside a container, only the test.
    let chatty = std::env::var_os(INSIDE_ENV).is_none() && !args.list;
    if chatty {
        if let Err(why) = ok() {
            if cfg.skip_if_unable {
                println!("postgres demo skipped: {why}");
                std::process::exit(0);
            }
            eprintln!("error: {why}");
            std::process::exit(1);
        }
        println!("pristine PostgreSQL demo: {} tests in parallel, each in its own throwaway container with its own\nPostgreSQL on a private copy-on-write copy of one seeded database; each checks the seed, then writes.", KINDS.len() * cfg.per_kind);
    }
    let started = Instant::now();
    let finished = harness.execute_with(&args, cfg.host_trials);
    if chatty {
        summary(&finished, started.elapsed());
    }
    finished.conclusion.exit()
}

/// Median, 90th percentile and maximum, in milliseconds.
pub fn stats_ms(mut v: Vec<Duration>) -> Option<(f64, f64, f64)> {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (!v.is_empty()).then(|| (at(0.5), at(0.9), at(1.0)))
}

fn summary(finished: &Finished, wall: Duration) {
    let (c, t) = (&finished.conclusion, &finished.timings);
    println!("\nsummary");
    if let Some((cached, took)) = BUILT.get() {
        let how = if *cached {
            "cached, found in"
        } else {
            "built now (cached from now on) in"
        };
        println!(
            "  seeded layers       {how} {:.1} ms",
            took.as_secs_f64() * 1e3
        );
    }
    println!(
        "  tests               {} passed, {} failed in {:.2} s",
        c.num_passed,
        c.num_failed,
        wall.as_secs_f64()
    );
    println!("  per test (median / p90 / max):");
    let line = |label: &str, v: Vec<Duration>| {
        if let Some((p50, p90, max)) = stats_ms(v) {
            println!("    {label:<40} {p50:>6.1} / {p90:>6.1} / {max:>6.1} ms");
        }
    };
    let pg_start = |t: &TestTiming| Some(t.ready?.saturating_sub(t.container_up?));
    line(
        "container up (test binary running)",
        t.iter().filter_map(|t| t.container_up).collect(),
    );
    line(
        "PostgreSQL start (up -> ready)",
        t.iter().filter_map(pg_start).collect(),
    );
    line(
        "start latency (container + PostgreSQL)",
        t.iter().filter_map(|t| t.ready).collect(),
    );
    line(
        "test body (checks + writes)",
        t.iter().filter_map(|t| t.body).collect(),
    );
    line(
        "whole test incl. teardown",
        t.iter().map(|t| t.total).collect(),
    );
    if c.num_failed == 0 {
        println!(
            "  every test wrote to its own copy and every one saw exactly the seed: isolated."
        );
    }
}

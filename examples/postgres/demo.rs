//! The PostgreSQL demo's tests and output, shared by `examples/postgres.rs` (60 tests, the
//! README's first command) and `tests/postgres_demo.rs` (the same code path under
//! `cargo test`, with fewer tests).
//!
//! Every test runs in its own container over the seeded layer (see `layer.rs`), where the
//! harness first starts PostgreSQL as a service (as the `postgres` user, on the container's
//! private 127.0.0.1:5432) and waits until it accepts queries. The test body then checks
//! that its database is exactly the seed, writes to it (insert, update, delete, drop,
//! truncate) and checks that its writes took. All tests run in parallel on the same seed: if
//! any write leaked into another test's database, that test's first check would fail.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libtest_mimic::Arguments;
use postgres::{Client, NoTls, SimpleQueryMessage};
use pristine::testing::{Harness, Service, TestResult, TestTiming, INSIDE_ENV};

use crate::layer::{self, Layer};

/// How the demo is run.
pub struct Config {
    /// Tests of each kind (five kinds).
    pub per_kind: usize,
    /// Seed scale (1 = about 25 MB of tables).
    pub scale: u32,
    /// Whether a machine that cannot run the demo (e.g. not root) fails (the example) or
    /// skips with a note (the `cargo test` target, which must pass as any user).
    pub skip_if_unable: bool,
}

/// The layer, once a test has needed it (never for `--list`).
static LAYER: OnceLock<Layer> = OnceLock::new();

/// What each kind of test does to its own copy of the database after checking the seed.
pub const KINDS: &[(&str, &str)] = &[
    (
        "inserts_accounts",
        "INSERT INTO accounts SELECT 1000000 + i, 'mine ' || i, 'mine' || i || '@test', 0, now() \
         FROM generate_series(1, 500) AS i",
    ),
    (
        "updates_orders",
        "UPDATE orders SET total_cents = 0, status = 'void' WHERE id <= 2000",
    ),
    (
        "deletes_orders",
        "DELETE FROM orders WHERE account_id <= 500",
    ),
    ("drops_events", "DROP TABLE events"),
    ("truncates_everything", "TRUNCATE accounts, orders, events"),
];

/// Connects to the test's own PostgreSQL (the same address in every container).
fn connect() -> Result<Client, postgres::Error> {
    Client::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=10",
        NoTls,
    )
}

/// `TABLE ROWS CHECKSUM` lines, as `build.sh` recorded them with psql.
pub fn fingerprint(db: &mut Client) -> Result<String, postgres::Error> {
    let mut out = String::new();
    for msg in db.simple_query(layer::FINGERPRINT_SQL)? {
        if let SimpleQueryMessage::Row(row) = msg {
            let cols: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("")).collect();
            out.push_str(&cols.join(" "));
            out.push('\n');
        }
    }
    Ok(out)
}

/// The body of every test (inside its container, PostgreSQL ready).
fn check_seed_then_write(name: &str, write_sql: &str) -> TestResult {
    let expected = layer::recorded_fingerprint()?;
    body(&mut connect()?, &expected, name, write_sql)
}

/// What every test does to its database `db` (its own): check that it is exactly the seed
/// (`expected` fingerprint), write, check the writes took. Also the peers' test body in
/// `benches/postgres.rs`.
pub fn body(db: &mut Client, expected: &str, name: &str, write_sql: &str) -> TestResult {
    let db = &mut *db;
    let seen = fingerprint(db)?;
    if seen.trim() != expected.trim() {
        return Err(format!(
            "this test's database is not the seed: another test's writes leaked in?\n\
             expected:\n{expected}seen:\n{seen}"
        )
        .into());
    }
    // This kind's big write...
    db.batch_execute(write_sql)?;
    // ...and small ones that every test makes: in a shared database these would collide
    // (the same primary key in every test) or show up in the other tests' checks.
    db.execute(
        "INSERT INTO accounts VALUES (2000000, $1, 'marker@test', 0, now())",
        &[&name],
    )?;
    db.execute("UPDATE accounts SET balance_cents = -1 WHERE id = 1", &[])?;
    db.execute("DELETE FROM orders WHERE id = 1", &[])?;
    // The writes took, in this container's database only.
    let markers: Vec<String> = db
        .query("SELECT name FROM accounts WHERE id >= 2000000", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if markers != [name] {
        return Err(format!("expected only this test's marker row, found {markers:?}").into());
    }
    let after = match fingerprint(db) {
        Ok(f) => f,
        // Without the events table the fingerprint query fails: that is the change.
        Err(e) if e.as_db_error().is_some() => String::from("(events dropped)"),
        Err(e) => return Err(e.into()),
    };
    if after.trim() == expected.trim() {
        return Err(format!("{write_sql:?} changed nothing").into());
    }
    Ok(())
}

/// Runs the demo with the libtest command line and exits.
pub fn main(cfg: Config) -> ! {
    // First: in a container this process may be asked to serve as its init, or to run one
    // test (both inside `Harness::new` / `execute`).
    let mut harness = Harness::new()
        .image(move || -> Result<pristine::Image, String> {
            let layer = make_layer(cfg.scale)?;
            Ok(LAYER.get_or_init(|| layer).image.clone())
        })
        .service(
            Service::new(
                "postgres",
                [
                    format!("{}/postgres", layer::PG_BIN),
                    "-D".into(),
                    layer::DATA_DIR.into(),
                ],
            )
            .user(layer::PG_USER)
            // Accepting TCP connections is not enough (PostgreSQL answers "the database
            // system is starting up" for a while): wait for the line it logs once it
            // accepts queries, polled every millisecond.
            .ready_log(layer::READY_LINE)
            .start_timeout(Duration::from_secs(30)),
        );
    for (kind, sql) in KINDS {
        for i in 0..cfg.per_kind {
            harness = harness.test(format!("{kind}_{i:02}"), move |ctx| {
                check_seed_then_write(ctx.name(), sql)
            });
        }
    }

    let args = Arguments::from_args();
    let inside = std::env::var_os(INSIDE_ENV).is_some();
    // Listing must print nothing but the list (nextest parses it) and touch nothing.
    let chatty = !inside && !args.list;
    if chatty {
        if let Err(why) = layer::preflight() {
            if cfg.skip_if_unable {
                println!("postgres demo skipped: {why}");
                std::process::exit(0);
            }
            eprintln!("error: {why}");
            std::process::exit(1);
        }
        let n = KINDS.len() * cfg.per_kind;
        println!(
            "pristine PostgreSQL demo: {n} tests in parallel, each in its own throwaway \
             copy-on-write container\nwith its own PostgreSQL 15 on a private copy of the same \
             seeded database. Every test\nchecks it sees exactly the seed, then writes to it."
        );
    }
    let started = Instant::now();
    let finished = harness.execute(&args);
    if chatty {
        summary(&finished, started.elapsed(), &args);
    }
    finished.conclusion.exit()
}

/// Builds or finds the layer (once per process, on the first test that runs), saying which.
fn make_layer(scale: u32) -> Result<Layer, String> {
    println!(
        "[layer] looking for the seeded PostgreSQL layer in pristine's store (building it \
         takes a few seconds, once)..."
    );
    let _ = std::io::stdout().flush();
    let layer = layer::build(scale)?;
    if layer.cached {
        println!(
            "[layer] cached: found in {:.1} ms, no build needed ({})",
            layer.took.as_secs_f64() * 1e3,
            layer.dir.display()
        );
    } else {
        println!(
            "[layer] built in {:.1} s: initdb, {} database seeded, stopped cleanly ({})",
            layer.took.as_secs_f64(),
            layer.db_size,
            layer.dir.display()
        );
    }
    Ok(layer)
}

fn summary(finished: &pristine::testing::Finished, wall: Duration, args: &Arguments) {
    let c = &finished.conclusion;
    let t = &finished.timings;
    if t.is_empty() {
        return;
    }
    println!("\nsummary");
    if let Some(l) = LAYER.get() {
        let how = if l.cached {
            format!("cached (lookup {:.1} ms)", l.took.as_secs_f64() * 1e3)
        } else {
            format!(
                "built now in {:.1} s (cached from now on)",
                l.took.as_secs_f64()
            )
        };
        println!("  seeded layer        {how}, {} database", l.db_size);
    }
    let threads = args
        .test_threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    println!(
        "  tests               {} passed, {} failed in {:.2} s ({} at a time)",
        c.num_passed,
        c.num_failed,
        wall.as_secs_f64(),
        threads
    );
    println!("  per test (median / p90 / max):");
    let line = |label: &str, v: Vec<Duration>| {
        if let Some((p50, p90, max)) = layer::stats_ms(v) {
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
        if LAYER.get().is_some_and(|l| !l.cached) {
            println!("\nRun it again: the seeded layer now comes from the cache.");
        }
    } else {
        println!(
            "  some tests failed: their output above shows what they saw and PostgreSQL's \
             log (PRISTINE_KEEP=failed keeps their containers' changes)."
        );
    }
}

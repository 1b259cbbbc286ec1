//! The ready-made services (`pristine::services`) under the harness, driven by
//! `tests/services.rs`: PostgreSQL seeded from SQL and from migrations, Redis seeded from
//! commands and an AOF, generic services waiting on a port and a log line. With
//! `PRISTINE_SERVICES_FAILING=1` it also has groups whose seed is bad or whose service
//! never becomes ready, which the driver checks fail with a clear message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

mod common;

use pristine::services::{Generic, Postgres, ReadyMade, Redis, Stack};
use pristine::testing::{Harness, TestResult};
use pristine::{LayerSpec, Recipe};

/// The seeds, where the sources are now (read when the image is built, on the host).
fn data(name: &str) -> PathBuf {
    common::manifest_dir()
        .join("tests/data/services")
        .join(name)
}

fn pg(conn: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(conn, postgres::NoTls)
}

/// Every test sees exactly the seed, then writes: a write that leaked would show in the
/// other test's count (both run at once, on the same port, in their own containers).
fn items_are_the_seed_then_write(conn: &str, id: i32) -> TestResult {
    let mut db = pg(conn)?;
    let names: Vec<String> = db
        .query("SELECT name FROM items ORDER BY id", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if names != ["one", "two", "three"] {
        return Err(format!("not the seed: {names:?}").into());
    }
    db.execute("INSERT INTO items VALUES ($1, 'mine')", &[&id])?;
    db.execute("DELETE FROM items WHERE id = 1", &[])?;
    Ok(())
}

/// The snapshot-after-init steps over a base that is not the host: a named image of the
/// store (here made from the host), where the steps find PostgreSQL's binaries themselves.
fn on_named_image(pg: &Postgres) -> Result<pristine::Image, Box<dyn std::error::Error>> {
    let store = pristine::Store::open_default()?;
    let _base = Recipe::host()
        .name("services-fixture-base")
        .host_inputs(["pkg:postgresql-15"])
        .layer(LayerSpec::new("base").run(["mkdir", "-p", "/srv/pristine-fixture-base"]))
        .build(&store)?;
    let stack = Stack::new(Recipe::image("services-fixture-base")).with(pg.clone());
    Ok(stack.build(&store)?)
}

/// Redis seeded from an RDB file: the one the `redis` group's seed step saved in its layer.
fn redis_from_rdb() -> Result<pristine::Image, Box<dyn std::error::Error>> {
    let store = pristine::Store::open_default()?;
    let seeded = Stack::host().with(
        Redis::new()
            .seed_commands(data("redis/seed.redis"))
            .seed_aof(data("redis/seed.aof")),
    );
    let image = seeded.build(&store)?;
    let layer = image.layers().last().ok_or("no layer")?;
    let rdb = layer.join("srv/pristine-redis/dump.rdb");
    let stack = Stack::host().with(Redis::new().name("fromrdb").seed_rdb(rdb));
    Ok(stack.build(&store)?)
}

/// One RESP exchange with the test's Redis: an inline command, its reply's first line.
fn redis(cmd: &str) -> std::io::Result<String> {
    let mut conn = TcpStream::connect("127.0.0.1:6379")?;
    conn.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut value = vec![0; len];
        reader.read_exact(&mut value)?;
        return Ok(String::from_utf8_lossy(&value).into_owned());
    }
    Ok(line.trim_end().to_string())
}

fn redis_is_the_seed_then_write(key: &str) -> TestResult {
    for (cmd, want) in [
        ("GET greeting", "hello world"),
        ("HGET user:1 lang", "en"),
        ("LLEN queue", ":3"),
        ("GET from:aof", "yes"),
        ("EXISTS written:a", ":0"),
        ("EXISTS written:b", ":0"),
    ] {
        let got = redis(cmd)?;
        if got != want {
            return Err(format!("{cmd}: {got:?}, the seed has {want:?}").into());
        }
    }
    redis(&format!("SET {key} 1"))?;
    redis("DEL greeting")?;
    Ok(())
}

fn main() {
    // First: this binary also serves as the containers' init (the seeds' paths below are
    // read from the environment, which init does not have).
    pristine::main_if_requested();
    let migrated = Postgres::new()
        .name("pgm")
        .database("app")
        .migrations(data("pg/migrations"));
    let migrated_conn = migrated.conn_str();
    let on_image = Postgres::new().name("pgimg").seed_sql(data("pg/seed.sql"));
    let image_pg = on_image.clone();
    let mut h = Harness::new()
        .group("pg_sql")
        .services(Stack::host().with(Postgres::new().seed_sql(data("pg/seed.sql"))))
        .test("sees_the_seed_a", |_| {
            items_are_the_seed_then_write(&Postgres::new().conn_str(), 10)
        })
        .test("sees_the_seed_b", |_| {
            items_are_the_seed_then_write(&Postgres::new().conn_str(), 11)
        })
        .group("pg_migrations")
        .services(Stack::host().with(migrated))
        .test("sees_the_migrations_in_order", move |_| {
            let mut db = pg(&migrated_conn)?;
            let rows: Vec<(String, bool)> = db
                .query("SELECT name, migrated FROM users ORDER BY id", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(rows, [("ADA".into(), true), ("GRACE".into(), true)]);
            Ok(())
        })
        .group("pg_on_named_image")
        .service(on_image.service())
        .image(move || on_named_image(&image_pg))
        .test("sees_the_seed", |_| {
            items_are_the_seed_then_write(&Postgres::new().conn_str(), 12)
        })
        .group("redis")
        .services(Stack::host().with(
            Redis::new()
                .seed_commands(data("redis/seed.redis"))
                .seed_aof(data("redis/seed.aof")),
        ))
        .test("sees_the_seed_a", |_| redis_is_the_seed_then_write("written:a"))
        .test("sees_the_seed_b", |_| redis_is_the_seed_then_write("written:b"))
        .group("redis_rdb")
        .service(Redis::new().name("fromrdb").service())
        .image(redis_from_rdb)
        .test("sees_the_rdb", |_| {
            assert_eq!(redis("GET greeting")?, "hello world");
            assert_eq!(redis("GET from:aof")?, "yes");
            Ok(())
        })
        .group("generic")
        .services(
            Stack::host()
                .with(
                    Generic::new(
                        "web",
                        ["/usr/bin/python3", "-m", "http.server", "8000", "-d", "/srv/pristine-site"],
                    )
                    .setup(LayerSpec::new("site").run([
                        "sh",
                        "-c",
                        "mkdir -p /srv/pristine-site && echo seeded > /srv/pristine-site/index.html",
                    ]))
                    .host_inputs(["pkg:python3"])
                    .wait_port(8000),
                )
                .with(
                    Generic::new("logger", ["sh", "-c", "sleep 0.2; echo up and running; exec sleep 600"])
                        .host_inputs(["pkg:dash"])
                        .wait_log("up and running"),
                ),
        )
        .test("waits_for_a_port_and_a_log_line", |ctx| {
            let mut conn = TcpStream::connect("127.0.0.1:8000")?;
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            assert!(reply.ends_with("seeded\n"), "{reply}");
            assert!(ctx.service_log("logger").contains("up and running"));
            Ok(())
        });
    if std::env::var_os("PRISTINE_SERVICES_FAILING").is_some() {
        h = failing(h);
    }
    h.run();
}

/// Groups that must fail, each with a message naming what went wrong.
fn failing(h: Harness) -> Harness {
    h.group("failing")
        .services(
            Stack::host().with(
                Generic::new("silent", ["sleep", "600"])
                    .host_inputs(["pkg:coreutils"])
                    .wait_log("never printed")
                    .timeout(Duration::from_millis(300)),
            ),
        )
        .test("times_out", |_| Ok(()))
        .group("bad_pg")
        .services(Stack::host().with(Postgres::new().name("badpg").seed_sql(data("pg/bad.sql"))))
        .test("bad_seed", |_| Ok(()))
        .group("bad_redis")
        .services(
            Stack::host().with(
                Redis::new()
                    .name("badredis")
                    .seed_commands(data("redis/bad.redis")),
            ),
        )
        .test("bad_seed", |_| Ok(()))
}

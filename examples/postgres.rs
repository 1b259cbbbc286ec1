//! The PostgreSQL demo, README's first command:
//!
//! ```sh
//! cargo run --release --example postgres            # as root, PostgreSQL 15 installed
//! cargo run --release --example postgres -- --list  # any libtest option works
//! cargo run --release --example postgres -- drops   # only the tests matching "drops"
//! ```
//!
//! It builds a seeded PostgreSQL layer once (initdb + about 25 MB of tables, cached in
//! `target/pristine`), then runs 60 tests in parallel, each in its own throwaway container
//! with its own PostgreSQL on a copy-on-write copy of the seed. Each test writes (insert,
//! update, delete, drop table, truncate) and checks it saw exactly the seed. The code is in
//! `examples/postgres/`: `layer.rs` (the layer's recipe), `build.sh`, `seed.sql`,
//! `postgresql.conf`, `fingerprint.sql`, and `demo.rs` (the tests and the summary).

#[path = "postgres/demo.rs"]
mod demo;
#[path = "postgres/layer.rs"]
mod layer;

fn main() {
    demo::main(demo::Config {
        per_kind: 12,
        scale: 1,
        skip_if_unable: false,
    })
}

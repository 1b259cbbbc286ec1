//! The PostgreSQL demo, README's first command (as root or as an ordinary user, with
//! PostgreSQL installed; any libtest option works, e.g. `-- drops` or `-- --list`):
//!
//! ```sh
//! cargo run --release --example postgres
//! ```
//!
//! `pristine::services::Postgres` runs initdb and `seed.sql` (about 25 MB of tables) once as
//! build steps, cached in `target/pristine`; then 60 tests run in parallel, each in its own
//! throwaway container with its own PostgreSQL on a copy-on-write copy of the seed. The code
//! is `examples/postgres/demo.rs`.

#[path = "postgres/demo.rs"]
mod demo;

fn main() {
    demo::main(demo::Config {
        per_kind: 12,
        skip_if_unable: false,
        host_trials: Vec::new(),
    })
}

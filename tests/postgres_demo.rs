//! The PostgreSQL demo (`examples/postgres.rs`) under `cargo test`: the same code with 10
//! tests instead of 60, on the same seeded layers (so the demo then finds them cached).
//! Skips with a note where the demo cannot run (no PostgreSQL or no `postgres` user).

#[path = "../examples/postgres/demo.rs"]
mod demo;

fn main() {
    demo::main(demo::Config {
        per_kind: 2,
        skip_if_unable: true,
    })
}

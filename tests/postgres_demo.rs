//! The PostgreSQL demo (`examples/postgres.rs`) under `cargo test`: the same code with 10
//! tests instead of 60, on the same seeded layers (so the demo then finds them cached).
//! Skips with a note where the demo cannot run (no PostgreSQL or no `postgres` user).
//!
//! As root, one more test, `rootless_mode_passes_too`, runs this binary again as `nobody`
//! (as the container, layer, services and harness suites do), so the demo passes in both
//! privilege modes: rootless it builds its own seeded layers in `nobody`'s store, and
//! PostgreSQL runs as the container's only user. Where the demo cannot run rootless (it
//! skips), that test fails with the reason instead of passing.

#[path = "../examples/postgres/demo.rs"]
mod demo;

mod common;

const ROOTLESS: &str = "rootless_mode_passes_too";

fn main() {
    let rootless = libtest_mimic::Trial::test(ROOTLESS, || {
        common::rerun_as_nobody(ROOTLESS);
        Ok(())
    });
    demo::main(demo::Config {
        per_kind: 2,
        skip_if_unable: true,
        host_trials: vec![rootless],
    })
}

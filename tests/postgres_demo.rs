//! The PostgreSQL demo (`examples/postgres.rs`) under `cargo test`: the same code with 10
//! tests instead of 60, on the same seeded layer (so the demo then finds it cached). Skips
//! with a note where the demo cannot run (not root, no PostgreSQL 15).

#[path = "../examples/postgres/demo.rs"]
mod demo;
#[path = "../examples/postgres/layer.rs"]
mod layer;

fn main() {
    demo::main(demo::Config {
        per_kind: 2,
        scale: 1,
        skip_if_unable: true,
    })
}

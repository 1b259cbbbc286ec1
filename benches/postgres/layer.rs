//! The benchmark's hand-made seeded PostgreSQL layer: how the demo (`examples/postgres.rs`)
//! made its layer before `pristine::services::Postgres`, kept as the baseline that
//! `cargo bench --bench postgres -- start` compares the service with, and for the `pgbench`
//! seeds of the per-test part.
//!
//! The layer sits on the host's root filesystem (which has PostgreSQL 15 installed) and adds
//! a stopped, cleanly shut down, seeded data directory in [`DATA_DIR`]. It is built once by
//! [`build.sh`](build.sh) in a throwaway container and cached in pristine's store under a key
//! that covers the host's packages, the scale and the content of every file copied in: edit
//! `seed.sql`, `postgresql.conf`, `fingerprint.sql` or `build.sh` and the next run rebuilds
//! it.

use std::path::Path;
use std::time::Duration;

use pristine::{Image, LayerSpec, Recipe, Store};

/// PostgreSQL 15's server binaries (Debian's layout).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The seeded data directory inside the image.
pub const DATA_DIR: &str = "/srv/pristine-pg";
/// Where the build's assets (and the seed's fingerprint) live inside the image.
pub const ASSETS: &str = "/opt/pristine-pg";
/// The user PostgreSQL runs as (Debian's `postgresql-15` package creates it).
pub const PG_USER: &str = "postgres";
/// What PostgreSQL logs once it accepts queries (`log_min_messages = log`).
pub const READY_LINE: &str = "database system is ready to accept connections";

/// The files copied into the layer, compiled into the program (so that it runs from any
/// directory, without the source tree).
pub const ASSET_FILES: &[(&str, &str)] = &[
    ("build.sh", include_str!("build.sh")),
    ("seed.sql", include_str!("../../examples/postgres/seed.sql")),
    (
        "fingerprint.sql",
        include_str!("../../examples/postgres/fingerprint.sql"),
    ),
    ("postgresql.conf", include_str!("postgresql.conf")),
];

/// The content of asset `name`.
pub fn asset(name: &str) -> &'static str {
    ASSET_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no asset {name}"))
}

/// What the seed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// The demo's tables (`seed.sql`): scale 1 is about 25 MB of tables (30 MB database),
    /// scale 46 about 1 GiB.
    Demo(u32),
    /// `pgbench -i -s SCALE`: scale 2 is a 30 MB database, 70 about 1 GiB.
    Pgbench(u32),
}

impl Seed {
    fn tag(self) -> String {
        match self {
            Seed::Demo(s) => format!("x{s}"),
            Seed::Pgbench(s) => format!("pgbench-x{s}"),
        }
    }
}

/// Writes the assets to a temporary directory for the recipe to copy from.
fn write_assets() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("pristine-pg-assets-")
        .tempdir()
        .map_err(|e| format!("create a directory for the layer's files: {e}"))?;
    for (name, content) in ASSET_FILES {
        std::fs::write(dir.path().join(name), content).map_err(|e| format!("write {name}: {e}"))?;
    }
    Ok(dir)
}

/// The recipe: host root + one layer with the seeded data directory; its files come from
/// `dir`.
fn recipe_in(seed: Seed, dir: &Path) -> Recipe {
    let tag = seed.tag();
    let mut layer = LayerSpec::new(format!("postgres-15-seed-{tag}"))
        // A big seed takes a while to generate; a 25 MB one takes a few seconds.
        .timeout(Duration::from_secs(3600));
    for (file, _) in ASSET_FILES {
        layer = layer.copy(dir.join(file), format!("{ASSETS}/{file}"));
    }
    // As root: the data directory, and the assets directory the seed step writes to.
    // (Rootless, `chown` is refused and not needed: the caller, root in this step, is
    // mapped to `postgres` in the next, so what it creates here belongs to postgres there.)
    layer = layer.run([
        "sh",
        "-c",
        &format!(
            "mkdir -p {DATA_DIR} && chmod 700 {DATA_DIR} && \
             {{ chown {PG_USER}:{PG_USER} {DATA_DIR} {ASSETS} 2>/dev/null || true; }}"
        ),
    ]);
    // As postgres (PostgreSQL refuses to run as root): initdb, seed, checkpoint, stop.
    let (scale, kind) = match seed {
        Seed::Demo(s) => (s, "demo"),
        Seed::Pgbench(s) => (s, "pgbench"),
    };
    layer = layer
        .run_with(
            [
                "sh",
                &format!("{ASSETS}/build.sh"),
                &scale.to_string(),
                kind,
            ],
            [("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")],
            "/",
        )
        .as_user(PG_USER);
    // The layer depends on PostgreSQL 15's package (and what it depends on) and on the
    // `postgres` user (a step runs as it, so its passwd entry is in the key anyway): an
    // unrelated package install or user leaves it cached.
    Recipe::host()
        .host_inputs(["pkg:postgresql-15"])
        .name(format!("postgres-seed-{tag}"))
        .layer(layer)
}

/// What [`build`] did.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The image to run tests on.
    pub image: Image,
    /// Whether the layer came from the store's cache.
    pub cached: bool,
    /// How long the lookup (or the build) took.
    pub took: Duration,
    /// The database's size as PostgreSQL reported it after seeding (e.g. "30 MB").
    pub db_size: String,
}

/// Builds the baseline layer (the demo's seed at `scale`) unless it is cached, in the
/// default store (`target/pristine` under cargo).
pub fn build(scale: u32) -> Result<Layer, String> {
    build_seed(Seed::Demo(scale))
}

/// Builds the layer of `seed` unless it is cached, in the default store.
pub fn build_seed(seed: Seed) -> Result<Layer, String> {
    let store = Store::open_default().map_err(|e| format!("cannot open pristine's store: {e}"))?;
    // The layer adds files under /var and /opt. A top-level directory of the host that holds
    // the store itself is bound into containers as it is (overlayfs refuses a layer inside
    // one of its own lower directories), which would hide the layer's files there.
    if let Some(top) = ["/var", "/opt"]
        .into_iter()
        .find(|t| store.root().starts_with(t))
    {
        return Err(format!(
            "pristine's store {} is under {top}, where this layer puts its files; set \
             PRISTINE_STORE to a directory elsewhere (e.g. under /root or /home)",
            store.root().display()
        ));
    }
    let started = std::time::Instant::now();
    let assets = write_assets()?;
    let built = recipe_in(seed, assets.path())
        .build_report(&store)
        .map_err(|e| format!("building the seeded PostgreSQL layer failed: {e}"))?;
    let took = started.elapsed();
    let cached = built.layers.iter().all(|l| l.cached);
    let dir = built
        .image
        .layers()
        .last()
        .cloned()
        .ok_or("the recipe built no layer")?;
    let db_size = std::fs::read_to_string(dir.join(&ASSETS[1..]).join("size.txt"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    Ok(Layer {
        image: built.image,
        cached,
        took,
        db_size,
    })
}

/// The fingerprint `build.sh` recorded in the layer (`TABLE ROWS CHECKSUM` lines); read it
/// inside a container of the image.
pub fn recorded_fingerprint() -> std::io::Result<String> {
    std::fs::read_to_string(format!("{ASSETS}/fingerprint.txt"))
}

/// Why this machine cannot run the demo, if it cannot: checked before any container starts,
/// so that a newcomer gets one clear message instead of a failure per test.
pub fn preflight() -> Result<(), String> {
    if !Path::new(PG_BIN).join("postgres").exists() {
        return Err(format!(
            "PostgreSQL 15 is not installed ({PG_BIN}/postgres is missing).\n\
             On Debian 12: apt-get install postgresql-15"
        ));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("postgres:")) {
        return Err(
            "there is no `postgres` user (PostgreSQL refuses to run as root).\n\
             Debian's postgresql-15 package creates it; or: adduser --system --group postgres"
                .into(),
        );
    }
    // PostgreSQL runs as the `postgres` user inside every container: the baseline layer
    // (built by `build.sh`, without `services::Postgres`'s user mapping) needs root.
    Ok(())
}

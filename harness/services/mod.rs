//! Ready-made services, in the spirit of testcontainers' modules, but with a seed snapshot:
//! a service's first-start work (PostgreSQL's `initdb`, loading a seed) runs once as build
//! steps over a base image, the server is stopped cleanly, and the result is frozen into
//! cached, content-addressed layers. Every test then starts the service on its own
//! copy-on-write copy of that initialised, seeded state.
//!
//! - [`Postgres`]: PostgreSQL from the host's installation (or any base image that has its
//!   server binaries), seeded from SQL files or a migrations directory.
//! - [`Redis`]: `redis-server`, seeded from a command file, an AOF or an RDB file.
//! - [`Generic`]: any command of the base image, with setup steps and a wait strategy.
//!
//! A [`Stack`] puts services on a base [`Recipe`] (the host by default; a named or imported
//! image with [`Stack::new`]) and gives the image and the services to start; for the test
//! harness, [`Harness::services`](crate::testing::Harness::services) takes it:
//!
//! ```no_run
//! use pristine::services::{Postgres, Stack};
//! use pristine::testing::Harness;
//!
//! fn main() {
//!     let pg = Postgres::new().seed_sql("tests/seed.sql");
//!     let url = pg.url(); // postgresql://postgres@127.0.0.1:5432/postgres
//!     Harness::new()
//!         .services(Stack::host().with(pg))
//!         .test("sees_the_seed", move |_| {
//!             let _ = &url; // connect to it: each test has its own server, same address
//!             Ok(())
//!         })
//!         .run();
//! }
//! ```

mod error;
mod generic;
mod postgres;
mod redis;
mod stack;

pub use error::ServicesError;
pub use generic::{Generic, Wait};
pub use postgres::{PgConnection, Postgres};
pub use redis::Redis;
pub use stack::{ReadyMade, Stack};

use std::path::{Path, PathBuf};

/// Where a service named `name` keeps its state inside the image: a new directory under
/// `/srv`, which works in both privilege modes (rootless, a build step can create entries
/// in a top-level directory of the host, not deeper in host-owned ones such as `/var/lib`).
pub(crate) fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/srv/pristine-{name}"))
}

/// Whether `s` is a plain name (letters, digits, `_`, `-`), safe in paths, SQL identifiers
/// and shell words.
pub(crate) fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The first of `dirs` that holds every one of `programs`.
pub(crate) fn find_bin_dir<'a>(
    dirs: impl IntoIterator<Item = &'a Path>,
    programs: &[&str],
) -> Option<PathBuf> {
    dirs.into_iter()
        .find(|d| programs.iter().all(|p| d.join(p).is_file()))
        .map(Path::to_path_buf)
}

/// The host's `PATH` directories, and the usual ones.
pub(crate) fn path_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(d.into());
        }
    }
    dirs
}

/// `file`, made absolute, if service `service` can read it (a seed file: checked before
/// any layer is built).
pub(crate) fn readable(service: &str, file: &Path) -> Result<PathBuf, ServicesError> {
    let err = |source| ServicesError::SeedFile {
        service: service.to_string(),
        path: file.to_path_buf(),
        source,
    };
    let abs = std::path::absolute(file).map_err(err)?;
    std::fs::File::open(&abs).map_err(err)?;
    Ok(abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        assert!(plain_name("postgres_2-a"));
        for bad in ["", "a b", "a'b", "a;b", "é", &"x".repeat(64)] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}

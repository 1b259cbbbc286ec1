//! Errors of ready-made services: each names the service, the step and what to do.

use std::path::PathBuf;

use crate::layers::BuildError;

/// Why a ready-made service could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServicesError {
    /// The service's programs are not installed on the host.
    #[error("service {service:?}: {what} not found (looked in {looked})\n  hint: {hint}")]
    NotInstalled {
        /// The service.
        service: String,
        /// What is missing.
        what: String,
        /// Where it was looked for.
        looked: String,
        /// What to do (e.g. which package to install).
        hint: String,
    },
    /// The service's configuration cannot work.
    #[error("service {service:?}: {reason}")]
    BadConfig {
        /// The service.
        service: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A seed file or directory cannot be read.
    #[error("service {service:?}: cannot read seed {path}: {source}")]
    SeedFile {
        /// The service.
        service: String,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A seed file failed to load.
    #[error(
        "service {service:?}: seed {}{}: {message}\n  hint: fix the seed; nothing was \
         stored, the seeded layer is built again on the next run",
        path.display(),
        line.map(|l| format!(" line {l}")).unwrap_or_default()
    )]
    BadSeed {
        /// The service.
        service: String,
        /// The seed file, on the host.
        path: PathBuf,
        /// Its line (from 1), when the loader names one.
        line: Option<u32>,
        /// What the loader said.
        message: String,
    },
    /// A build step (init, seed, setup) failed.
    #[error("service {service:?}: {step} failed: {source}")]
    Build {
        /// The service (or `stack` for the base).
        service: String,
        /// The step, e.g. `initdb`.
        step: String,
        /// The build error, with the step's output.
        #[source]
        source: Box<BuildError>,
    },
    /// The store could not be opened.
    #[error("cannot open pristine's store for the services' layers: {0}")]
    Store(#[from] crate::store::StoreError),
}

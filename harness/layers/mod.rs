//! Snapshot layers: recipes built into content-addressed, cached, read-only layers; the
//! catalog of layers and named images in the store; import and export as OCI images.

mod build;
mod catalog;
mod error;
mod hostkey;
mod key;
mod portable;
mod progress;
mod recipe;
mod ship;
mod squash;

pub use build::{Built, BuiltLayer};
pub(crate) use catalog::check_image_name;
pub(crate) use catalog::tree_size;
pub use catalog::{now as now_secs, BaseRecord, Catalog, ImageRecord, LayerMeta};
pub use error::BuildError;
pub(crate) use key::imported_key;
pub use portable::{export_image, import_image, import_image_replacing, resolve_image};
#[cfg(test)]
pub(crate) use progress::reporter_installed;
pub use progress::{with_progress, BuildEvent, LayerPos, Progress, StderrProgress, StepPos};
pub use recipe::{BaseSpec, LayerSpec, Recipe, Step, DEFAULT_LAYER_MAX_SIZE};
pub use ship::{load_store, save_store, ShipReport};
pub use squash::{squash_deep_stack, SQUASH_ABOVE};

//! The container's root filesystem: overlay options, the rootless host root, `/dev`.

pub mod devices;
pub mod host;
pub mod overlay;

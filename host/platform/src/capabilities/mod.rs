//! Capabilities the host hands to components. Each sits in its own folder
//! with its WIT, its host implementation, its backends and its
//! `impl Capability` (see [`capability`]); [`registry`] lists them. What a
//! component may use is granted by its `spin.toml` entry.

pub mod blobs;
pub mod capability;
pub mod mail;
pub mod mysql;
pub mod outbound_http;
pub mod queue;
pub mod registry;
pub mod streams;
pub mod variables;

pub use capability::Capability;
pub use registry::{Backends, Grants, InstanceStates};

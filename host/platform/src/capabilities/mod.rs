//! Capabilities the host hands to components. Each sits in its own module
//! with its WIT, its host implementation and its backends; what a component
//! may use is granted by its `spin.toml` entry.

pub mod blobs;
pub mod mail;
pub mod mysql;
pub mod outbound_http;
pub mod queue;
pub mod streams;
pub mod variables;

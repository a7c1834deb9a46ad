//! Capabilities the host hands to components. Each sits in its own folder
//! with its WIT, its host implementation, its backends and its
//! `impl Capability` (see [`capability`]); the list below registers them
//! (see [`registry`]). What a component may use is granted by its
//! `spin.toml` entry.

pub mod capability;
pub mod registry;
pub mod streams;

pub use capability::Capability;

registry::capabilities! {
    variables: variables::Variables,
    outbound_http: outbound_http::Outbound,
    mysql: mysql::Mysql,
    blobs: blobs::Blobs,
    queue: queue::component::Publisher,
    mail: mail::component::Mail,
    wasi: wasi::Wasi,
    key_value: key_value::KeyValue,
    sqlite: sqlite::Sqlite,
}

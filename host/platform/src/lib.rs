//! The Spindle platform: everything the `spindle` CLI and the native convert
//! worker share.
//!
//! - [`manifest`] and [`runtime_config`]: what to run (`spin.toml`) and on
//!   which backends (the runtime config); [`dotenv`]: variables from `.env`.
//! - [`runtime`]: the wasmtime engine, compile cache, instances and limits.
//! - [`trigger`]: the HTTP and AMQP triggers that invoke components.
//! - [`capabilities`]: one module per capability (WIT, host side, backends).
//! - [`components`]: the linked components and their running versions;
//!   [`deploy`]: hot redeploys of them; [`lifecycle`]: start-up, drain and
//!   readiness; [`app`]: the parts wired together.
//! - [`admin`] and [`metrics`]: operating it.
//! - [`listener`]: the accept loop and connection limits both listeners share.
//! - [`backoff`], [`clock`], [`signals`], [`urls`]: small helpers the host,
//!   the worker and the backends share; `sqlite_blocking` runs the embedded
//!   backends' SQLite calls off the async runtime.

pub mod admin;
pub mod api;
pub mod app;
pub mod backoff;
pub mod capabilities;
pub mod clock;
pub mod components;
pub mod deploy;
pub mod dotenv;
pub mod invoke;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod runtime;
pub mod runtime_config;
pub mod signals;
pub(crate) mod sqlite_blocking;
pub mod trigger;
pub mod urls;
pub mod version;

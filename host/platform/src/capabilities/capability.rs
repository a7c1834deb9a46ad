//! The shape every capability has. A capability is one folder under
//! `capabilities/` with its WIT, its host side, its backends and one
//! `impl Capability`; [`super::registry`] lists them, one line each, and
//! everything else (manifest, runtime, app, deploy) goes through the
//! registry without naming any of them.
//!
//! A capability's life, in the order the platform drives it:
//!
//! 1. **Grant** ([`Capability::grant`]): the component's `spin.toml` keys it
//!    owns ([`Capability::GRANT_KEYS`]) are parsed and validated when the
//!    application loads, so a bad grant stops start-up naming the key.
//! 2. **Backend** ([`Capability::backend`]): built once per process from its
//!    runtime-config section ([`Capability::CONFIG_SECTION`]); no section
//!    means the embedded default.
//! 3. **Link** ([`Capability::add_to_linker`]): its WIT imports go into the
//!    one linker every component is linked against.
//! 4. **Prepare** ([`Capability::prepare`]): per component, the backend and
//!    the grant become the state each instance of that component clones.
//! 5. **Check**: [`Capability::missing_grant`] maps an import to the grant a
//!    deploy needs; [`Capability::ready`] answers readiness probes.

use crate::manifest::{Manifest, ManifestError};
use crate::runtime_config::RuntimeConfig;
use serde::de::DeserializeOwned;
use std::path::Path;
use wasmtime::component::{Linker, ResourceTable};

/// One capability the host offers components.
pub trait Capability: Sized + 'static {
    /// How people and `/readyz` name it, e.g. `spindle:blobs`.
    const NAME: &'static str;
    /// The `[component.NAME]` keys it owns.
    const GRANT_KEYS: &'static [&'static str];
    /// Its runtime-config section, if it has one (e.g. `gridfs`).
    const CONFIG_SECTION: Option<&'static str> = None;
    /// Its backend as readiness messages name it, e.g. `the blob store`.
    const BACKEND_NAME: &'static str = "its backend";

    /// What one component's manifest entry grants.
    type Grant: Clone + Send + Sync + 'static;
    /// What serves every component of the process (a pool, a client).
    type Backend: Clone + Send + Sync + 'static;
    /// What one instance holds; cloned from the prepared state, so keep
    /// it to `Arc`s and small values.
    type State: Clone + Send + 'static;

    /// Parses and validates the keys it owns in one component's entry.
    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError>;

    /// Builds the backend from its runtime-config section.
    fn backend(env: &BackendEnv<'_>) -> impl Future<Output = anyhow::Result<Self::Backend>> + Send;

    /// One line for the start-up summary; `None` for nothing worth saying.
    fn describe(backend: &Self::Backend) -> Option<String>;

    /// Whether the backend answers (readiness); bounded by the caller.
    fn ready(backend: &Self::Backend) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Adds its WIT imports to the linker, reading the instance's state
    /// through [`HasState`].
    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()>;

    /// The state every instance of component `id` starts from.
    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State;

    /// Whether the grant lets the component use the backend at all (a
    /// backend that HTTP components use decides readiness).
    fn is_granted(grant: &Self::Grant) -> bool;

    /// For an import (e.g. `spindle:blobs/store@0.1.0`) of this capability
    /// that `grant` does not cover, the manifest line that would grant it.
    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str>;
}

/// The view a capability's host functions get of one instance: its own
/// state and the instance's resource table.
pub struct StateView<'a, C: Capability> {
    pub state: &'a mut C::State,
    pub table: &'a mut ResourceTable,
}

/// Store data that holds capability `C`'s instance state; implemented for
/// every registered capability by [`super::registry`].
pub trait HasState<C: Capability>: Send + 'static {
    fn view(&mut self) -> StateView<'_, C>;
}

/// Every component's grant of capability `C`, for a backend built from
/// what the components were granted (their allowed hosts, their files).
pub fn grants_of<C: Capability>(
    manifest: &Manifest,
) -> Result<Vec<(&str, C::Grant)>, ManifestError> {
    manifest
        .components
        .iter()
        .map(|(id, component)| {
            let entry = GrantEntry {
                id,
                keys: &component.grants,
                manifest,
            };
            C::grant(&entry)
                .map(|grant| (id.as_str(), grant))
                .map_err(|e| e.in_component(manifest, id))
        })
        .collect()
}

/// One component's entry as capabilities see it while granting.
pub struct GrantEntry<'a> {
    pub id: &'a str,
    /// The keys of `[component.ID]` beyond the manifest's own.
    pub keys: &'a toml::Table,
    pub manifest: &'a Manifest,
}

impl GrantEntry<'_> {
    /// The value of `key`, or its default when absent.
    pub fn get<V: DeserializeOwned + Default>(&self, key: &str) -> Result<V, GrantError> {
        match self.keys.get(key) {
            None => Ok(V::default()),
            Some(value) => value.clone().try_into().map_err(|e: toml::de::Error| {
                GrantError::new(key, e.message().to_string(), "fix the value's type")
            }),
        }
    }
}

/// A grant problem; the registry adds the file and the component.
#[derive(Debug)]
pub struct GrantError {
    /// The key below `component.ID`, e.g. `blob_buckets[0]`.
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl GrantError {
    /// This error as the manifest problem it is in component `id`'s entry.
    pub fn in_component(self, manifest: &Manifest, id: &str) -> ManifestError {
        ManifestError {
            file: manifest.path.clone(),
            key: format!("component.{id}.{}", self.key),
            problem: self.problem,
            fix: self.fix,
        }
    }

    pub fn new(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        GrantError {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// For a name starting with the platform's reserved prefix.
    pub fn reserved(key: impl Into<String>, name: &str) -> Self {
        GrantError::new(
            key,
            format!(
                "`{name}` starts with `{}`, which is reserved for the platform's own buckets, queues and exchanges (deploy records among them)",
                crate::manifest::RESERVED_PREFIX
            ),
            "choose a name that does not start with `spindle`",
        )
    }
}

/// What building a backend may look at.
pub struct BackendEnv<'a> {
    pub manifest: &'a Manifest,
    pub runtime_config: &'a RuntimeConfig,
    /// Where embedded defaults keep their data.
    pub state_dir: &'a Path,
    /// `--variable k=v` flags.
    pub variable_flags: &'a [String],
    /// Queues to declare beyond those the manifest names (a native
    /// worker's outputs).
    pub extra_queues: &'a [&'a str],
    /// `--key-value KEY=VALUE` flags: set in the `default` store at start-up.
    pub key_value_flags: &'a [String],
    /// `--sqlite STATEMENT` and `--sqlite @FILE` flags: run against the
    /// `default` database at start-up, in order.
    pub sqlite_flags: &'a [String],
}

impl BackendEnv<'_> {
    /// Capability `C`'s runtime-config section, or its default when absent.
    pub fn section<C: Capability, V: DeserializeOwned + Default>(&self) -> anyhow::Result<V> {
        let Some(name) = C::CONFIG_SECTION else {
            return Ok(V::default());
        };
        match self.runtime_config.sections.get(name) {
            None => Ok(V::default()),
            Some(value) => value.clone().try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!("runtime config [{name}]: {}", e.message())
            }),
        }
    }
}

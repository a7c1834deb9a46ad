//! Key-value as a capability: `key_value_stores` labels grant it; the
//! runtime config's `[key_value_store.LABEL]` tables are its backends.

use super::config::{self, DEFAULT_LABEL};
use super::{KeyValue, KvLimits, KvState, KvStores, KvView, bindings};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use crate::manifest::Manifest;
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::Linker;

impl Capability for KeyValue {
    const NAME: &'static str = "spin:key-value";
    const GRANT_KEYS: &'static [&'static str] = &["key_value_stores"];
    const CONFIG_SECTION: Option<&'static str> = Some("key_value_store");
    const BACKEND_NAME: &'static str = "the key-value store";

    /// The labels the component may open. Labels are the application's
    /// own names, as in Spin: no prefix is reserved for the platform,
    /// which keeps nothing in key-value stores.
    type Grant = Arc<[String]>;
    type Backend = Arc<KvStores>;
    type State = KvState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let labels: Vec<String> = entry.get("key_value_stores")?;
        Ok(labels.into())
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let base = env
            .runtime_config
            .dir
            .clone()
            .unwrap_or_else(|| Path::new(".").to_path_buf());
        let configs = config::parse(
            env.runtime_config.sections.get("key_value_store"),
            &base,
            env.state_dir,
        )?;
        check_granted_labels(env.manifest, |label| configs.contains_key(label))?;
        let limits = KvLimits::from_limits(&env.runtime_config.limits);
        let stores = Arc::new(config::build(&configs, limits)?);
        seed(&stores, env.key_value_flags).await?;
        Ok(stores)
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        Some(backend.describe())
    }

    async fn ready(backend: &Self::Backend) -> anyhow::Result<()> {
        backend.ping().await
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn view<T: HasState<KeyValue>>(t: &mut T) -> KvView<'_> {
            let view = t.view();
            KvView {
                table: view.table,
                state: view.state,
            }
        }
        bindings::spin::key_value::key_value::add_to_linker::<T, KeyValue>(linker, view::<T>)?;
        bindings::fermyon::spin::key_value::add_to_linker::<T, KeyValue>(linker, view::<T>)?;
        bindings::wasi::keyvalue::store::add_to_linker::<T, KeyValue>(linker, view::<T>)?;
        bindings::wasi::keyvalue::atomics::add_to_linker::<T, KeyValue>(linker, view::<T>)?;
        bindings::wasi::keyvalue::batch::add_to_linker::<T, KeyValue>(linker, view::<T>)?;
        Ok(())
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        KvState::new(id, backend.clone(), grant)
    }

    fn is_granted(grant: &Self::Grant) -> bool {
        !grant.is_empty()
    }

    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str> {
        let kv = import.starts_with("spin:key-value/")
            || import.starts_with("fermyon:spin/key-value@")
            || import.starts_with("wasi:keyvalue/");
        (kv && grant.is_empty()).then_some("key_value_stores = [\"default\"]")
    }
}

/// Spin's start-up rule: every label a component is granted must be
/// `default` or configured.
fn check_granted_labels(
    manifest: &Manifest,
    configured: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    for (id, component) in &manifest.components {
        // A malformed grant is reported by `grant`, naming the key.
        let Some(Ok(labels)) = component
            .grants
            .get("key_value_stores")
            .map(|v| v.clone().try_into::<Vec<String>>())
        else {
            continue;
        };
        if let Some(label) = labels.iter().find(|l| !configured(l)) {
            anyhow::bail!(
                "{}: component `{id}` is granted key-value store `{label}` (key_value_stores), which is not configured; add [key_value_store.{label}] with type = \"spin\" or \"redis\" to the runtime config, or use \"{DEFAULT_LABEL}\"",
                manifest.path.display()
            );
        }
    }
    Ok(())
}

/// `--key-value KEY=VALUE`: sets each pair in the `default` store, as
/// `spin up --key-value` does.
async fn seed(stores: &KvStores, flags: &[String]) -> anyhow::Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    let store = stores
        .store(DEFAULT_LABEL)
        .ok_or_else(|| anyhow::anyhow!("there is no `default` key-value store to seed"))?;
    for flag in flags {
        let (key, value) = flag
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--key-value `{flag}` is not in the form KEY=VALUE"))?;
        store
            .set(key, value.as_bytes().to_vec())
            .await
            .map_err(|e| anyhow::anyhow!("--key-value `{key}`: {e}"))?;
    }
    tracing::info!(count = flags.len(), "set --key-value pairs in the `default` store");
    Ok(())
}

//! `spin:variables` as a capability: a component's `variables` table is its
//! grant, the resolved application variables are the backend.

use super::{AppVariables, ComponentVariables, Variables, template, wasi_config, wit, wit2};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use crate::manifest::check_variable_name;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::Linker;

impl Capability for Variables {
    const NAME: &'static str = "spin:variables";
    const GRANT_KEYS: &'static [&'static str] = &["variables"];
    const CONFIG_SECTION: Option<&'static str> = Some("variables");

    /// Templates by component variable name.
    type Grant = Arc<BTreeMap<String, String>>;
    type Backend = Arc<AppVariables>;
    type State = ComponentVariables;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let templates: BTreeMap<String, String> = entry.get("variables")?;
        for (var, template) in &templates {
            let key = format!("variables.{var}");
            check_variable_name(var).map_err(|p| {
                GrantError::new(&key, p, "use lowercase letters, digits and underscores")
            })?;
            let references = template::references(template)
                .map_err(|p| GrantError::new(&key, p, "write references as {{ name }}"))?;
            if let Some(undefined) = references
                .iter()
                .find(|r| !entry.manifest.variables.contains_key(*r))
            {
                return Err(GrantError::new(
                    &key,
                    format!("refers to undefined application variable `{undefined}`"),
                    format!("add `{undefined}` under [variables]"),
                ));
            }
        }
        Ok(Arc::new(templates))
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let runtime_values: BTreeMap<String, String> = env.section::<Self, _>()?;
        let variables =
            AppVariables::resolve(env.manifest, env.variable_flags, &runtime_values, |k| {
                std::env::var(k).ok()
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}", env.manifest.path.display()))?;
        tracing::debug!(?variables, "resolved application variables");
        for name in variables.secrets_on_default() {
            tracing::warn!(
                "secret variable `{name}` is using its manifest default; set SPIN_VARIABLE_{} or pass --variable {name}=... outside local development",
                name.to_uppercase()
            );
        }
        Ok(Arc::new(variables))
    }

    fn describe(_: &Self::Backend) -> Option<String> {
        None
    }

    async fn ready(_: &Self::Backend) -> anyhow::Result<()> {
        Ok(())
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn state<T: HasState<Variables>>(t: &mut T) -> &ComponentVariables {
            t.view().state
        }
        wit::add_to_linker::<T, Variables>(linker, state::<T>)?;
        wit2::add_to_linker::<T, Variables>(linker, state::<T>)?;
        wasi_config::add_to_linker::<T, Variables>(linker, state::<T>)
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, _id: &str) -> Self::State {
        backend.for_component(grant)
    }

    fn is_granted(_: &Self::Grant) -> bool {
        false
    }

    fn missing_grant(_: &str, _: &Self::Grant) -> Option<&'static str> {
        None
    }
}

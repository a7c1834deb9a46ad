//! Outbound HTTP as a capability: `allowed_outbound_hosts` (and Spin's
//! deprecated `allowed_http_hosts`, converted as Spin converts it) is its
//! grant, and its state is the instance's `wasi:http` hooks. `wasi:http`
//! itself is part of every instance's base world (the runtime links it), so
//! this adds nothing to the linker.
//!
//! `{{ variable }}` templates in the list are rendered once at start-up
//! against the application variables (Spin renders them per instance from
//! the same resolved values; the result is the same).

use super::{
    AllowList, HostEntry, OutboundBackend, OutboundHttp, from_allowed_http_hosts, parse_entries,
};
use crate::capabilities::capability::{
    BackendEnv, Capability, GrantEntry, GrantError, HasState, grants_of,
};
use crate::capabilities::variables::{AppVariables, TemplatePart, Variables, parse_template};
use crate::manifest::Manifest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wasmtime::component::Linker;

/// The marker for outbound HTTP.
pub struct Outbound;

const FIX: &str = "write it as scheme://host[:port], e.g. \"https://example.com\", \"redis://cache:6379\", \"http://self\" or \"http://*.spin.internal\"";

impl Capability for Outbound {
    const NAME: &'static str = "wasi:http/outgoing-handler";
    const GRANT_KEYS: &'static [&'static str] = &["allowed_outbound_hosts", "allowed_http_hosts"];

    /// The entries, templates unrendered.
    type Grant = Arc<Vec<HostEntry>>;
    type Backend = OutboundBackend;
    type State = OutboundHttp;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let mut hosts: Vec<String> = entry.get("allowed_outbound_hosts")?;
        let http_hosts: Vec<String> = entry.get("allowed_http_hosts")?;
        let converted = from_allowed_http_hosts(&http_hosts).map_err(|(i, p)| {
            GrantError::new(
                format!("allowed_http_hosts[{i}]"),
                p,
                "replace allowed_http_hosts with allowed_outbound_hosts",
            )
        })?;
        let offset = hosts.len();
        hosts.extend(converted);
        let variables = |name: &str| {
            entry
                .manifest
                .variables
                .get(name)
                .map(|decl| decl.default.clone())
        };
        let entries = parse_entries(&hosts, &variables).map_err(|(i, p)| {
            let key = if i < offset {
                format!("allowed_outbound_hosts[{i}]")
            } else {
                "allowed_http_hosts".to_string()
            };
            GrantError::new(key, p, FIX)
        })?;
        Ok(Arc::new(entries))
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let lists = allow_lists(env)?;
        Ok(OutboundBackend {
            internal: Arc::default(),
            lists: Arc::new(lists),
        })
    }

    fn describe(_: &Self::Backend) -> Option<String> {
        None
    }

    async fn ready(_: &Self::Backend) -> anyhow::Result<()> {
        Ok(())
    }

    fn add_to_linker<T: HasState<Self>>(_: &mut Linker<T>) -> wasmtime::Result<()> {
        Ok(())
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        // Every component's list was rendered when the backend was built;
        // literal entries alone serve one it did not see.
        let list = backend.lists.get(id).cloned().unwrap_or_else(|| {
            AllowList::resolve(grant, &|t: &str| Err(format!("`{t}` was not rendered")))
                .unwrap_or_default()
        });
        OutboundHttp::new(id, list, backend.internal.clone())
    }

    fn is_granted(_: &Self::Grant) -> bool {
        false
    }

    fn missing_grant(_: &str, _: &Self::Grant) -> Option<&'static str> {
        None
    }
}

/// Every component's allow-list, templates rendered with the resolved
/// application variables; an entry that renders invalid stops start-up.
fn allow_lists(env: &BackendEnv<'_>) -> anyhow::Result<HashMap<String, AllowList>> {
    let manifest: &Manifest = env.manifest;
    let mut variables: Option<AppVariables> = None;
    let mut lists = HashMap::new();
    for (id, grant) in grants_of::<Outbound>(manifest)? {
        if variables.is_none() && grant.iter().any(|e| matches!(e, HostEntry::Template(_))) {
            let runtime_values: BTreeMap<String, String> = env.section::<Variables, _>()?;
            variables = Some(
                AppVariables::resolve(manifest, env.variable_flags, &runtime_values, |k| {
                    std::env::var(k).ok()
                })
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.path.display()))?,
            );
        }
        let render = |template: &str| -> Result<String, String> {
            let mut out = String::new();
            for part in parse_template(template)? {
                match part {
                    TemplatePart::Literal(l) => out.push_str(&l),
                    TemplatePart::Variable(v) => {
                        let value = variables
                            .as_ref()
                            .and_then(|vars| vars.get(&v))
                            .ok_or_else(|| format!("variable `{v}` has no value"))?;
                        out.push_str(value);
                    }
                }
            }
            Ok(out)
        };
        let list = AllowList::resolve(&grant, &render).map_err(|(i, p)| {
            anyhow::anyhow!(
                "{}: component.{id}.allowed_outbound_hosts[{i}]: {p}; {FIX}",
                manifest.path.display()
            )
        })?;
        lists.insert(id.to_string(), list);
    }
    Ok(lists)
}

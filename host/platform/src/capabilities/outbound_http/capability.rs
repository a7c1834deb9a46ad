//! Outbound HTTP as a capability: `allowed_outbound_hosts` is its grant,
//! and its state is the instance's `wasi:http` hooks. `wasi:http` itself is
//! part of every instance's base world (the runtime links it), so this adds
//! nothing to the linker.

use super::{AllowList, AllowedHost, InternalRouter, OutboundHttp};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use std::sync::{Arc, OnceLock};
use wasmtime::component::Linker;

/// The marker for outbound HTTP.
pub struct Outbound;

impl Capability for Outbound {
    const NAME: &'static str = "wasi:http/outgoing-handler";
    const GRANT_KEYS: &'static [&'static str] = &["allowed_outbound_hosts"];

    type Grant = AllowList;
    /// Where `*.spin.internal` requests go, set once the application's
    /// HTTP trigger exists.
    type Backend = InternalRouter;
    type State = OutboundHttp;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let hosts: Vec<String> = entry.get("allowed_outbound_hosts")?;
        for (i, host) in hosts.iter().enumerate() {
            AllowedHost::parse(host).map_err(|p| {
                GrantError::new(
                    format!("allowed_outbound_hosts[{i}]"),
                    p,
                    "write it as scheme://host[:port], e.g. \"https://example.com\" or \"http://*.spin.internal\"",
                )
            })?;
        }
        Ok(AllowList::new(&hosts))
    }

    async fn backend(_: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        Ok(Arc::new(OnceLock::new()))
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
        OutboundHttp::new(id, grant.clone(), backend.clone())
    }

    fn is_granted(_: &Self::Grant) -> bool {
        false
    }

    fn missing_grant(_: &str, _: &Self::Grant) -> Option<&'static str> {
        None
    }
}

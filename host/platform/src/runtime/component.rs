//! A component ready to run: compiled (or loaded from the cache) and linked
//! against the host's imports. Which triggers it can serve is decided by
//! its exports, which the triggers look at ([`Self::exports`]).

use super::cache::{CacheOutcome, CompileCache};
use super::instance::InstanceState;
use anyhow::{Context, Result, bail};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

/// A compiled, linked component.
pub struct LinkedComponent {
    /// sha256 of the component bytes.
    pub digest: String,
    pub cache: CacheOutcome,
    pub pre: InstancePre<InstanceState>,
    pub component: Component,
    /// The names of the component's imports (e.g. `spindle:blobs/store@0.1.0`),
    /// for checking them against its grants before a hot redeploy.
    pub imports: Vec<String>,
}

impl LinkedComponent {
    pub fn from_bytes(
        engine: &Engine,
        cache: &CompileCache,
        linker: &Linker<InstanceState>,
        id: &str,
        wasm: &[u8],
    ) -> Result<Self> {
        if !wasm.starts_with(b"\0asm") {
            bail!("component `{id}`: the file is not WebAssembly");
        }
        let (component, outcome) = cache
            .load(engine, wasm)
            .with_context(|| format!("component `{id}`: not a valid WebAssembly component"))?;
        // Spin interfaces not served yet get stubs in this component's own
        // copy of the linker.
        let unserved = super::unserved::imports(engine, &component);
        let stubbed = if unserved.is_empty() {
            None
        } else {
            for (import, what) in &unserved {
                tracing::warn!(component = %id, "imports {import}: {what} is not available on this host yet; its calls will fail");
            }
            let mut stubbed = linker.clone();
            super::unserved::define(&mut stubbed, engine, &component)
                .with_context(|| format!("component `{id}`: stubbing unserved interfaces"))?;
            Some(stubbed)
        };
        let pre = stubbed
            .as_ref()
            .unwrap_or(linker)
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component `{id}`: it imports something this host does not provide")
            })?;
        let imports = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(LinkedComponent {
            digest: CompileCache::digest(wasm),
            cache: outcome,
            pre,
            component,
            imports,
        })
    }

    /// The names of the component's exports.
    pub fn exports(&self, engine: &Engine) -> Vec<String> {
        self.component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }
}

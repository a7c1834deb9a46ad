//! A component ready to run: compiled (or loaded from the cache), linked
//! against the host's imports, and classified by the HTTP world it exports.

use super::cache::{CacheOutcome, CompileCache};
use super::instance::{Grants, InstanceState};
use crate::capabilities::queue::component::{HANDLER_EXPORT, QueueHandlerPre};
use anyhow::{Context, Result, bail};
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::handler::ProxyPre;

/// A compiled, linked component and what it is.
pub struct LinkedComponent {
    /// sha256 of the component bytes.
    pub digest: String,
    pub cache: CacheOutcome,
    pub grants: Grants,
    /// Present when the component exports a `wasi:http` handler.
    pub http: Option<ProxyPre<InstanceState>>,
    /// Present when the component exports `spindle:queue/handler`.
    pub queue: Option<QueueHandlerPre<InstanceState>>,
    /// The names of the component's imports (e.g. `spindle:blobs/store@0.1.0`),
    /// for checking them against its grants before a hot redeploy.
    pub imports: Vec<String>,
}

impl LinkedComponent {
    pub fn load(
        engine: &Engine,
        cache: &CompileCache,
        linker: &Linker<InstanceState>,
        id: &str,
        source: &Path,
        grants: Grants,
    ) -> Result<Self> {
        let wasm = std::fs::read(source).with_context(|| {
            format!(
                "component `{id}`: cannot read {}; build it first (spindle build {id})",
                source.display()
            )
        })?;
        Self::from_bytes(engine, cache, linker, id, &wasm, grants)
    }

    pub fn from_bytes(
        engine: &Engine,
        cache: &CompileCache,
        linker: &Linker<InstanceState>,
        id: &str,
        wasm: &[u8],
        grants: Grants,
    ) -> Result<Self> {
        if !wasm.starts_with(b"\0asm") {
            bail!("component `{id}`: the file is not WebAssembly");
        }
        let (component, outcome) = cache
            .load(engine, wasm)
            .with_context(|| format!("component `{id}`: not a valid WebAssembly component"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component `{id}`: it imports something this host does not provide")
            })?;
        let http = http_world(engine, &component)
            .map(|world| match world {
                HttpWorld::P3 => {
                    wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()).map(ProxyPre::P3)
                }
                HttpWorld::P2 => {
                    wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre.clone()).map(ProxyPre::P2)
                }
            })
            .transpose()
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component `{id}`: its wasi:http export does not match"))?;
        let exports_handler = component
            .component_type()
            .exports(engine)
            .any(|(name, _)| name == HANDLER_EXPORT);
        let queue = exports_handler
            .then(|| QueueHandlerPre::new(pre.clone()))
            .transpose()
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component `{id}`: its {HANDLER_EXPORT} export does not match")
            })?;
        let imports = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(LinkedComponent {
            digest: CompileCache::digest(wasm),
            cache: outcome,
            grants,
            http,
            queue,
            imports,
        })
    }
}

enum HttpWorld {
    P2,
    P3,
}

/// Which `wasi:http` handler the component exports, by export name.
fn http_world(engine: &Engine, component: &Component) -> Option<HttpWorld> {
    let ty = component.component_type();
    let mut world = None;
    for (name, _) in ty.exports(engine) {
        if name.starts_with("wasi:http/handler@0.3") {
            world = Some(HttpWorld::P3);
        } else if name.starts_with("wasi:http/incoming-handler@0.2") && world.is_none() {
            world = Some(HttpWorld::P2);
        }
    }
    world
}

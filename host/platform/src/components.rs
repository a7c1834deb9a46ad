//! The application's components: each compiled, linked with its grants
//! and ready to invoke, in one map that deploys swap versions in.
//!
//! Components live in one map, `component id → Running` (the HTTP and
//! queue entry points of the version that serves, plus its version record),
//! behind a `std::sync::RwLock` that is held only to clone or replace an
//! `Arc`, never across an `.await`. Every HTTP request, chained call and
//! queue delivery clones the `Arc` of the version running when it starts,
//! so in-flight work finishes on that version while new work sees a swap
//! at once; the old version is dropped when its last user ends. A lock
//! rather than `arc-swap`: reads are one uncontended read-lock plus a
//! clone, and writes (deploys) are rare.

use crate::capabilities::{Backends, Grants, InstanceStates};
use crate::invoke::Invoker;
use crate::invoke::http::{HttpComponent, proxy_pre};
use crate::invoke::queue::{QueueComponent, handler_pre};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::admission::Gate;
use crate::runtime::cache::{CacheOutcome, CompileCache};
use crate::runtime::component::LinkedComponent;
use crate::runtime::instance::InstanceState;
use crate::version::{Action, VersionRecord};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Linker;

/// What loading one component found, for the start-up summary.
pub struct ComponentInfo {
    pub id: String,
    pub digest: String,
    pub cache: CacheOutcome,
    pub load_time: Duration,
}

/// One version of a component, ready to serve.
#[derive(Clone)]
pub struct Running {
    pub http: Option<Arc<HttpComponent>>,
    pub queue: Option<Arc<QueueComponent>>,
    /// The component's bytes, so this version can be stored as the base
    /// of the deploy history the first time another one replaces it.
    pub wasm: Arc<[u8]>,
    pub record: VersionRecord,
}

/// What linking does about imports the component's grants do not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ungranted {
    /// Refuse the version: hot deploys, and deployed versions read back
    /// from the deploy records.
    Refuse,
    /// Link it and log a warning: the manifest's own source at start-up,
    /// which runs as Spin would, its calls failing with permission-denied.
    Warn,
}

/// A linked version, not yet serving.
pub struct Linked {
    pub http: Option<Arc<HttpComponent>>,
    pub queue: Option<Arc<QueueComponent>>,
    pub digest: String,
    pub cache: CacheOutcome,
}

/// Everything needed to compile and link a version of a component.
struct Loader {
    engine: Engine,
    cache: CompileCache,
    linker: Linker<InstanceState>,
    grants: BTreeMap<String, Grants>,
    /// The state each instance of a component starts from.
    states: HashMap<String, InstanceStates>,
    limits: crate::runtime_config::Limits,
    /// Admission per component, shared by all its versions.
    gates: HashMap<String, Arc<Gate>>,
    metrics: Arc<Metrics>,
}

/// The set of components, each at the version that serves now.
pub struct ComponentSet {
    loader: Loader,
    manifest: Manifest,
    running: RwLock<HashMap<String, Running>>,
}

impl ComponentSet {
    /// Prepares every component's capability states from its grants;
    /// components are linked with [`Self::link`] and put in service with
    /// [`Self::swap`].
    pub fn new(
        manifest: &Manifest,
        runtime: &Runtime,
        cache_dir: &Path,
        grants: BTreeMap<String, Grants>,
        backends: &Backends,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let states = grants
            .iter()
            .map(|(id, grants)| (id.clone(), backends.prepare(grants, id)))
            .collect();
        Ok(ComponentSet {
            loader: Loader {
                engine: runtime.engine().clone(),
                cache: CompileCache::new(runtime.engine(), cache_dir)?,
                linker: crate::runtime::linker::build(runtime.engine())?,
                grants,
                states,
                limits: runtime.limits().clone(),
                gates: manifest
                    .components
                    .keys()
                    .map(|id| (id.clone(), runtime.gate(id)))
                    .collect(),
                metrics,
            },
            manifest: manifest.clone(),
            running: RwLock::default(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Compiles (or loads from the cache) and links `wasm` as component
    /// `id` with its grants, and checks it can play its part: an HTTP
    /// export when routed, a queue handler when triggered. `ungranted` says
    /// what to do about imported capabilities that are not granted.
    /// CPU-bound.
    pub fn link(&self, id: &str, wasm: &[u8], ungranted: Ungranted) -> Result<Linked> {
        let loader = &self.loader;
        let (Some(grants), Some(states), Some(gate)) = (
            loader.grants.get(id),
            loader.states.get(id),
            loader.gates.get(id),
        ) else {
            bail!("no component `{id}` in the manifest");
        };
        let linked =
            LinkedComponent::from_bytes(&loader.engine, &loader.cache, &loader.linker, id, wasm)?;
        let missing = grants.ungranted(&linked.imports);
        if !missing.is_empty() {
            match ungranted {
                Ungranted::Refuse => bail!(
                    "component `{id}` imports {}, which its manifest entry does not grant; add the grant to [component.{id}] in spin.toml and restart, or deploy a build that does not use it",
                    missing.join(", ")
                ),
                Ungranted::Warn => tracing::warn!(
                    component = %id,
                    "imports {}, which [component.{id}] in spin.toml does not grant; \
                     those calls will be refused with permission-denied",
                    missing.join(", ")
                ),
            }
        }
        let invoker = Arc::new(Invoker::new(
            id,
            loader.engine.clone(),
            states.clone(),
            loader.limits.clone(),
            gate.clone(),
        ));
        let triggered = self
            .manifest
            .amqp_triggers
            .iter()
            .any(|t| t.component() == Some(id));
        let queue = match handler_pre(&loader.engine, id, &linked)? {
            Some(pre) => Some(Arc::new(QueueComponent::new(invoker.clone(), pre))),
            None if triggered => bail!(
                "component `{id}` is used by [[trigger.amqp]] but does not export {}; export the queue handler interface",
                crate::capabilities::queue::component::HANDLER_EXPORT
            ),
            None => None,
        };
        let routed = self
            .manifest
            .http_routes
            .iter()
            .any(|r| r.component() == Some(id));
        let http = match proxy_pre(&loader.engine, id, &linked)? {
            Some(pre) => Some(Arc::new(HttpComponent::new(
                invoker,
                pre,
                loader.metrics.clone(),
            ))),
            None if routed => bail!(
                "component `{id}` is routed by [[trigger.http]] but does not export wasi:http/handler@0.3 or wasi:http/incoming-handler@0.2; build it as an HTTP component"
            ),
            None => None,
        };
        Ok(Linked {
            http,
            queue,
            digest: linked.digest,
            cache: linked.cache,
        })
    }

    /// Loads every component's manifest source; hot-redeployed versions
    /// replace them once the deploy records are read, before any request
    /// or message reaches a component. CPU-bound.
    pub fn load_manifest_versions(&self, host_id: &str) -> Result<Vec<ComponentInfo>> {
        let mut info = Vec::new();
        for (id, component) in &self.manifest.components {
            let started = std::time::Instant::now();
            let source = self.manifest.source_path(component);
            let wasm = std::fs::read(&source).with_context(|| {
                format!(
                    "component `{id}`: cannot read {}; build it first (spindle build {id})",
                    source.display()
                )
            })?;
            let linked = self.link(id, &wasm, Ungranted::Warn)?;
            let record = VersionRecord::new(
                id,
                &linked.digest,
                Action::Manifest,
                &source.display().to_string(),
                host_id,
            );
            info.push(ComponentInfo {
                id: id.clone(),
                digest: linked.digest.clone(),
                cache: linked.cache,
                load_time: started.elapsed(),
            });
            self.swap(id, linked, wasm.into(), record);
        }
        Ok(info)
    }

    /// Puts a linked version in service; work that started keeps its own.
    pub fn swap(&self, id: &str, linked: Linked, wasm: Arc<[u8]>, record: VersionRecord) {
        let mut running = self.running.write().unwrap_or_else(|e| e.into_inner());
        running.insert(
            id.to_string(),
            Running {
                http: linked.http,
                queue: linked.queue,
                wasm,
                record,
            },
        );
    }

    /// The version of component `id` serving now.
    pub fn running(&self, id: &str) -> Option<Running> {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        running.get(id).cloned()
    }

    /// The HTTP entry point of component `id`'s running version.
    pub fn http(&self, id: &str) -> Option<Arc<HttpComponent>> {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        running.get(id).and_then(|r| r.http.clone())
    }

    /// The queue entry point of component `id`'s running version.
    pub fn queue(&self, id: &str) -> Option<Arc<QueueComponent>> {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        running.get(id).and_then(|r| r.queue.clone())
    }

    /// The capabilities the HTTP components (routed or private) are granted:
    /// their backends decide readiness.
    pub fn http_capabilities(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .manifest
            .http_routes
            .iter()
            .filter_map(|r| self.loader.grants.get(r.component()?))
            .flat_map(Grants::granted)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

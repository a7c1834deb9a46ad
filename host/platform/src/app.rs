//! A loaded application: what `spindle up` assembles and the admin
//! listener operates. It owns the parts and wires them, one way:
//!
//! ```text
//! listener → HttpTrigger (router) ─┐
//! broker   → queue trigger ────────┼→ ComponentSet → Invoker → instance → capability → backend
//! deploys  → Deployer ─────────────┘   (swaps versions)
//! ```
//!
//! Each part is in its own module: [`crate::components`] (the linked
//! components), [`crate::trigger`] (HTTP and queue), [`crate::deploy`]
//! (hot redeploys), [`crate::lifecycle`] (start-up, drain, readiness) and
//! [`crate::capabilities`] (grants, backends, per-instance state).

use crate::capabilities::Backends;
use crate::capabilities::outbound_http::InternalDispatch;
use crate::capabilities::queue::{Consumer, Worker};
use crate::components::{ComponentInfo, ComponentSet};
use crate::deploy::{Action, DeployError, DeployReport, Deployer};
use crate::lifecycle::{Lifecycle, Readiness};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime_config::RuntimeConfig;
use crate::trigger::http::HttpTrigger;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

/// Everything needed to assemble an application.
pub struct AppConfig {
    pub manifest: Manifest,
    pub runtime_config: RuntimeConfig,
    pub cache_dir: PathBuf,
    /// The address the HTTP trigger listens on (for `spin-full-url`).
    pub listen_addr: SocketAddr,
    /// Every capability's backend ([`Backends::build`]).
    pub backends: Backends,
    /// Names this host in version records (e.g. the pod name).
    pub host_id: String,
}

pub struct App {
    components: Arc<ComponentSet>,
    http: Arc<HttpTrigger>,
    deployer: Arc<Deployer>,
    lifecycle: Arc<Lifecycle>,
    backends: Backends,
    metrics: Arc<Metrics>,
    info: Vec<ComponentInfo>,
    // Dropped last: instances must be gone before the engine's ticker stops.
    _runtime: Runtime,
}

impl App {
    /// Compiles (or loads from the cache) and links every component. This
    /// is CPU-bound; call it off the async executor.
    pub fn load(config: AppConfig) -> Result<Arc<Self>> {
        let AppConfig {
            manifest,
            runtime_config,
            cache_dir,
            listen_addr,
            backends,
            host_id,
        } = config;
        let grants = crate::capabilities::registry::grants(&manifest)?;
        let runtime = Runtime::new(runtime_config.limits.clone())?;
        let metrics = Arc::new(Metrics::new(backends.blobs.metrics()));
        // The host's own deploy bucket shows from start-up.
        backends
            .blobs
            .metrics()
            .declare(crate::deploy::store::BUCKET);
        for id in manifest.components.keys() {
            metrics.start_deploy_series(id);
        }
        let components = Arc::new(ComponentSet::new(
            &manifest,
            &runtime,
            &cache_dir,
            grants,
            &backends,
            metrics.clone(),
        )?);
        let info = components
            .load_manifest_versions(&host_id)
            .with_context(|| manifest.path.display().to_string())?;
        let lifecycle = Arc::new(Lifecycle::new(format!(
            "reading the deploy records from {}",
            backends.blobs.describe()
        )));
        let http = Arc::new(HttpTrigger::new(
            components.clone(),
            lifecycle.clone(),
            metrics.clone(),
            runtime.limits().clone(),
            listen_addr,
        ));
        // Components' `*.spin.internal` calls go through the HTTP trigger.
        let weak: Weak<dyn InternalDispatch> = Arc::downgrade(&http) as Weak<dyn InternalDispatch>;
        backends.route_internal_calls(weak);
        let deployer = Arc::new(Deployer::new(
            components.clone(),
            lifecycle.clone(),
            backends.blobs.clone(),
            backends.queue.clone(),
            metrics.clone(),
            host_id,
        ));
        Ok(Arc::new(App {
            components,
            http,
            deployer,
            lifecycle,
            backends,
            metrics,
            info,
            _runtime: runtime,
        }))
    }

    /// The HTTP trigger, to serve on a listener.
    pub fn http(&self) -> &Arc<HttpTrigger> {
        &self.http
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The manifest the application was loaded from.
    pub fn manifest(&self) -> &Manifest {
        self.components.manifest()
    }

    pub fn components(&self) -> &[ComponentInfo] {
        &self.info
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Marks the host as shutting down (see `is_draining`).
    pub fn begin_drain(&self) {
        self.lifecycle.begin_drain();
    }

    /// Whether the host is shutting down.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    pub fn broker(&self) -> &crate::capabilities::queue::Broker {
        &self.backends.queue
    }

    /// Starts one consumer per `[[trigger.amqp]]` (see
    /// [`crate::trigger::amqp::start`]); stop them to drain.
    pub async fn start_queue_triggers(
        &self,
        workers: &HashMap<String, Worker>,
    ) -> Result<Vec<Consumer>> {
        crate::trigger::amqp::start(
            &self.components.manifest().amqp_triggers,
            &self.components,
            &self.lifecycle,
            &self.backends.queue,
            &self.metrics,
            workers,
        )
        .await
    }

    /// Finishes start-up and follows other hosts' deploys (see
    /// [`Deployer::start`]).
    pub async fn start_deploys(
        &self,
    ) -> Result<tokio::task::JoinHandle<()>, crate::capabilities::queue::QueueError> {
        self.deployer.start().await
    }

    pub async fn deploy(
        &self,
        id: &str,
        wasm: Vec<u8>,
        action: Action,
        source: &str,
    ) -> Result<DeployReport, DeployError> {
        self.deployer.deploy(id, wasm, action, source).await
    }

    pub async fn rollback(&self, id: &str) -> Result<DeployReport, DeployError> {
        self.deployer.rollback(id).await
    }

    pub async fn deploy_status(&self) -> Vec<crate::api::ComponentStatus> {
        self.deployer.deploy_status().await
    }

    /// Checks the configured backends. Those that HTTP components are
    /// granted decide readiness; the rest (e.g. mail, which only the queue
    /// handler notify uses) only degrade queue handlers, whose messages
    /// wait and are retried, so they are reported without making the host
    /// unready. A host still reading its deploy records is not ready
    /// either (given the probe's 2 s to finish).
    pub async fn readiness(&self) -> Readiness {
        let needed = self.components.http_capabilities();
        // At once, so a probe takes one timeout however much is down.
        let all = Backends::names();
        let (starting, checks) = tokio::join!(
            self.lifecycle
                .started_within(crate::capabilities::registry::PROBE_TIMEOUT),
            self.backends.check(&all),
        );
        Readiness {
            starting: starting.err(),
            ..Readiness::from_checks(checks, &needed)
        }
    }
}

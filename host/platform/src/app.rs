//! The running application: the manifest, every component compiled and
//! linked with its grants, the HTTP routes, and the shared backends.
//!
//! ## Swappable components
//!
//! Components live in one map, `component id → Running` (the HTTP and
//! queue entry points of the version that serves, plus its version record),
//! behind a `std::sync::RwLock` that is held only to clone or replace an
//! `Arc`, never across an `.await`. Every HTTP request, internal
//! (`*.spin.internal`) call and queue delivery clones the `Arc` of the
//! version running when it starts, so in-flight work finishes on that
//! version while new work sees a swap at once; the old version is dropped
//! when its last user ends. A lock rather than `arc-swap`: reads are one
//! uncontended read-lock plus a clone, and writes (deploys) are rare, so a
//! new dependency would buy nothing measurable. Hot redeploy itself
//! (compile, check, store, swap, fan out) is in [`crate::deploy`].

use crate::capabilities::blobs::{BlobStore, BlobsState};
use crate::capabilities::mail::Mailer;
use crate::capabilities::mail::component::MailState;
use crate::capabilities::mysql::{MysqlState, SqlBackends};
use crate::capabilities::outbound_http::{
    AllowList, InternalDispatch, InternalRouter, OutboundHttp,
};
use crate::capabilities::queue::component::PublishState;
use crate::capabilities::queue::{Broker, Consumer, Handler, Outcome, Worker};
use crate::capabilities::variables::AppVariables;
use crate::deploy::VersionRecord;
use crate::manifest::{AmqpTarget, Manifest};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::admission::Gate;
use crate::runtime::cache::{CacheOutcome, CompileCache};
use crate::runtime::component::LinkedComponent;
use crate::runtime::instance::{Grants, InstanceState};
use crate::runtime_config::RuntimeConfig;
use crate::trigger::amqp::QueueComponent;
use crate::trigger::http::handler::{HttpComponent, InvokeError};
use crate::trigger::http::router::Router;
use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Everything needed to assemble an application.
pub struct AppConfig {
    pub manifest: Manifest,
    pub runtime_config: RuntimeConfig,
    /// `--variable k=v` flags.
    pub variable_flags: Vec<String>,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The address the HTTP trigger listens on (for `spin-full-url`).
    pub listen_addr: SocketAddr,
    /// Backends connected beforehand (their clients are async).
    pub blobs: BlobStore,
    pub broker: Broker,
    pub mailer: Mailer,
    /// Names this host in version records (e.g. the pod name).
    pub host_id: String,
}

/// What loading one component found, for the start-up summary.
pub struct ComponentInfo {
    pub id: String,
    pub digest: String,
    pub cache: CacheOutcome,
    pub load_time: Duration,
}

/// One version of a component, ready to serve.
#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) http: Option<Arc<HttpComponent>>,
    pub(crate) queue: Option<Arc<QueueComponent>>,
    /// The component's bytes, so this version can be stored as the base
    /// of the deploy history the first time another one replaces it.
    pub(crate) wasm: Arc<[u8]>,
    pub(crate) record: VersionRecord,
}

/// The running version of every component, swapped by deploys.
pub(crate) type Components = Arc<RwLock<HashMap<String, Running>>>;

/// What compiling and linking another version of a component needs.
pub(crate) struct Loader {
    engine: Engine,
    cache: CompileCache,
    linker: Linker<InstanceState>,
    grants: HashMap<String, Grants>,
    limits: crate::runtime_config::Limits,
    /// Admission per component, shared by all its versions.
    gates: HashMap<String, Arc<Gate>>,
    metrics: Arc<Metrics>,
    pub(crate) manifest: Manifest,
}

/// What linking does about imports the component's grants do not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ungranted {
    /// Refuse the version: hot deploys, and deployed versions read back
    /// from the deploy records ([`crate::deploy::check_grants`]).
    Refuse,
    /// Link it and log a warning: the manifest's own source at start-up,
    /// which runs as Spin would, its calls failing with permission-denied.
    Warn,
}

/// A linked version, not yet serving.
pub(crate) struct Linked {
    pub(crate) http: Option<Arc<HttpComponent>>,
    pub(crate) queue: Option<Arc<QueueComponent>>,
    pub(crate) digest: String,
    pub(crate) cache: CacheOutcome,
}

impl Loader {
    /// Compiles (or loads from the cache) and links `wasm` as component
    /// `id` with its grants, and checks it can play its part: an HTTP
    /// export when routed, a queue handler when triggered. `ungranted` says
    /// what to do about imported capabilities that are not granted.
    /// CPU-bound.
    pub(crate) fn link(&self, id: &str, wasm: &[u8], ungranted: Ungranted) -> Result<Linked> {
        let Some(component) = self.manifest.components.get(id) else {
            bail!("no component `{id}` in the manifest");
        };
        let grants = self
            .grants
            .get(id)
            .cloned()
            .with_context(|| format!("no grants for component `{id}`"))?;
        let gate = self
            .gates
            .get(id)
            .cloned()
            .with_context(|| format!("no limits for component `{id}`"))?;
        let linked =
            LinkedComponent::from_bytes(&self.engine, &self.cache, &self.linker, id, wasm, grants)?;
        match ungranted {
            Ungranted::Refuse => crate::deploy::check_grants(id, component, &linked.imports)?,
            Ungranted::Warn => {
                let missing = crate::deploy::ungranted_imports(component, &linked.imports);
                if !missing.is_empty() {
                    tracing::warn!(
                        component = %id,
                        "imports {}, which [component.{id}] in spin.toml does not grant; \
                         those calls will be refused with permission-denied",
                        missing.join(", ")
                    );
                }
            }
        }
        let triggered = self
            .manifest
            .amqp_triggers
            .iter()
            .any(|t| t.component() == Some(id));
        let queue = match linked.queue {
            Some(pre) => Some(Arc::new(QueueComponent::new(
                id,
                self.engine.clone(),
                pre,
                linked.grants.clone(),
                self.limits.clone(),
                gate.clone(),
            ))),
            None if triggered => bail!(
                "component `{id}` is used by [[trigger.amqp]] but does not export {}; export the queue handler interface",
                crate::capabilities::queue::component::HANDLER_EXPORT
            ),
            None => None,
        };
        let routed = self.manifest.http_routes.iter().any(|r| r.component == id);
        let http = match linked.http {
            Some(pre) => Some(Arc::new(HttpComponent::new(
                id,
                self.engine.clone(),
                pre,
                linked.grants,
                self.limits.clone(),
                gate,
                self.metrics.clone(),
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
}

pub struct App {
    router: Router,
    amqp_triggers: Vec<crate::manifest::AmqpTrigger>,
    pub(crate) components: Components,
    pub(crate) loader: Arc<Loader>,
    pub(crate) host_id: String,
    /// One deploy, rollback or replica update at a time on this host.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    info: Vec<ComponentInfo>,
    metrics: Arc<Metrics>,
    sql: Arc<SqlBackends>,
    blobs: BlobStore,
    broker: Broker,
    mailer: Mailer,
    listen_addr: SocketAddr,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight work finishes.
    draining: std::sync::atomic::AtomicBool,
    /// Whether the deploy records have been read (see [`Startup`]).
    startup: tokio::sync::watch::Sender<Startup>,
    /// Requests reading their body ahead now (see the HTTP trigger).
    read_aheads: Arc<tokio::sync::Semaphore>,
    // Dropped last: instances must be gone before the engine's ticker stops.
    runtime: Runtime,
}

impl App {
    /// Compiles (or loads from the cache) and links every component. This
    /// is CPU-bound; call it off the async executor.
    pub fn load(config: AppConfig) -> Result<Arc<Self>> {
        let AppConfig {
            manifest,
            runtime_config,
            variable_flags,
            state_dir,
            cache_dir,
            listen_addr,
            blobs,
            broker,
            mailer,
            host_id,
        } = config;
        let runtime = Runtime::new(runtime_config.limits.clone())?;
        let cache = CompileCache::new(runtime.engine(), &cache_dir)?;
        let linker = crate::runtime::linker::build(runtime.engine())?;
        let variables =
            AppVariables::resolve(&manifest, &variable_flags, &runtime_config.variables, |k| {
                std::env::var(k).ok()
            })
            .with_context(|| manifest.path.display().to_string())?;
        tracing::debug!(?variables, "resolved application variables");
        for name in variables.secrets_on_default() {
            tracing::warn!(
                "secret variable `{name}` is using its manifest default; set SPIN_VARIABLE_{} or pass --variable {name}=... outside local development",
                name.to_uppercase()
            );
        }
        let sql = Arc::new(SqlBackends::new(
            runtime_config.mysql.as_ref().map(|m| m.url.clone()),
            state_dir.join("sql"),
        ));
        let metrics = Arc::new(Metrics::new(blobs.metrics()));
        // Every blob family shows from start-up: the host's own deploy
        // bucket is always there, and so are the buckets granted.
        blobs.metrics().declare(crate::deploy::store::BUCKET);
        for bucket in manifest.components.values().flat_map(|c| &c.blob_buckets) {
            blobs.metrics().declare(bucket);
        }
        for id in manifest.components.keys() {
            metrics.start_deploy_series(id);
        }
        let internal: InternalRouter = Arc::new(OnceLock::new());

        let mut grants = HashMap::new();
        for (id, component) in &manifest.components {
            let allowed = AllowList::new(&component.allowed_outbound_hosts);
            grants.insert(
                id.clone(),
                Grants {
                    outbound: OutboundHttp::new(id, allowed.clone(), internal.clone()),
                    variables: variables.for_component(&component.variables),
                    mysql: MysqlState::new(id, sql.clone(), &component.mysql_databases, allowed),
                    blobs: BlobsState::new(id, blobs.clone(), &component.blob_buckets),
                    publish: PublishState::new(id, broker.clone(), &component.publish_queues),
                    mail: MailState::new(id, mailer.clone(), component.send_mail),
                },
            );
        }
        let loader = Arc::new(Loader {
            engine: runtime.engine().clone(),
            cache,
            linker,
            grants,
            limits: runtime.limits().clone(),
            gates: manifest
                .components
                .keys()
                .map(|id| (id.clone(), runtime.gate(id)))
                .collect(),
            metrics: metrics.clone(),
            manifest: manifest.clone(),
        });

        let mut components = HashMap::new();
        let mut info = Vec::new();
        // The manifest's versions; hot-redeployed ones replace them once the
        // deploy records are read ([`App::start_deploys`]), before any
        // request or message reaches a component.
        for (id, component) in &manifest.components {
            let started = Instant::now();
            let source = manifest.source_path(component);
            let wasm = std::fs::read(&source).with_context(|| {
                format!(
                    "component `{id}`: cannot read {}; build it first (spindle build {id})",
                    source.display()
                )
            })?;
            let linked = loader.link(id, &wasm, Ungranted::Warn)?;
            let record = VersionRecord::new(
                id,
                &linked.digest,
                crate::deploy::Action::Manifest,
                &source.display().to_string(),
                &host_id,
            );
            info.push(ComponentInfo {
                id: id.clone(),
                digest: linked.digest.clone(),
                cache: linked.cache,
                load_time: started.elapsed(),
            });
            components.insert(
                id.clone(),
                Running {
                    http: linked.http,
                    queue: linked.queue,
                    wasm: wasm.into(),
                    record,
                },
            );
        }

        let startup = tokio::sync::watch::Sender::new(Startup::Waiting(format!(
            "reading the deploy records from {}",
            blobs.describe()
        )));
        let app = Arc::new(App {
            router: Router::new(&manifest.http_routes),
            amqp_triggers: manifest.amqp_triggers.clone(),
            components: Arc::new(RwLock::new(components)),
            loader,
            host_id,
            deploy_lock: tokio::sync::Mutex::new(()),
            info,
            metrics,
            sql,
            blobs,
            broker,
            mailer,
            listen_addr,
            draining: std::sync::atomic::AtomicBool::new(false),
            startup,
            read_aheads: Arc::new(tokio::sync::Semaphore::new(
                runtime_config.limits.max_read_aheads as usize,
            )),
            runtime,
        });
        let weak: Weak<dyn InternalDispatch> = Arc::downgrade(&app) as Weak<dyn InternalDispatch>;
        let _ = internal.set(weak);
        Ok(app)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Permits to read a request body ahead (see the HTTP trigger).
    pub fn read_aheads(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.read_aheads
    }

    /// The `[limits]` every invocation runs under.
    pub fn limits(&self) -> &crate::runtime_config::Limits {
        self.runtime.limits()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn components(&self) -> &[ComponentInfo] {
        &self.info
    }

    /// Marks the host as shutting down (see `is_draining`).
    pub fn begin_drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the host is shutting down: load balancers should stop
    /// sending it work.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records how far start-up is (see [`Startup`]).
    pub(crate) fn set_startup(&self, startup: Startup) {
        self.startup.send_replace(startup);
    }

    /// Waits up to `patience` for the deploy records to be read; `Err`
    /// says what the host still waits for. Requests and probes that arrive
    /// during a start-up that is about to finish are served, not refused.
    async fn started_within(&self, patience: Duration) -> Result<(), String> {
        if matches!(*self.startup.borrow(), Startup::Done) {
            return Ok(());
        }
        let mut startup = self.startup.subscribe();
        let done = startup.wait_for(|s| matches!(s, Startup::Done));
        match tokio::time::timeout(patience, done).await {
            Ok(Ok(_)) => Ok(()),
            _ => match &*self.startup.borrow() {
                Startup::Waiting(why) => Err(why.clone()),
                Startup::Done => Ok(()),
            },
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn sql(&self) -> &SqlBackends {
        &self.sql
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    /// Starts one consumer per `[[trigger.amqp]]`; stop them to drain.
    /// Triggers naming a native worker get their handler from `workers`;
    /// one missing there runs in another process (e.g. its own Deployment)
    /// and is skipped here.
    pub async fn start_queue_triggers(
        &self,
        workers: &HashMap<String, Worker>,
    ) -> Result<Vec<Consumer>> {
        let mut consumers = Vec::new();
        for trigger in &self.amqp_triggers {
            let (handler, on_dead_letter, target): (Handler, _, String) = match trigger.target() {
                AmqpTarget::Component(id) => {
                    if self.queue_component(id).is_none() {
                        bail!("component `{id}` has no queue handler");
                    }
                    // Looked up per delivery, so a redeploy takes effect at
                    // the next message while running ones finish on theirs;
                    // none runs before the deploy records are read, so a
                    // deployed version is never preceded by the manifest's.
                    let components = self.components.clone();
                    let startup = self.startup.subscribe();
                    let name = id.to_string();
                    let handler: Handler = Arc::new(move |delivery| {
                        let (components, mut startup) = (components.clone(), startup.clone());
                        let id = name.clone();
                        Box::pin(async move {
                            // Ends only with the App, which outlives its consumers.
                            let _ = startup.wait_for(|s| matches!(s, Startup::Done)).await;
                            match running_queue(&components, &id) {
                                Some(component) => component.invoke(delivery).await,
                                None => {
                                    Outcome::Retry(format!("component `{id}` has no queue handler"))
                                }
                            }
                        })
                    });
                    (handler, None, format!("component `{id}`"))
                }
                AmqpTarget::Worker(name) => match workers.get(name) {
                    Some(worker) => (
                        worker.handler.clone(),
                        worker.on_dead_letter.clone(),
                        format!("worker `{name}`"),
                    ),
                    None => {
                        tracing::info!(
                            queue = %trigger.queue,
                            "worker `{name}` is not run by this process; it consumes the queue elsewhere"
                        );
                        continue;
                    }
                },
            };
            let mut options = trigger.consume_options();
            options.metrics = Some(self.metrics.queue(&trigger.queue));
            options.on_dead_letter = on_dead_letter;
            let consumer = self
                .broker
                .consume(&trigger.queue, options, handler)
                .await
                .with_context(|| {
                    format!(
                        "starting [[trigger.amqp]] for queue `{}` → {target}",
                        trigger.queue
                    )
                })?;
            consumers.push(consumer);
        }
        Ok(consumers)
    }

    /// The version of HTTP component `id` serving now.
    fn http_component(&self, id: &str) -> Option<Arc<HttpComponent>> {
        let components = self.components.read().unwrap_or_else(|e| e.into_inner());
        components.get(id).and_then(|r| r.http.clone())
    }

    fn queue_component(&self, id: &str) -> Option<Arc<QueueComponent>> {
        running_queue(&self.components, id)
    }

    /// Invokes HTTP component `id` with `request`, which came by `route`
    /// (its admission lane).
    pub async fn invoke(
        &self,
        id: &str,
        route: &str,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, InvokeError> {
        // A request waits for start-up as it would for a slot.
        self.started_within(self.limits().queue_timeout())
            .await
            .map_err(InvokeError::Starting)?;
        let component = self.http_component(id).ok_or_else(|| InvokeError::Trap {
            component: id.to_string(),
            reason: "it is not an HTTP component of this application".into(),
        })?;
        component.invoke(request, route).await
    }

    /// Checks the configured backends. Those that HTTP components are
    /// granted decide readiness; the rest (e.g. mail, which only the queue
    /// handler notify uses) only degrade queue handlers, whose messages
    /// wait and are retried, so they are reported without making the host
    /// unready. A host still reading its deploy records is not ready
    /// either (given the probe's 2 s to finish).
    pub async fn readiness(&self) -> Readiness {
        let needs = self.http_needs();
        // At once, so a probe takes one timeout however much is down.
        let (starting, sql, blobs, queue, mail) = tokio::join!(
            self.started_within(PROBE_TIMEOUT),
            probe("the MySQL server", self.sql.ping()),
            probe("the blob store", self.blobs.ping()),
            probe("the queue broker", self.broker.ping()),
            probe("the mail server", self.mailer.ping()),
        );
        let checks = [
            (Capability::Sql, needs.sql, sql),
            (Capability::Blobs, needs.blobs, blobs),
            (Capability::Queue, needs.queue, queue),
            (Capability::Mail, needs.mail, mail),
        ];
        Readiness {
            starting: starting.err(),
            ..Readiness::from_checks(checks)
        }
    }

    /// The capabilities the HTTP components (routed or private) are granted.
    fn http_needs(&self) -> HttpNeeds {
        let manifest = &self.loader.manifest;
        let mut needs = HttpNeeds::default();
        for route in &manifest.http_routes {
            let Some(c) = manifest.components.get(&route.component) else {
                continue;
            };
            needs.sql |= !c.mysql_databases.is_empty()
                || c.allowed_outbound_hosts
                    .iter()
                    .any(|h| h.starts_with("mysql://"));
            needs.blobs |= !c.blob_buckets.is_empty();
            needs.queue |= !c.publish_queues.is_empty();
            needs.mail |= c.send_mail;
        }
        needs
    }
}

/// A capability whose backend readiness checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Sql,
    Blobs,
    Queue,
    Mail,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::Sql => "spin:mysql",
            Capability::Blobs => "spindle:blobs",
            Capability::Queue => "spindle:queue",
            Capability::Mail => "spindle:mail",
        }
    }
}

/// What `/readyz` reports: backends HTTP routes need that are down (the
/// host is not ready) and backends only queue handlers need (degraded).
#[derive(Debug, Default)]
pub struct Readiness {
    pub down: Vec<(Capability, String)>,
    pub degraded: Vec<(Capability, String)>,
    /// What start-up still waits for, if it has not finished.
    pub starting: Option<String>,
}

impl Readiness {
    /// Sorts the results of backend checks ([`probe`]): a failed one is
    /// down when `needed` (by what the process serves), else degraded.
    pub fn from_checks(
        checks: impl IntoIterator<Item = (Capability, bool, anyhow::Result<()>)>,
    ) -> Self {
        let mut readiness = Readiness::default();
        for (capability, needed, result) in checks {
            if let Err(e) = result {
                let entry = (capability, format!("{e:#}"));
                if needed {
                    readiness.down.push(entry);
                } else {
                    readiness.degraded.push(entry);
                }
            }
        }
        readiness
    }

    pub fn is_ready(&self) -> bool {
        self.down.is_empty() && self.starting.is_none()
    }
}

/// Where a process is in starting up. A host serves the manifest's
/// versions of its components only once the deploy records say none was
/// deployed instead; until it has read them (the blob store may come up
/// after it), app routes answer 503 and `/readyz` says what it waits for.
#[derive(Debug, Clone)]
pub(crate) enum Startup {
    /// Still reading the deploy records; why it has not finished.
    Waiting(String),
    Done,
}

/// How long a readiness check may take; the Kubernetes probes allow 3 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct HttpNeeds {
    sql: bool,
    blobs: bool,
    queue: bool,
    mail: bool,
}

/// Runs one backend check with a 2 s bound, naming the backend.
pub async fn probe<E>(what: &str, check: impl Future<Output = Result<(), E>>) -> anyhow::Result<()>
where
    E: Into<anyhow::Error>,
{
    tokio::time::timeout(PROBE_TIMEOUT, check)
        .await
        .with_context(|| format!("{what} did not answer within 2s"))?
        .map_err(Into::into)
        .with_context(|| format!("{what} is not answering"))
}

fn running_queue(components: &Components, id: &str) -> Option<Arc<QueueComponent>> {
    let components = components.read().unwrap_or_else(|e| e.into_inner());
    components.get(id).and_then(|r| r.queue.clone())
}

impl InternalDispatch for App {
    fn dispatch(
        &self,
        component: &str,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>> {
        let target = self.http_component(component);
        let name = component.to_string();
        // The lane of a chained call: the route it would take from outside,
        // so `/validate` from the gateway queues apart from `/login`.
        let lane = match self.router.route(request.uri().path()) {
            Some(matched) if matched.component == component => matched.raw,
            _ => "internal call".to_string(),
        };
        Box::pin(async move {
            let Some(target) = target else {
                tracing::warn!("no component `{name}` for http://{name}.spin.internal");
                return Err(HttpError::DestinationNotFound);
            };
            match target.invoke(request, &lane).await {
                Ok(response) => Ok(response),
                Err(e) => Ok(e.into_response()),
            }
        })
    }
}

//! The running application: the manifest, every component compiled and
//! linked with its grants, the HTTP routes, and the shared backends.

use crate::capabilities::blobs::{BlobStore, BlobsState};
use crate::capabilities::mail::Mailer;
use crate::capabilities::mail::component::MailState;
use crate::capabilities::mysql::{MysqlState, SqlBackends};
use crate::capabilities::outbound_http::{
    AllowList, InternalDispatch, InternalRouter, OutboundHttp,
};
use crate::capabilities::queue::component::PublishState;
use crate::capabilities::queue::{Broker, Consumer, Handler};
use crate::capabilities::variables::AppVariables;
use crate::manifest::{AmqpTarget, Manifest};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::cache::{CacheOutcome, CompileCache};
use crate::runtime::component::LinkedComponent;
use crate::runtime::instance::Grants;
use crate::runtime_config::RuntimeConfig;
use crate::trigger::amqp::QueueComponent;
use crate::trigger::http::handler::{HttpComponent, InvokeError};
use crate::trigger::http::router::Router;
use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
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
}

/// What loading one component found, for the start-up summary.
pub struct ComponentInfo {
    pub id: String,
    pub digest: String,
    pub cache: CacheOutcome,
    pub load_time: Duration,
}

pub struct App {
    router: Router,
    amqp_triggers: Vec<crate::manifest::AmqpTrigger>,
    components: HashMap<String, Arc<HttpComponent>>,
    queue_components: HashMap<String, Arc<QueueComponent>>,
    info: Vec<ComponentInfo>,
    metrics: Arc<Metrics>,
    sql: Arc<SqlBackends>,
    blobs: BlobStore,
    broker: Broker,
    mailer: Mailer,
    listen_addr: SocketAddr,
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
            variable_flags,
            state_dir,
            cache_dir,
            listen_addr,
            blobs,
            broker,
            mailer,
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
        let metrics = Arc::new(Metrics::default());
        let internal: InternalRouter = Arc::new(OnceLock::new());

        let mut components = HashMap::new();
        let mut queue_components = HashMap::new();
        let mut info = Vec::new();
        for (id, component) in &manifest.components {
            let started = Instant::now();
            let allowed = AllowList::new(&component.allowed_outbound_hosts);
            let grants = Grants {
                outbound: OutboundHttp::new(id, allowed.clone(), internal.clone()),
                variables: variables.for_component(&component.variables),
                mysql: MysqlState::new(id, sql.clone(), &component.mysql_databases, allowed),
                blobs: BlobsState::new(id, blobs.clone(), &component.blob_buckets),
                publish: PublishState::new(id, broker.clone(), &component.publish_queues),
                mail: MailState::new(id, mailer.clone(), component.send_mail),
            };
            let linked = LinkedComponent::load(
                runtime.engine(),
                &cache,
                &linker,
                id,
                &manifest.source_path(component),
                grants,
            )?;
            let triggered = manifest
                .amqp_triggers
                .iter()
                .any(|t| t.component() == Some(id.as_str()));
            match linked.queue {
                Some(pre) => {
                    queue_components.insert(
                        id.clone(),
                        Arc::new(QueueComponent::new(
                            id,
                            runtime.engine().clone(),
                            pre,
                            linked.grants.clone(),
                            runtime.limits().clone(),
                        )),
                    );
                }
                None if triggered => bail!(
                    "component `{id}` is used by [[trigger.amqp]] but does not export {}; export the queue handler interface",
                    crate::capabilities::queue::component::HANDLER_EXPORT
                ),
                None => {}
            }
            let routed = manifest.http_routes.iter().any(|r| &r.component == id);
            match linked.http {
                Some(pre) => {
                    components.insert(
                        id.clone(),
                        Arc::new(HttpComponent::new(
                            id,
                            runtime.engine().clone(),
                            pre,
                            linked.grants,
                            runtime.limits().clone(),
                            metrics.clone(),
                        )),
                    );
                }
                None if routed => bail!(
                    "component `{id}` is routed by [[trigger.http]] but does not export wasi:http/handler@0.3 or wasi:http/incoming-handler@0.2; build it as an HTTP component"
                ),
                None => {}
            }
            info.push(ComponentInfo {
                id: id.clone(),
                digest: linked.digest,
                cache: linked.cache,
                load_time: started.elapsed(),
            });
        }

        let app = Arc::new(App {
            router: Router::new(&manifest.http_routes),
            amqp_triggers: manifest.amqp_triggers.clone(),
            queue_components,
            components,
            info,
            metrics,
            sql,
            blobs,
            broker,
            mailer,
            listen_addr,
            _runtime: runtime,
        });
        let weak: Weak<dyn InternalDispatch> = Arc::downgrade(&app) as Weak<dyn InternalDispatch>;
        let _ = internal.set(weak);
        Ok(app)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn components(&self) -> &[ComponentInfo] {
        &self.info
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
        workers: &HashMap<String, Handler>,
    ) -> Result<Vec<Consumer>> {
        let mut consumers = Vec::new();
        for trigger in &self.amqp_triggers {
            let (handler, target): (Handler, String) = match trigger.target() {
                AmqpTarget::Component(id) => {
                    let Some(component) = self.queue_components.get(id).cloned() else {
                        bail!("component `{id}` has no queue handler");
                    };
                    let handler: Handler = Arc::new(move |delivery| {
                        let component = component.clone();
                        Box::pin(async move { component.invoke(delivery).await })
                    });
                    (handler, format!("component `{id}`"))
                }
                AmqpTarget::Worker(name) => match workers.get(name) {
                    Some(handler) => (handler.clone(), format!("worker `{name}`")),
                    None => {
                        tracing::info!(
                            queue = %trigger.queue,
                            "worker `{name}` is not run by this process; it consumes the queue elsewhere"
                        );
                        continue;
                    }
                },
            };
            let consumer = self
                .broker
                .consume(&trigger.queue, trigger.consume_options(), handler)
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

    /// Invokes HTTP component `id` with `request`.
    pub async fn invoke(
        &self,
        id: &str,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, InvokeError> {
        let component = self
            .components
            .get(id)
            .cloned()
            .ok_or_else(|| InvokeError::Trap {
                component: id.to_string(),
                reason: "it is not an HTTP component of this application".into(),
            })?;
        component.invoke(request).await
    }

    /// Checks that every configured backend answers.
    pub async fn check_backends(&self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(2), self.sql.ping())
            .await
            .context("the MySQL server did not answer within 2s")?
            .context("the MySQL server is not answering")?;
        tokio::time::timeout(Duration::from_secs(2), self.blobs.ping())
            .await
            .context("the blob store did not answer within 2s")?
            .context("the blob store is not answering")?;
        tokio::time::timeout(Duration::from_secs(2), self.broker.ping())
            .await
            .context("the queue broker did not answer within 2s")?
            .context("the queue broker is not answering")?;
        tokio::time::timeout(Duration::from_secs(2), self.mailer.ping())
            .await
            .context("the mail server did not answer within 2s")?
            .context("the mail server is not answering")
    }
}

impl InternalDispatch for App {
    fn dispatch(
        &self,
        component: &str,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>> {
        let target = self.components.get(component).cloned();
        let name = component.to_string();
        Box::pin(async move {
            let Some(target) = target else {
                tracing::warn!("no component `{name}` for http://{name}.spin.internal");
                return Err(HttpError::DestinationNotFound);
            };
            match target.invoke(request).await {
                Ok(response) => Ok(response),
                Err(e) => Ok(crate::trigger::http::json_error(e.status(), &e.to_string())),
            }
        })
    }
}

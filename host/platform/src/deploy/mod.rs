//! Hot redeploy: replace one component of a running application, on every
//! replica, without failing a request.
//!
//! A deploy ([`Deployer::deploy`]) goes:
//!
//! 1. **Compile and link** the new bytes off the executor
//!    (`spawn_blocking`), through the compile cache, against the same
//!    linker and the component's own grants. Refused (and nothing changes)
//!    when the bytes are not a component, import something the host does
//!    not provide (wasmtime's link error names it), import a capability the
//!    manifest entry does not grant ([`crate::capabilities::Grants::ungranted`]), or lack the export
//!    the component's triggers need.
//! 2. **Record** it in the blob store ([`store`]): the artifact under its
//!    sha256 and a version record. The first deploy of a component also
//!    records the version it replaces, so rollback can return to it.
//! 3. **Swap** it into the application's component map (see `components.rs`):
//!    requests and deliveries that started keep their version.
//! 4. **Announce** it on the broker's `spindle.deploys` broadcast; every
//!    other host reads the component's latest record from the blob store
//!    and swaps in the same artifact ([`Deployer::start`]).
//!
//! The blob store is the source of truth and events are only hints, so a
//! host that missed one (a broker reconnect, a restart) catches up by
//! re-reading the records, and a starting host swaps the deployed versions
//! in for the manifest's before it serves anything. It reads the records
//! until the blob store answers (a MongoDB may come up after the host),
//! and meanwhile answers app routes with 503 and `/readyz` with what it
//! waits for.
//!
//! History: records are replayed as a stack ([`history`]): a deploy pushes
//! its version, a rollback pops the current one (and stands in for the
//! version it returned to), so rolling back twice walks two versions back.
//! Deploying the version that already runs changes nothing.

pub(crate) mod store;

use crate::api::{ComponentStatus, DeployReportView, ErrorBody, History, millis};
use crate::capabilities::blobs::BlobStore;
use crate::capabilities::queue::{BROADCAST_DEPLOYS, Broker, Signal};
use crate::components::{ComponentSet, Linked, Running, Ungranted};
use crate::lifecycle::{Lifecycle, Startup};
use crate::manifest::AmqpTarget;
use crate::metrics::{DeployOutcome, Metrics};
pub use crate::version::{Action, VersionRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a deploy or rollback did not happen; nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no component `{component}` in the manifest; components are: {known}")]
    NotFound { component: String, known: String },
    #[error("refused, the running version keeps serving: {0}")]
    Refused(String),
    #[error(
        "component `{0}` has no earlier version to roll back to; deploy one with `spindle deploy`"
    )]
    NoPrevious(String),
    #[error("the deploy store (blob bucket `spindle-deploys`) failed: {0}")]
    Store(String),
}

impl DeployError {
    /// How a deploy or rollback that ended in this error is counted; `None`
    /// for a component the manifest does not have (no series is made for
    /// names a client invents).
    fn outcome(&self) -> Option<DeployOutcome> {
        match self {
            DeployError::NotFound { .. } => None,
            DeployError::Refused(_) | DeployError::NoPrevious(_) => Some(DeployOutcome::Refused),
            DeployError::Store(_) => Some(DeployOutcome::Failed),
        }
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            DeployError::NotFound { .. } => http::StatusCode::NOT_FOUND,
            DeployError::Refused(_) => http::StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::NoPrevious(_) => http::StatusCode::CONFLICT,
            DeployError::Store(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn store_err(e: store::StoreError) -> DeployError {
    DeployError::Store(e.to_string())
}

/// What a deploy or rollback did.
#[derive(Debug, Clone)]
pub struct DeployReport {
    pub record: VersionRecord,
    pub previous: VersionRecord,
    /// False when that version was already running (nothing changed).
    pub changed: bool,
    /// Compiling (or loading from the cache) and linking.
    pub compile_time: Duration,
    pub total_time: Duration,
}

impl From<&DeployReport> for DeployReportView {
    fn from(report: &DeployReport) -> Self {
        DeployReportView {
            component: report.record.component.clone(),
            changed: report.changed,
            version: (&report.record).into(),
            previous: (&report.previous).into(),
            compile_ms: millis(report.compile_time),
            total_ms: millis(report.total_time),
        }
    }
}

/// The history a component's records describe, oldest first; the last
/// entry is the current version.
pub(crate) fn history(records: Vec<VersionRecord>) -> Vec<VersionRecord> {
    let mut stack: Vec<VersionRecord> = Vec::new();
    for record in records {
        if record.action == Action::Rollback {
            stack.pop();
            if stack.last().is_some_and(|r| r.version == record.version) {
                stack.pop();
            }
        }
        stack.push(record);
    }
    stack
}

/// The deploy event sent to every host; it only says where to look.
#[derive(Serialize, Deserialize)]
struct Event {
    component: String,
    version: String,
    host: String,
}

/// Deploys, rolls back and follows other hosts' deploys: one at a time
/// on this host, recorded in the blob store, announced on the broker.
pub struct Deployer {
    components: Arc<ComponentSet>,
    lifecycle: Arc<Lifecycle>,
    /// The deploy records and artifacts live here ([`store`]).
    blobs: BlobStore,
    /// Deploys are announced to other hosts here.
    broker: Broker,
    metrics: Arc<Metrics>,
    host_id: String,
    /// One deploy, rollback or replica update at a time on this host.
    lock: tokio::sync::Mutex<()>,
}

impl Deployer {
    pub fn new(
        components: Arc<ComponentSet>,
        lifecycle: Arc<Lifecycle>,
        blobs: BlobStore,
        broker: Broker,
        metrics: Arc<Metrics>,
        host_id: String,
    ) -> Self {
        Deployer {
            components,
            lifecycle,
            blobs,
            broker,
            metrics,
            host_id,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn running(&self, id: &str) -> Result<Running, DeployError> {
        self.components
            .running(id)
            .ok_or_else(|| DeployError::NotFound {
                component: id.to_string(),
                known: self
                    .components
                    .manifest()
                    .components
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    async fn link_off_executor(&self, id: &str, wasm: Arc<[u8]>) -> Result<Linked, DeployError> {
        let components = self.components.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || components.link(&id, &wasm, Ungranted::Refuse))
            .await
            .map_err(|e| DeployError::Refused(format!("compiling panicked: {e}")))?
            .map_err(|e| DeployError::Refused(format!("{e:#}")))
    }

    fn swap(&self, id: &str, linked: Linked, wasm: Arc<[u8]>, record: VersionRecord) {
        self.components.swap(id, linked, wasm, record);
    }

    /// Makes `wasm` the running version of component `id` here, records it
    /// in the blob store and tells the other hosts. `source` says where the
    /// bytes came from. Counted in `spindle_deploys_total`.
    pub async fn deploy(
        &self,
        id: &str,
        wasm: Vec<u8>,
        action: Action,
        source: &str,
    ) -> Result<DeployReport, DeployError> {
        let result = self.deploy_uncounted(id, wasm, action, source).await;
        self.count_deploy(id, &result, DeployOutcome::Deployed);
        result
    }

    /// Returns component `id` to the version before the current one.
    /// Counted in `spindle_deploys_total`.
    pub async fn rollback(&self, id: &str) -> Result<DeployReport, DeployError> {
        let result = self.rollback_uncounted(id).await;
        self.count_deploy(id, &result, DeployOutcome::RolledBack);
        result
    }

    fn count_deploy(
        &self,
        id: &str,
        result: &Result<DeployReport, DeployError>,
        success: DeployOutcome,
    ) {
        let outcome = match result {
            Ok(_) => Some(success),
            Err(e) => e.outcome(),
        };
        if let Some(outcome) = outcome {
            self.metrics.record_deploy(id, outcome);
        }
    }

    async fn deploy_uncounted(
        &self,
        id: &str,
        wasm: Vec<u8>,
        action: Action,
        source: &str,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        self.running(id)?;
        let _one_at_a_time = self.lock.lock().await;
        let running = self.running(id)?;
        let wasm: Arc<[u8]> = wasm.into();
        let linked = self.link_off_executor(id, wasm.clone()).await?;
        let compile_time = started.elapsed();
        let record = VersionRecord::new(id, &linked.digest, action, source, &self.host_id);
        if linked.digest == running.record.version {
            return Ok(DeployReport {
                record: running.record.clone(),
                previous: running.record,
                changed: false,
                compile_time,
                total_time: started.elapsed(),
            });
        }
        self.record_base(id, &running).await?;
        store::put_artifact(self.blobs(), id, &record.version, &wasm)
            .await
            .map_err(store_err)?;
        store::add_record(self.blobs(), &record)
            .await
            .map_err(store_err)?;
        self.swap(id, linked, wasm, record.clone());
        tracing::info!(component = %id, version = %record.short(), from = %running.record.short(), "{} of {source} is serving", action.as_str());
        self.announce(&record).await;
        Ok(DeployReport {
            record,
            previous: running.record,
            changed: true,
            compile_time,
            total_time: started.elapsed(),
        })
    }

    async fn rollback_uncounted(&self, id: &str) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        self.running(id)?;
        let _one_at_a_time = self.lock.lock().await;
        let running = self.running(id)?;
        let stack = history(store::records(self.blobs(), id).await.map_err(store_err)?);
        let Some(target) = stack.len().checked_sub(2).map(|i| stack[i].clone()) else {
            return Err(DeployError::NoPrevious(id.to_string()));
        };
        let wasm: Arc<[u8]> = store::artifact(self.blobs(), &target.version)
            .await
            .map_err(store_err)?
            .into();
        let linked = self.link_off_executor(id, wasm.clone()).await?;
        let compile_time = started.elapsed();
        let record = VersionRecord::new(
            id,
            &target.version,
            Action::Rollback,
            &target.source,
            &self.host_id,
        );
        store::add_record(self.blobs(), &record)
            .await
            .map_err(store_err)?;
        self.swap(id, linked, wasm, record.clone());
        tracing::info!(component = %id, version = %record.short(), from = %running.record.short(), "rolled back");
        self.announce(&record).await;
        Ok(DeployReport {
            record,
            previous: running.record,
            changed: true,
            compile_time,
            total_time: started.elapsed(),
        })
    }

    /// Before the first deploy of a component, stores the version it
    /// replaces, so the history starts there.
    async fn record_base(&self, id: &str, running: &Running) -> Result<(), DeployError> {
        let records = store::records(self.blobs(), id).await.map_err(store_err)?;
        if !records.is_empty() {
            return Ok(());
        }
        store::put_artifact(self.blobs(), id, &running.record.version, &running.wasm)
            .await
            .map_err(store_err)?;
        store::add_record(self.blobs(), &running.record)
            .await
            .map_err(store_err)
    }

    async fn announce(&self, record: &VersionRecord) {
        let event = Event {
            component: record.component.clone(),
            version: record.version.clone(),
            host: self.host_id.clone(),
        };
        let body = serde_json::to_vec(&event).unwrap_or_default();
        if let Err(e) = self.broker.broadcast(BROADCAST_DEPLOYS, &body).await {
            // Replicas still catch up when they next resubscribe or restart.
            tracing::warn!(component = %record.component, "could not announce the deploy to other hosts: {e}");
        }
    }

    /// Brings component `id` to its latest recorded version, if this host
    /// runs another one (a deploy made through another host).
    async fn catch_up(&self, id: &str) -> Result<(), DeployError> {
        let _one_at_a_time = self.lock.lock().await;
        let running = self.running(id)?;
        let Some(current) =
            history(store::records(self.blobs(), id).await.map_err(store_err)?).pop()
        else {
            return Ok(());
        };
        if current.version == running.record.version {
            return Ok(());
        }
        let wasm: Arc<[u8]> = store::artifact(self.blobs(), &current.version)
            .await
            .map_err(store_err)?
            .into();
        let linked = self.link_off_executor(id, wasm.clone()).await?;
        tracing::info!(
            component = %id,
            version = %current.short(),
            from = %running.record.short(),
            "now serving the version {} by {}",
            current.action.as_str(),
            current.host
        );
        self.swap(id, linked, wasm, current);
        Ok(())
    }

    /// Brings every component to its latest recorded version. One whose
    /// version does not link (e.g. a grant was removed from the manifest
    /// since) keeps the version it runs, with a warning; a blob store that
    /// does not answer ends the round with its error.
    async fn catch_up_all(&self) -> Result<(), DeployError> {
        for id in self.components.manifest().components.keys() {
            match self.catch_up(id).await {
                Ok(()) => {}
                Err(e @ DeployError::Store(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(component = %id, "cannot run the deployed version, keeping the running one: {e}");
                }
            }
        }
        Ok(())
    }

    /// Reads the deploy records until the blob store answers, backing off
    /// as [`crate::backoff`] does between attempts, then lets requests and
    /// messages through (see [`Startup`]).
    async fn finish_startup(&self) {
        let started = Instant::now();
        crate::backoff::until_ok(
            || self.catch_up_all(),
            |e: &DeployError, wait| {
                let why = format!(
                    "reading the deploy records from {}: {e}",
                    self.blobs().describe()
                );
                tracing::warn!("{why}; retrying in {wait:?}");
                self.lifecycle.set_startup(Startup::Waiting(why));
            },
        )
        .await;
        self.lifecycle.set_startup(Startup::Done);
        tracing::info!("deploy records read in {:.1?}; serving", started.elapsed());
    }

    /// Finishes start-up and follows deploys made through other hosts:
    /// subscribes to the deploy broadcast (so a failure shows at
    /// start-up), then in the background reads the deploy records (see
    /// [`Self::finish_startup`]) and applies each announced deploy until
    /// the returned task is aborted. Nothing is served before it is called.
    pub async fn start(
        self: &Arc<Self>,
    ) -> Result<tokio::task::JoinHandle<()>, crate::capabilities::queue::QueueError> {
        let mut subscription = self.broker.subscribe(BROADCAST_DEPLOYS).await?;
        let app = self.clone();
        Ok(tokio::spawn(async move {
            app.finish_startup().await;
            while let Some(signal) = subscription.next().await {
                match signal {
                    Signal::Message(body) => match serde_json::from_slice::<Event>(&body) {
                        Ok(event) if event.host == app.host_id => {}
                        Ok(event) => {
                            if let Err(e) = app.catch_up(&event.component).await {
                                tracing::warn!(component = %event.component, version = %event.version, "cannot apply the deploy from {}: {e}", event.host);
                            }
                        }
                        Err(e) => tracing::warn!("ignoring a malformed deploy event: {e}"),
                    },
                    // Events may have been missed while disconnected.
                    Signal::Resubscribed => {
                        if let Err(e) = app.catch_up_all().await {
                            tracing::warn!("cannot catch up with deploys after resubscribing: {e}");
                        }
                    }
                }
            }
        }))
    }

    /// Per component: the running version, its history and its triggers.
    pub async fn deploy_status(&self) -> Vec<ComponentStatus> {
        let manifest = self.components.manifest();
        let mut list = Vec::new();
        for id in manifest.components.keys() {
            let Ok(running) = self.running(id) else {
                continue;
            };
            let history = match store::records(self.blobs(), id).await {
                Ok(records) => {
                    History::Versions(history(records).iter().rev().map(Into::into).collect())
                }
                Err(e) => History::Unreadable(ErrorBody {
                    error: e.to_string(),
                }),
            };
            let routes: Vec<String> = manifest
                .http_routes
                .iter()
                .filter(|r| r.component() == Some(id.as_str()))
                .map(|r| r.route.to_string())
                .collect();
            let queues: Vec<String> = manifest
                .amqp_triggers
                .iter()
                .filter(|t| matches!(t.target(), AmqpTarget::Component(c) if c == id))
                .map(|t| t.queue.clone())
                .collect();
            list.push(ComponentStatus {
                component: id.clone(),
                current: (&running.record).into(),
                routes,
                queues,
                history,
            });
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: &str, action: Action, at: u64) -> VersionRecord {
        VersionRecord {
            component: "c".into(),
            version: version.into(),
            action,
            source: String::new(),
            host: "h".into(),
            deployed_at_ms: at,
        }
    }

    #[test]
    fn history_replays_deploys_and_rollbacks_as_a_stack() {
        let records = vec![
            rec("v0", Action::Manifest, 1),
            rec("v1", Action::Deploy, 2),
            rec("v2", Action::Watch, 3),
            rec("v1", Action::Rollback, 4),
        ];
        let versions = |s: Vec<VersionRecord>| s.into_iter().map(|r| r.version).collect::<Vec<_>>();
        assert_eq!(versions(history(records.clone())), ["v0", "v1"]);
        let mut more = records;
        more.push(rec("v0", Action::Rollback, 5));
        assert_eq!(versions(history(more.clone())), ["v0"]);
        more.push(rec("v3", Action::Deploy, 6));
        assert_eq!(versions(history(more)), ["v0", "v3"]);
    }

    #[test]
    fn ungranted_capability_imports_are_named_with_their_grant() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("spin.toml");
        std::fs::write(
            &path,
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.probe]\nsource = \"x.wasm\"\nsend_mail = true\n",
        )
        .unwrap();
        let manifest = crate::manifest::Manifest::load(&path).unwrap();
        let grants = crate::capabilities::registry::grants(&manifest)
            .unwrap()
            .remove("probe")
            .unwrap();
        let imports = vec![
            "wasi:cli/environment@0.2.6".to_string(),
            "spindle:mail/mailer@0.1.0".to_string(),
            "spindle:blobs/store@0.1.0".to_string(),
        ];
        let e = grants.ungranted(&imports).join(", ");
        assert!(
            e.contains("spindle:blobs/store@0.1.0 (grant: blob_buckets"),
            "{e}"
        );
        assert!(!e.contains("mailer"), "{e}");
        assert!(grants.ungranted(&imports[..2]).is_empty());
    }
}

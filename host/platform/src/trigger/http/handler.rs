//! Invoking one HTTP component: a fresh instance per request, driven by
//! wasmtime-wasi-http's `ProxyHandler` (which serves both `wasi:http@0.2`
//! and `@0.3` components), with the request timeout and memory cap applied
//! and guest failures turned into 500/504 answers.

use crate::metrics::Metrics;
use crate::runtime::admission::{Gate, Overloaded};
use crate::runtime::instance::{Grants, InstanceState, Invocation};
use crate::runtime_config::Limits;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ProxyPre,
    ShouldAccept, TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

/// Why an invocation produced no response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("component `{component}` did not respond within {timeout:?}")]
    Timeout {
        component: String,
        timeout: Duration,
    },
    #[error("component `{component}` exceeded its memory limit of {limit_mb} MiB")]
    Memory { component: String, limit_mb: u64 },
    #[error("component `{component}` could not be instantiated: {reason}")]
    Instantiation { component: String, reason: String },
    #[error("component `{component}` failed: {reason}")]
    Trap { component: String, reason: String },
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("{0}")]
    BodyTooSlow(super::body::BodyTooSlow),
    /// The host has not finished starting (it waits for a backend).
    #[error("the host is starting and does not serve yet: {0}; retry shortly")]
    Starting(String),
}

impl InvokeError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            InvokeError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            InvokeError::BodyTooSlow(_) => http::StatusCode::REQUEST_TIMEOUT,
            InvokeError::Instantiation { .. }
            | InvokeError::Overloaded(_)
            | InvokeError::Starting(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Memory { .. } | InvokeError::Trap { .. } => {
                http::StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Seconds a client should wait before retrying, for answers that say so.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            InvokeError::Overloaded(o) => Some(o.retry_after_secs()),
            InvokeError::Instantiation { .. } => Some(1),
            InvokeError::Starting(_) => Some(STARTING_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The JSON error answer, with `Retry-After` when retrying helps.
    pub fn into_response(self) -> http::Response<WasiBody> {
        let mut response = crate::trigger::http::json_error(self.status(), &self.to_string());
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        // The rest of a stalled body is not worth waiting for.
        if matches!(self, InvokeError::BodyTooSlow(_)) {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// `Retry-After` while the host is starting: about the longest pause
/// between its attempts to reach the blob store.
const STARTING_RETRY_AFTER_SECS: u64 = 5;

/// Runs one HTTP component.
pub struct HttpComponent {
    id: Arc<str>,
    handler: ProxyHandler<ComponentState>,
    limits: Limits,
    gate: Arc<Gate>,
}

impl HttpComponent {
    pub fn new(
        id: &str,
        engine: Engine,
        pre: ProxyPre<InstanceState>,
        grants: Grants,
        limits: Limits,
        gate: Arc<Gate>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let state = ComponentState {
            id: id.into(),
            engine,
            pre,
            grants,
            limits: limits.clone(),
            gate: gate.clone(),
            metrics,
        };
        HttpComponent {
            id: id.into(),
            handler: ProxyHandler::new(state),
            limits,
            gate,
        }
    }

    /// Handles one request on a fresh instance, once the component is
    /// below its cap and the host has memory for it; `lane` is the route it
    /// came by, which it waits in turn with.
    pub async fn invoke(
        &self,
        request: http::Request<WasiBody>,
        lane: &str,
    ) -> Result<http::Response<WasiBody>, InvokeError> {
        let admitted = self.gate.admit(lane).await?;
        let slot: Arc<OnceLock<Arc<Invocation>>> = Arc::default();
        let timeout = self.limits.request_timeout();
        let floor = super::body::MinRate::from_limits(&self.limits);
        let request = request.map(|body| {
            super::body::Progress::new(body, slot.clone(), timeout, floor).boxed_unsync()
        });
        let result = self.handler.handle(slot.clone(), request).await;
        let invocation = slot.get();
        // The instance lives on while its response body streams; the slot
        // goes with it.
        if let Some(invocation) = invocation {
            invocation.hold(admitted);
        }
        match result {
            // The component may have answered the body's error itself.
            Ok(_) if invocation.is_some_and(|i| i.body_stalled()) => {
                Err(InvokeError::BodyTooSlow(super::body::BodyTooSlow(floor)))
            }
            Ok(response) => {
                // The response exists; its body may now stream for longer.
                if let Some(invocation) = invocation {
                    invocation.extend(self.limits.body_timeout());
                }
                Ok(response)
            }
            Err(e) => Err(self.classify(e, invocation.map(|i| &**i))),
        }
    }

    fn classify(&self, e: wasmtime::Error, invocation: Option<&Invocation>) -> InvokeError {
        let component = self.id.to_string();
        if invocation.is_some_and(Invocation::body_stalled) {
            return InvokeError::BodyTooSlow(super::body::BodyTooSlow(
                super::body::MinRate::from_limits(&self.limits),
            ));
        }
        if invocation.is_some_and(Invocation::timed_out) || e.is::<ExpirationError>() {
            return InvokeError::Timeout {
                component,
                timeout: self.limits.request_timeout(),
            };
        }
        if invocation.is_some_and(Invocation::memory_exceeded) {
            return InvokeError::Memory {
                component,
                limit_mb: self.gate.memory_limit_mb(),
            };
        }
        if invocation.is_some_and(Invocation::budget_exhausted) {
            return InvokeError::Overloaded(Overloaded::Memory {
                budget_mb: self.gate.budget_mb(),
                waited: self.limits.queue_timeout(),
            });
        }
        if let Some(inst) = e.downcast_ref::<InstantiationError<Arc<OnceLock<Arc<Invocation>>>>>() {
            return InvokeError::Instantiation {
                component,
                reason: format!("{:#}", inst.error),
            };
        }
        tracing::warn!(component = %self.id, "invocation failed: {e:#}");
        let reason = if e.is::<TrapOrPanicError>() {
            "it trapped; the host log has the guest's message".to_string()
        } else {
            e.root_cause().to_string()
        };
        InvokeError::Trap { component, reason }
    }
}

/// What every worker of one component shares.
struct ComponentState {
    id: Arc<str>,
    engine: Engine,
    pre: ProxyPre<InstanceState>,
    grants: Grants,
    limits: Limits,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
}

impl HandlerState for ComponentState {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiry;
    type WorkerState = OneShot;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiry, OneShot>> {
        let started = Instant::now();
        let mut store = Store::new(
            &self.engine,
            InstanceState::new(&self.grants, &self.gate, self.limits.request_timeout()),
        );
        InstanceState::configure(&mut store);
        let invocation = store.data().invocation();
        let proxy = self.pre.instantiate_async(&mut store).await?;
        self.metrics
            .record_instantiation(&self.id, started.elapsed());
        Ok(Instance {
            store,
            proxy,
            view: <InstanceState as WasiHttpView>::http,
            expiration: Expiry::new(invocation),
            state: OneShot {
                id: self.id.clone(),
            },
        })
    }
}

/// A worker that takes exactly one request: every request gets a fresh
/// instance, so nothing a guest leaves in memory is seen by the next one.
struct OneShot {
    id: Arc<str>,
}

impl WorkerState for OneShot {
    type StoreData = InstanceState;
    type RequestData = Arc<OnceLock<Arc<Invocation>>>;

    fn should_accept_request(&self, _concurrent: usize, total: usize) -> ShouldAccept {
        if total == 0 {
            ShouldAccept::Yes
        } else {
            ShouldAccept::Never
        }
    }

    fn on_request_start(
        &self,
        store: StoreContextMut<'_, InstanceState>,
        slot: Self::RequestData,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let invocation = store.data().invocation();
        let _ = slot.set(invocation.clone());
        Box::pin(invocation.until_expired())
    }

    fn drop(&self, _store: Store<InstanceState>, result: wasmtime::Result<()>) {
        if let Err(e) = result {
            tracing::debug!(component = %self.id, "instance ended with an error: {e:#}");
        }
    }
}

/// When a worker's instance is dropped: at its invocation's deadline,
/// which starts at `request_timeout`, moves while the request body keeps
/// arriving, and becomes `body_timeout` once the response exists.
struct Expiry {
    invocation: Arc<Invocation>,
    armed_for: Option<Instant>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Expiry {
    fn new(invocation: Arc<Invocation>) -> Self {
        let deadline = invocation.deadline();
        Expiry {
            invocation,
            armed_for: Some(deadline),
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }
}

impl WorkerExpiration for Expiry {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _status: WorkerStatus,
        _start: Instant,
    ) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let deadline = this.invocation.deadline();
            if this.armed_for != Some(deadline) {
                this.sleep.as_mut().reset(deadline.into());
                this.armed_for = Some(deadline);
            }
            match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) if this.invocation.deadline() > deadline => continue,
                other => return other,
            }
        }
    }
}

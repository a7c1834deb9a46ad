//! Invoking one HTTP component: a fresh instance per request, driven by
//! wasmtime-wasi-http's `ProxyHandler` (which serves both `wasi:http@0.2`
//! and `@0.3` components), with the request timeout and memory cap applied
//! and guest failures turned into 500/504 answers.

use super::Invoker;
use crate::metrics::Metrics;
use crate::runtime::component::LinkedComponent;
use crate::runtime::instance::{InstanceState, Invocation};
use anyhow::Context as _;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ProxyPre,
    ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

pub use super::InvokeError;

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
        let mut response = crate::listener::json_error(self.status(), &self.to_string());
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

/// Which `wasi:http` handler a linked component exports, if any.
pub fn proxy_pre(
    engine: &Engine,
    id: &str,
    linked: &LinkedComponent,
) -> anyhow::Result<Option<ProxyPre<InstanceState>>> {
    let mut p3 = false;
    let mut p2 = false;
    for name in linked.exports(engine) {
        p3 |= name.starts_with("wasi:http/handler@0.3");
        p2 |= name.starts_with("wasi:http/incoming-handler@0.2");
    }
    let pre = linked.pre.clone();
    let proxy = if p3 {
        wasmtime_wasi_http::p3::bindings::ServicePre::new(pre).map(ProxyPre::P3)
    } else if p2 {
        wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map(ProxyPre::P2)
    } else {
        return Ok(None);
    };
    proxy
        .map(Some)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component `{id}`: its wasi:http export does not match"))
}

/// Runs one HTTP component.
pub struct HttpComponent {
    invoker: Arc<Invoker>,
    handler: ProxyHandler<ComponentState>,
}

impl HttpComponent {
    pub fn new(invoker: Arc<Invoker>, pre: ProxyPre<InstanceState>, metrics: Arc<Metrics>) -> Self {
        let state = ComponentState {
            invoker: invoker.clone(),
            pre,
            metrics,
        };
        HttpComponent {
            invoker,
            handler: ProxyHandler::new(state),
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
        let limits = self.invoker.limits();
        let admitted = self.invoker.gate().admit(lane).await?;
        let slot: Arc<OnceLock<Arc<Invocation>>> = Arc::default();
        let timeout = limits.request_timeout();
        let floor = super::body::MinRate::from_limits(limits);
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
        let too_slow = || InvokeError::BodyTooSlow(super::body::BodyTooSlow(floor).to_string());
        match result {
            // The component may have answered the body's error itself.
            Ok(_) if invocation.is_some_and(|i| i.body_stalled()) => Err(too_slow()),
            Ok(response) => {
                // The response exists; its body may now stream for longer.
                if let Some(invocation) = invocation {
                    invocation.extend(limits.body_timeout());
                }
                Ok(response)
            }
            Err(_) if invocation.is_some_and(|i| i.body_stalled()) => Err(too_slow()),
            Err(e) => {
                let invocation = invocation.map(|i| &**i);
                if let Some(limit) = self.invoker.limit_hit(invocation) {
                    return Err(limit);
                }
                if e.is::<ExpirationError>() {
                    return Err(self.invoker.timeout());
                }
                match e.downcast_ref::<InstantiationError<Arc<OnceLock<Arc<Invocation>>>>>() {
                    Some(inst) => Err(self.invoker.instantiation(&inst.error)),
                    None => Err(self.invoker.classify(&e, invocation)),
                }
            }
        }
    }
}

/// What every worker of one component shares.
struct ComponentState {
    invoker: Arc<Invoker>,
    pre: ProxyPre<InstanceState>,
    metrics: Arc<Metrics>,
}

impl HandlerState for ComponentState {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiry;
    type WorkerState = OneShot;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiry, OneShot>> {
        let started = Instant::now();
        let mut store = self.invoker.store().map_err(wasmtime::Error::from_anyhow)?;
        let invocation = store.data().invocation();
        let proxy = self.pre.instantiate_async(&mut store).await?;
        self.metrics
            .record_instantiation(self.invoker.id(), started.elapsed());
        Ok(Instance {
            store,
            proxy,
            view: <InstanceState as WasiHttpView>::http,
            expiration: Expiry::new(invocation),
            state: OneShot {
                id: self.invoker.id().clone(),
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

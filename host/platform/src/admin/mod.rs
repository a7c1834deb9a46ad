//! The admin listener: liveness, readiness and Prometheus metrics, on an
//! address of its own so probes and scrapes never queue behind user traffic,
//! and the deploy API:
//!
//! - `GET /components`: per component, the running version (sha256 prefix),
//!   when, how and from where it was deployed, its history, routes and queues.
//! - `PUT /components/NAME`: the body is a component (at most
//!   [`MAX_COMPONENT_BYTES`], else 413) to hot-redeploy as NAME; the
//!   `spindle-source` header says where it came from (for the record).
//!   200 with what changed; 404 for a component not in the manifest; 422
//!   when it is refused (the message says why; the old version serves on).
//! - `POST /components/NAME/rollback`: back to the previous version (409
//!   when there is none).
//! - `GET /queues/QUEUE/dead-letters[?limit=N]`: the oldest dead letters
//!   ([`DeadLetterView`], at most N, default 100, at most 1 000), left in
//!   place; `POST /queues/QUEUE/dead-letters/replay[?limit=N]` puts them
//!   back on the queue with their attempts reset ([`ReplayReport`]).
//!
//! Access: the deploy API and `/queues/*/dead-letters` always need
//! `Authorization: Bearer TOKEN` (compared in constant time; 401 otherwise,
//! before anything is read or changed). The token is `SPINDLE_ADMIN_TOKEN`,
//! or else one generated into `<state-dir>/admin-token` ([`token`]); beyond
//! loopback `spindle up` needs `SPINDLE_ADMIN_TOKEN`, as a generated token
//! is only readable on this machine. `/healthz`, `/readyz` and `/metrics`
//! stay open for probes and scrapers.
//!
//! Browsers are kept out of every route, so a web page cannot reach the
//! API through the user's browser (DNS rebinding, cross-site requests):
//! a request with an `Origin` header gets 403, and one whose `Host` is
//! neither the listen address nor a loopback name gets 421. On an
//! unspecified listen address (`0.0.0.0`) any IP literal counts as the
//! listen address (probes and scrapers use the pod's IP); over TLS any
//! `Host` is accepted, as the certificate already binds the name.
//!
//! With a certificate ([`tls::acceptor`]) every route is served over TLS
//! only. Connections have the limits of [`crate::listener`], and a deploy
//! upload the minimum body rate (408 below it).

pub mod probes;
pub mod tls;
pub mod token;

pub use crate::api::{DeadLetterView, ReplayReport};

use crate::api::DeployReportView;
use crate::app::App;
use crate::deploy::Action;
use crate::invoke::body::{BodyTooSlow, MinRate, RateCheck};
use crate::listener::json_error;
use crate::listener::{Handler, Hygiene};
use anyhow::Context;
use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use probes::json;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::WasiBody;

/// The largest component the deploy API accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

/// The header a deploy names its source file in.
pub const SOURCE_HEADER: &str = "spindle-source";

/// Whether `request` carries `Authorization: Bearer <token>`.
fn authorized(token: &str, request: &http::request::Parts) -> bool {
    let presented = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Lengths may differ; `ct_eq` on slices is then false without leaking
    // where they differ.
    bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

/// Refuses what a browser sends: any `Origin` (403), and a `Host` that is
/// not this listener (421). See the module docs.
fn refuse_browsers(
    admin: &AdminHandler,
    request: &http::request::Parts,
) -> Option<http::Response<WasiBody>> {
    if request.headers.contains_key(http::header::ORIGIN) {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "the admin API does not answer requests from web pages (the request has an Origin header); use the spindle CLI or curl",
        ));
    }
    if admin.tls {
        return None;
    }
    let host = request.headers.get(http::header::HOST).map(|h| {
        h.to_str()
            .ok()
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
    });
    match host {
        // HTTP/1.0 clients send no Host; browsers always do.
        None => None,
        Some(Some(host)) if admin.host_allowed(host.host()) => None,
        Some(_) => Some(json_error(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "the admin API answers only for its listen address {} or a loopback name (localhost, 127.0.0.1); the request's Host header names something else",
                admin.local
            ),
        )),
    }
}

async fn route(
    admin: &AdminHandler,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<WasiBody> {
    let app = &*admin.app;
    let (parts, body) = request.into_parts();
    let body = SlowBodyGuard::new(body, admin.min_rate);
    if let Some(refusal) = refuse_browsers(admin, &parts) {
        discard(body).await;
        return refusal;
    }
    let path = parts.uri.path().to_string();
    let protected = path.starts_with("/components") || path.starts_with("/queues/");
    if protected && !authorized(&admin.token, &parts) {
        // Read (and drop) what the client sends, up to the deploy limit, so
        // it gets this answer rather than a connection reset mid-upload.
        discard(body).await;
        return json_error(
            StatusCode::UNAUTHORIZED,
            "this admin endpoint needs `Authorization: Bearer TOKEN`: the SPINDLE_ADMIN_TOKEN spindle up was started with, or else the token in its <state-dir>/admin-token (the spindle CLI reads either)",
        );
    }
    if let Some(rest) = path.strip_prefix("/components")
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return components(app, &parts, body, rest).await;
    }
    let path = path.as_str();
    if let Some(rest) = path.strip_prefix("/queues/") {
        let limit = match query_limit(parts.uri.query()) {
            Ok(limit) => limit,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        match (&parts.method, rest.split_once('/')) {
            (&http::Method::GET, Some((queue, "dead-letters"))) if !queue.is_empty() => {
                return dead_letters(app, queue, limit).await;
            }
            (&http::Method::POST, Some((queue, "dead-letters/replay"))) if !queue.is_empty() => {
                return replay(app, queue, limit).await;
            }
            _ => {}
        }
    }
    if path == "/readyz" && app.is_draining() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down; in-flight requests are finishing",
        );
    }
    match probes::answer(app, path).await {
        Some(response) => response,
        None => json_error(
            StatusCode::NOT_FOUND,
            &format!(
                "no admin endpoint {path}; try /healthz, /readyz, /metrics, /components, /queues/QUEUE/dead-letters or POST /queues/QUEUE/dead-letters/replay"
            ),
        ),
    }
}

impl probes::Probed for App {
    // Components are compiled before the admin listener starts, so
    // readiness is down to the deploy records and the backends.
    fn readiness(&self) -> impl Future<Output = crate::lifecycle::Readiness> + Send {
        App::readiness(self)
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        App::metrics(self)
    }
}

/// The deploy API; `rest` is the path after `/components`.
async fn components(
    app: &App,
    parts: &http::request::Parts,
    body: SlowBodyGuard,
    rest: &str,
) -> http::Response<WasiBody> {
    let method = &parts.method;
    let name = rest.trim_start_matches('/');
    let result = match (method, name.split_once('/')) {
        (&http::Method::GET, _) if name.is_empty() => {
            return json(StatusCode::OK, &app.deploy_status().await);
        }
        (&http::Method::PUT, None) if !name.is_empty() => {
            let wasm = match read_component(parts, body).await {
                Ok(wasm) => wasm,
                Err(response) => return response,
            };
            let source = parts
                .headers
                .get(SOURCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("admin API")
                .to_string();
            app.deploy(name, wasm.to_vec(), Action::Deploy, &source)
                .await
        }
        (&http::Method::POST, Some((name, "rollback"))) => app.rollback(name).await,
        _ => {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no admin endpoint {method} /components{rest}; try GET /components, PUT /components/NAME or POST /components/NAME/rollback"
                ),
            );
        }
    };
    match result {
        Ok(report) => json(StatusCode::OK, &DeployReportView::from(&report)),
        Err(e) => json_error(e.status(), &e.to_string()),
    }
}

async fn discard(mut body: SlowBodyGuard) {
    let mut seen = 0;
    while seen <= MAX_COMPONENT_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

async fn read_component(
    parts: &http::request::Parts,
    body: SlowBodyGuard,
) -> Result<Bytes, http::Response<WasiBody>> {
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a component may be at most {MAX_COMPONENT_BYTES} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_COMPONENT_BYTES as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, MAX_COMPONENT_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => match e.downcast_ref::<ReadError>() {
            Some(ReadError::TooSlow(slow)) => {
                let mut response = json_error(StatusCode::REQUEST_TIMEOUT, &slow.to_string());
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                Err(response)
            }
            _ => Err(json_error(
                StatusCode::BAD_REQUEST,
                &format!("reading the component failed: {e}"),
            )),
        },
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    TooSlow(#[from] BodyTooSlow),
}

/// A request body held to the minimum rate (`[limits]`
/// `min_body_rate_bytes_per_sec`), so a trickled deploy cannot hold a
/// connection open indefinitely.
struct SlowBodyGuard {
    inner: hyper::body::Incoming,
    rate: RateCheck,
}

impl SlowBodyGuard {
    fn new(inner: hyper::body::Incoming, floor: MinRate) -> Self {
        SlowBodyGuard {
            inner,
            rate: RateCheck::new(floor),
        }
    }
}

impl Body for SlowBodyGuard {
    type Data = Bytes;
    type Error = ReadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Err(slow) = this.rate.observe(cx, &polled) {
            return Poll::Ready(Some(Err(slow.into())));
        }
        polled.map(|frame| frame.map(|f| f.map_err(ReadError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How many dead letters one request lists or replays by default, and at most.
const DEAD_LETTER_PAGE: usize = 100;
const DEAD_LETTER_PAGE_MAX: usize = 1_000;

/// `?limit=N` of a dead-letter request.
fn query_limit(query: Option<&str>) -> Result<usize, String> {
    let Some(raw) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("limit="))
    else {
        return Ok(DEAD_LETTER_PAGE);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=DEAD_LETTER_PAGE_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "limit must be a whole number from 1 to {DEAD_LETTER_PAGE_MAX}, not {raw:?}"
        )),
    }
}

/// The oldest dead letters of a queue, so an operator can see what failed
/// and why without a broker console.
async fn dead_letters(app: &App, queue: &str, limit: usize) -> http::Response<WasiBody> {
    match app.broker().dead_letters(queue, limit).await {
        Ok(letters) => {
            let list: Vec<DeadLetterView> = letters
                .into_iter()
                .map(|d| DeadLetterView {
                    message_id: d.message_id,
                    attempt: d.attempt,
                    reason: d.reason,
                    dead_at_ms: d.dead_at_ms,
                    body: String::from_utf8_lossy(&d.body).into_owned(),
                })
                .collect();
            json(StatusCode::OK, &list)
        }
        Err(e) => queue_error(e),
    }
}

/// Puts dead letters back on their queue, oldest first.
async fn replay(app: &App, queue: &str, limit: usize) -> http::Response<WasiBody> {
    match app.broker().replay_dead_letters(queue, limit).await {
        Ok(replayed) => {
            tracing::info!(
                queue,
                replayed,
                "dead letters replayed through the admin API"
            );
            json(
                StatusCode::OK,
                &ReplayReport {
                    queue: queue.to_string(),
                    replayed,
                },
            )
        }
        Err(e) => queue_error(e),
    }
}

fn queue_error(e: crate::capabilities::queue::QueueError) -> http::Response<WasiBody> {
    use crate::capabilities::queue::QueueError;
    match e {
        e @ QueueError::UnknownQueue { .. } => json_error(StatusCode::NOT_FOUND, &e.to_string()),
        e => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The admin listener's socket, the token its deploy API requires, and its
/// TLS setup when it has one.
pub struct AdminListener {
    listener: TcpListener,
    token: Arc<str>,
    tls: Option<TlsAcceptor>,
}

impl AdminListener {
    /// Binds `addr`. The token is `env_token` (`SPINDLE_ADMIN_TOKEN`; an
    /// empty one counts as none), or else the one in
    /// `<state_dir>/admin-token`, generated if missing. An address beyond
    /// loopback needs `env_token`: anyone who can reach the deploy API can
    /// run code on the host, and remote clients cannot read the file.
    pub async fn bind(
        addr: SocketAddr,
        env_token: Option<String>,
        tls: Option<TlsAcceptor>,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        let env_token = env_token.filter(|t| !t.is_empty());
        let token = match env_token {
            Some(token) => token,
            None if !addr.ip().is_loopback() => anyhow::bail!(
                "the admin API would listen on {addr}, beyond loopback, without a token; set SPINDLE_ADMIN_TOKEN (clients send it as `Authorization: Bearer ...`) or use --admin-listen 127.0.0.1:PORT"
            ),
            None => token::load_or_create(state_dir)?,
        };
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for the admin API; pick another --admin-listen")
        })?;
        Ok(AdminListener {
            listener,
            token: token.into(),
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What the admin routes share.
struct AdminHandler {
    app: Arc<App>,
    token: Arc<str>,
    /// The listener's own address, for the `Host` check.
    local: SocketAddr,
    tls: bool,
    min_rate: MinRate,
}

impl AdminHandler {
    /// Whether `host` (from a `Host` header) names this listener: a loopback
    /// name or address, the listen address, or on an unspecified listen
    /// address any IP literal.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host.trim_start_matches('[').trim_end_matches(']');
        if name.eq_ignore_ascii_case("localhost")
            || name.to_ascii_lowercase().ends_with(".localhost")
        {
            return true;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            return false;
        };
        ip.is_loopback() || ip == self.local.ip() || self.local.ip().is_unspecified()
    }
}

impl Handler for AdminHandler {
    async fn handle(
        self: Arc<Self>,
        request: http::Request<hyper::body::Incoming>,
        _client: SocketAddr,
    ) -> http::Response<WasiBody> {
        route(&self, request).await
    }
}

/// Serves the admin API until `shutdown` (see the module docs), then lets
/// open requests finish for up to `drain`.
pub async fn serve(
    admin: AdminListener,
    app: Arc<App>,
    hygiene: Hygiene,
    min_rate: MinRate,
    shutdown: impl Future<Output = ()>,
    drain: std::time::Duration,
) -> anyhow::Result<()> {
    let AdminListener {
        listener,
        token,
        tls,
    } = admin;
    let handler = AdminHandler {
        app,
        token,
        local: listener
            .local_addr()
            .context("the admin listener's address")?,
        tls: tls.is_some(),
        min_rate,
    };
    let listener = crate::listener::Listener {
        socket: listener,
        hygiene,
        tls,
        name: "admin listener",
    };
    crate::listener::serve(listener, Arc::new(handler), shutdown, drain).await;
    Ok(())
}

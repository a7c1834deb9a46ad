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
//!
//! Access: when a token is configured (`SPINDLE_ADMIN_TOKEN`), the deploy
//! API and `/queues/*/dead-letters` need `Authorization: Bearer TOKEN`
//! (compared in constant time; 401 otherwise, before anything is read or
//! changed). `spindle up` refuses to listen beyond loopback without one.
//! `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers.
//! With a certificate ([`tls::acceptor`]) every route is served over TLS
//! only.

pub mod tls;

use crate::app::App;
use crate::deploy::Action;
use crate::trigger::http::{host_response, json_error};
use anyhow::Context;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::WasiBody;

/// The largest component the deploy API accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

/// The header a deploy names its source file in.
pub const SOURCE_HEADER: &str = "spindle-source";

/// Whether `request` carries `Authorization: Bearer <token>`.
fn authorized(token: Option<&str>, request: &http::request::Parts) -> bool {
    let Some(token) = token else {
        return true;
    };
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

async fn route(
    app: &App,
    token: Option<&str>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<WasiBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let protected = path.starts_with("/components") || path.starts_with("/queues/");
    if protected && !authorized(token, &parts) {
        // Read (and drop) what the client sends, up to the deploy limit, so
        // it gets this answer rather than a connection reset mid-upload.
        discard(body).await;
        return json_error(
            StatusCode::UNAUTHORIZED,
            "this admin endpoint needs `Authorization: Bearer $SPINDLE_ADMIN_TOKEN` (the token spindle up was started with)",
        );
    }
    if path == "/components" || path.starts_with("/components/") {
        return components(app, &parts, body, &path["/components".len()..]).await;
    }
    let path = path.as_str();
    match path {
        "/healthz" => host_response(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        // Components are compiled before the admin listener starts, so
        // readiness is down to the backends answering.
        "/readyz" if app.is_draining() => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down; in-flight requests are finishing",
        ),
        "/readyz" => match app.check_backends().await {
            Ok(()) => host_response(
                StatusCode::OK,
                "application/json",
                r#"{"status":"ready"}"#.into(),
            ),
            Err(e) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {e:#}"),
            ),
        },
        p if p.starts_with("/queues/") && p.ends_with("/dead-letters") => {
            let queue = &p["/queues/".len()..p.len() - "/dead-letters".len()];
            dead_letters(app, queue).await
        }
        "/metrics" => host_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics().encode(),
        ),
        _ => json_error(
            StatusCode::NOT_FOUND,
            &format!(
                "no admin endpoint {path}; try /healthz, /readyz, /metrics, /components or /queues/QUEUE/dead-letters"
            ),
        ),
    }
}

/// The deploy API; `rest` is the path after `/components`.
async fn components(
    app: &App,
    parts: &http::request::Parts,
    body: hyper::body::Incoming,
    rest: &str,
) -> http::Response<WasiBody> {
    let json = |status, value: serde_json::Value| {
        host_response(status, "application/json", value.to_string())
    };
    let method = &parts.method;
    let name = rest.trim_start_matches('/');
    let result = match (method, name.split_once('/')) {
        (&http::Method::GET, _) if name.is_empty() => {
            return json(StatusCode::OK, app.deploy_status().await);
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
        Ok(report) => json(StatusCode::OK, report.to_json()),
        Err(e) => json_error(e.status(), &e.to_string()),
    }
}

async fn discard(mut body: hyper::body::Incoming) {
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
    body: hyper::body::Incoming,
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
        Err(e) => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("reading the component failed: {e}"),
        )),
    }
}

/// The oldest dead letters of a queue, so an operator can see what failed
/// and why without a broker console.
async fn dead_letters(app: &App, queue: &str) -> http::Response<WasiBody> {
    use crate::capabilities::queue::QueueError;
    match app.broker().dead_letters(queue, 100).await {
        Ok(letters) => {
            let list: Vec<_> = letters
                .into_iter()
                .map(|d| {
                    serde_json::json!({
                        "message_id": d.message_id,
                        "attempt": d.attempt,
                        "reason": d.reason,
                        "body": String::from_utf8_lossy(&d.body),
                    })
                })
                .collect();
            host_response(
                StatusCode::OK,
                "application/json",
                serde_json::Value::from(list).to_string(),
            )
        }
        Err(e @ QueueError::UnknownQueue { .. }) => {
            json_error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin listener's socket, the token its deploy API requires, and its
/// TLS setup when it has one.
pub struct AdminListener {
    listener: TcpListener,
    token: Option<Arc<str>>,
    tls: Option<TlsAcceptor>,
}

impl AdminListener {
    /// Binds `addr`. An address beyond loopback needs a token (an empty
    /// one counts as none): anyone who can reach the deploy API can run
    /// code on the host.
    pub async fn bind(
        addr: SocketAddr,
        token: Option<String>,
        tls: Option<TlsAcceptor>,
    ) -> anyhow::Result<Self> {
        let token = token.filter(|t| !t.is_empty());
        if !addr.ip().is_loopback() && token.is_none() {
            anyhow::bail!(
                "the admin API would listen on {addr}, beyond loopback, without a token; set SPINDLE_ADMIN_TOKEN (clients send it as `Authorization: Bearer ...`) or use --admin-listen 127.0.0.1:PORT"
            );
        }
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for the admin API; pick another --admin-listen")
        })?;
        Ok(AdminListener {
            listener,
            token: token.map(Into::into),
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

/// Serves the admin API until `shutdown`; with a token, the deploy API and
/// dead letters need it (see the module docs).
pub async fn serve(
    admin: AdminListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let AdminListener {
        listener,
        token,
        tls,
    } = admin;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let app = app.clone();
        let token = token.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let token = token.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(route(&app, token.as_deref(), req).await)
                }
            });
        let tls = tls.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            let Some(tls) = tls else {
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
            }
        });
    }
}

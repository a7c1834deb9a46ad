//! The open probe routes, `/healthz`, `/readyz` and `/metrics`: served by
//! the host's admin listener beside its deploy API, and by the convert
//! worker's health listener on their own ([`serve`]). They need no token:
//! probes and scrapers hold none, and the routes change nothing.

use crate::api::{Health, NotReady, Ready, ReadyStatus, Reasons};
use crate::lifecycle::Readiness;
use crate::listener::{Handler, Hygiene};
use crate::listener::{host_response, json_error};
use crate::metrics::Metrics;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;

/// A process the probe routes report on.
pub trait Probed: Send + Sync + 'static {
    /// What `/readyz` reports.
    fn readiness(&self) -> impl Future<Output = Readiness> + Send;
    /// What `/metrics` serves.
    fn metrics(&self) -> &Metrics;
}

/// The answer to `path` if it is a probe route.
pub async fn answer<P: Probed>(probed: &P, path: &str) -> Option<http::Response<WasiBody>> {
    Some(match path {
        "/healthz" => json(StatusCode::OK, &Health::ok()),
        "/readyz" => readyz(probed.readiness().await),
        "/metrics" => host_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            probed.metrics().encode(),
        ),
        _ => return None,
    })
}

/// `/readyz`: 503 naming what is down (or what start-up waits for) when
/// the process cannot do its work; otherwise 200, listing the capabilities
/// that are down but only degrade queue handlers.
fn readyz(readiness: Readiness) -> http::Response<WasiBody> {
    let listed = |entries: &[(&str, String)]| {
        Reasons(
            entries
                .iter()
                .map(|(c, why)| (c.to_string(), why.clone()))
                .collect(),
        )
    };
    if !readiness.is_ready() {
        let reasons: Vec<&str> = readiness
            .starting
            .iter()
            .chain(readiness.down.iter().map(|(_, why)| why))
            .map(String::as_str)
            .collect();
        let body = NotReady {
            error: format!("not ready: {}", reasons.join("; ")),
            starting: readiness.starting.clone(),
            down: listed(&readiness.down),
            degraded: listed(&readiness.degraded),
        };
        return json(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let body = Ready {
        status: if readiness.degraded.is_empty() {
            ReadyStatus::Ready
        } else {
            ReadyStatus::Degraded
        },
        degraded: listed(&readiness.degraded),
    };
    json(StatusCode::OK, &body)
}

/// `value` as a JSON response with `status`; a value that cannot be
/// encoded (none of the admin API's types) is a 500 with the reason.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> http::Response<WasiBody> {
    match serde_json::to_string(value) {
        Ok(text) => host_response(status, "application/json", text),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the answer: {e}"),
        ),
    }
}

struct ProbeHandler<P>(Arc<P>);

impl<P: Probed> Handler for ProbeHandler<P> {
    async fn handle(
        self: Arc<Self>,
        request: http::Request<hyper::body::Incoming>,
        _client: SocketAddr,
    ) -> http::Response<WasiBody> {
        let path = request.uri().path();
        match answer(&*self.0, path).await {
            Some(response) => response,
            None => json_error(
                StatusCode::NOT_FOUND,
                &format!("no endpoint {path}; try /healthz, /readyz or /metrics"),
            ),
        }
    }
}

/// Serves only the probe routes on `socket` (with the connection limits
/// of [`crate::listener`]) until `shutdown`.
pub async fn serve<P: Probed>(
    socket: TcpListener,
    probed: Arc<P>,
    hygiene: Hygiene,
    shutdown: impl Future<Output = ()>,
) {
    let listener = crate::listener::Listener {
        socket,
        hygiene,
        tls: None,
        name: "health listener",
    };
    // Probe answers are small and quick; nothing is worth waiting for.
    let drain = std::time::Duration::from_secs(1);
    crate::listener::serve(listener, Arc::new(ProbeHandler(probed)), shutdown, drain).await;
}

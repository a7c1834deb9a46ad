//! The HTTP trigger: accepts connections, routes each request to its
//! component, and streams bodies both ways without buffering them.

pub mod body;
pub mod handler;
pub mod router;

use crate::app::App;
use crate::listener::{Handler, Hygiene};
use bytes::Bytes;
use handler::InvokeError;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Requests whose header section is larger than this get 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// A complete response from the host itself (not from a component).
pub fn host_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> http::Response<WasiBody> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// A JSON `{"error": ...}` response, the shape of every error the host sends.
pub fn json_error(status: StatusCode, message: &str) -> http::Response<WasiBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    host_response(status, "application/json", body)
}

/// Serves the application on `listener` (see [`crate::listener`] for its
/// connection limits) until `shutdown` resolves, then stops accepting and
/// lets open connections finish their current requests for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    hygiene: Hygiene,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain: std::time::Duration,
) {
    let listener = crate::listener::Listener {
        socket: listener,
        hygiene,
        tls: None,
        name: "app listener",
    };
    crate::listener::serve(listener, Arc::new(AppHandler(app)), shutdown, drain).await;
}

/// Routes each request to its component.
struct AppHandler(Arc<App>);

impl Handler for AppHandler {
    fn handle(
        self: Arc<Self>,
        request: http::Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = http::Response<WasiBody>> + Send + 'static {
        handle(self.0.clone(), request, client)
    }
}

async fn handle(
    app: Arc<App>,
    req: http::Request<Incoming>,
    client: SocketAddr,
) -> http::Response<WasiBody> {
    let started = Instant::now();
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        );
    }
    let path = req.uri().path().to_string();
    let Some(matched) = app.router().route(&path) else {
        let response = json_error(StatusCode::NOT_FOUND, &format!("no route matches {path}"));
        app.metrics().record_request("", "", 404, started.elapsed());
        return response;
    };
    let component = matched.component.to_string();
    let raw_route = matched.raw.clone();

    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<http::uri::Authority>().is_ok())
        .map(str::to_string)
        .unwrap_or_else(|| app.listen_addr().to_string());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let full_url = format!("http://{host}{path_and_query}");

    let (mut parts, body) = req.into_parts();
    parts.uri = match full_url.parse() {
        Ok(uri) => uri,
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "the request URI is malformed"),
    };
    let spin_headers = [
        ("spin-full-url", full_url.clone()),
        ("spin-path-info", matched.path_info.clone()),
        ("spin-matched-route", raw_route.clone()),
        ("spin-raw-component-route", raw_route.clone()),
        ("spin-component-route", matched.base.to_string()),
        ("spin-base-path", "/".to_string()),
        ("spin-client-addr", client.to_string()),
    ];
    for (name, value) in spin_headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, value);
        }
    }
    // A small body arrives in full before any component slot or instance
    // is taken, so a client trickling it holds only its connection.
    let mut body = body::DrainOnDrop::new(body);
    let floor = body::MinRate::from_limits(app.limits());
    if let Err(e) = body
        .read_ahead(app.limits().read_ahead_bytes, floor, app.read_aheads())
        .await
    {
        body.abandon();
        let mut response = match e {
            body::ReadAheadError::TooSlow(slow) => InvokeError::BodyTooSlow(slow).into_response(),
            e @ body::ReadAheadError::Read(_) => {
                json_error(StatusCode::BAD_REQUEST, &e.to_string())
            }
        };
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        app.metrics().record_request(
            &component,
            &raw_route,
            response.status().as_u16(),
            started.elapsed(),
        );
        return response;
    }
    let request = http::Request::from_parts(parts, body.map_err(HttpError::from).boxed_unsync());

    let response = match app.invoke(&component, &raw_route, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    app.metrics().record_request(
        &component,
        &raw_route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

//! The HTTP trigger: accepts connections, routes each request to its
//! component, and streams bodies both ways without buffering them.

pub mod router;

use crate::capabilities::outbound_http::{INTERNAL_SUFFIX, InternalDispatch};
use crate::components::ComponentSet;
use crate::invoke::InvokeError;
use crate::invoke::body;
use crate::lifecycle::Lifecycle;
use crate::listener::json_error;
use crate::listener::{Handler, Hygiene};
use crate::manifest::WELL_KNOWN_PREFIX;
use crate::metrics::Metrics;
use crate::runtime_config::Limits;
use futures::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use router::{RouteMatch, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Requests whose header section is larger than this get 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The HTTP trigger: routes requests (from clients and from components'
/// `*.spin.internal` calls alike) to the running version of their
/// component, with the `spin-*` headers, admission and metrics.
pub struct HttpTrigger {
    components: Arc<ComponentSet>,
    router: Router,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// The address the listener is bound to (for `spin-full-url`).
    listen_addr: SocketAddr,
    /// Requests reading their body ahead now (see [`body::DrainOnDrop`]).
    read_aheads: Arc<tokio::sync::Semaphore>,
}

/// Where a request came from.
enum Origin {
    /// A client of the listener.
    Client(SocketAddr),
    /// Another component, through `http://ID.spin.internal`.
    Chained,
    /// A component of the application calling the application's own
    /// routes (`http://self.alt/...` or a relative URL).
    SelfCall,
}

impl HttpTrigger {
    pub fn new(
        components: Arc<ComponentSet>,
        lifecycle: Arc<Lifecycle>,
        metrics: Arc<Metrics>,
        limits: Limits,
        listen_addr: SocketAddr,
    ) -> Self {
        HttpTrigger {
            router: Router::new(
                &components.manifest().http_routes,
                &components.manifest().http_base,
            ),
            components,
            lifecycle,
            metrics,
            read_aheads: Arc::new(tokio::sync::Semaphore::new(limits.max_read_aheads as usize)),
            limits,
            listen_addr,
        }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The route a request to `component` at `path` takes: the one the
    /// path matches, or for a chained call to a component the path does
    /// not route to (a private one), the component as a whole.
    fn route(&self, path: &str, component: Option<&str>) -> Option<RouteMatch<'_>> {
        match (self.router.route(path), component) {
            (Some(matched), None) => Some(matched),
            (Some(matched), Some(c))
                if matched.component == c && matched.static_response.is_none() =>
            {
                Some(matched)
            }
            (_, Some(c)) => {
                let id = self.components.manifest().components.get_key_value(c)?.0;
                // As Spin's chained calls: the whole path under a wildcard.
                Some(RouteMatch {
                    component: id,
                    static_response: None,
                    raw: PRIVATE_ROUTE.to_string(),
                    based: "/...".into(),
                    component_route: String::new(),
                    path_info: path.to_string(),
                    captures: Vec::new(),
                })
            }
            (None, None) => None,
        }
    }

    /// Adds the `spin-*` headers and the absolute URL Spin components
    /// expect, for a request that took route `matched`.
    fn spin_headers(
        &self,
        parts: &mut http::request::Parts,
        matched: &RouteMatch<'_>,
        origin: &Origin,
    ) -> Result<(), MalformedUri> {
        let authority = match origin {
            Origin::Client(_) => parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| h.parse::<http::uri::Authority>().is_ok())
                .map(str::to_string)
                .unwrap_or_else(|| self.listen_addr.to_string()),
            Origin::Chained => format!("{}{INTERNAL_SUFFIX}", matched.component),
            Origin::SelfCall => self.listen_addr.to_string(),
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let full_url = format!("http://{authority}{path_and_query}");
        parts.uri = full_url.parse().map_err(|_| MalformedUri)?;
        let client = match origin {
            Origin::Client(client) => client.to_string(),
            Origin::Chained | Origin::SelfCall => self.listen_addr.to_string(),
        };
        let spin_headers = [
            ("spin-full-url", full_url),
            ("spin-path-info", matched.path_info.clone()),
            ("spin-matched-route", matched.based.clone()),
            ("spin-raw-component-route", matched.raw.clone()),
            ("spin-component-route", matched.component_route.clone()),
            ("spin-base-path", self.router.base().to_string()),
            ("spin-client-addr", client),
        ];
        for (name, value) in spin_headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                parts.headers.insert(name, value);
            }
        }
        for (name, value) in &matched.captures {
            let name = format!("spin-path-match-{}", name.to_ascii_lowercase());
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                HeaderValue::from_str(value),
            ) {
                parts.headers.insert(name, value);
            }
        }
        Ok(())
    }

    /// A request from a client of the listener.
    async fn handle(
        &self,
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
                &format!(
                    "request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"
                ),
            );
        }
        let path = req.uri().path().to_string();
        if let Some(name) = path.strip_prefix(WELL_KNOWN_PREFIX) {
            return self.well_known(name);
        }
        let Some(matched) = self.route(&path, None) else {
            let response = json_error(StatusCode::NOT_FOUND, &format!("no route matches {path}"));
            self.metrics.record_request("", "", 404, started.elapsed());
            return response;
        };
        let (mut parts, body) = req.into_parts();
        if let Err(e) = self.spin_headers(&mut parts, &matched, &Origin::Client(client)) {
            return e.into_response();
        }
        // A small body arrives in full before any component slot or
        // instance is taken, so a client trickling it holds only its
        // connection.
        let mut body = body::DrainOnDrop::new(body);
        let floor = body::MinRate::from_limits(&self.limits);
        if let Err(e) = body
            .read_ahead(self.limits.read_ahead_bytes, floor, &self.read_aheads)
            .await
        {
            body.abandon();
            let mut response = match e {
                body::ReadAheadError::TooSlow(slow) => {
                    InvokeError::BodyTooSlow(slow.to_string()).into_response()
                }
                e @ body::ReadAheadError::Read(_) => {
                    json_error(StatusCode::BAD_REQUEST, &e.to_string())
                }
            };
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            self.record(&matched, &response, started);
            return response;
        }
        let request =
            http::Request::from_parts(parts, body.map_err(HttpError::from).boxed_unsync());
        self.invoke(&matched, request, started).await
    }

    /// Invokes the running version of the matched component.
    async fn invoke(
        &self,
        matched: &RouteMatch<'_>,
        request: http::Request<WasiBody>,
        started: Instant,
    ) -> http::Response<WasiBody> {
        let response = match self.invoke_component(matched, request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        self.record(matched, &response, started);
        response
    }

    async fn invoke_component(
        &self,
        matched: &RouteMatch<'_>,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, InvokeError> {
        if let Some(response) = matched.static_response {
            return Ok(static_response(response));
        }
        // A request waits for start-up as it would for a slot.
        self.lifecycle
            .started_within(self.limits.queue_timeout())
            .await
            .map_err(InvokeError::Starting)?;
        let component =
            self.components
                .http(matched.component)
                .ok_or_else(|| InvokeError::Trap {
                    component: matched.component.to_string(),
                    reason: "it is not an HTTP component of this application".into(),
                })?;
        component.invoke(request, &matched.raw).await
    }

    fn record(
        &self,
        matched: &RouteMatch<'_>,
        response: &http::Response<WasiBody>,
        started: Instant,
    ) {
        self.metrics.record_request(
            matched.component,
            &matched.raw,
            response.status().as_u16(),
            started.elapsed(),
        );
    }
}

impl HttpTrigger {
    /// `/.well-known/spin/health` answers `OK` and `/.well-known/spin/info`
    /// the application's name and version, as in Spin, without reaching a
    /// component; anything else under the prefix is a 404.
    fn well_known(&self, name: &str) -> http::Response<WasiBody> {
        let (status, content_type, body) = match name {
            "health" => (StatusCode::OK, "text/plain", "OK".to_string()),
            "info" => {
                let app = &self.components.manifest().application;
                let mut info = serde_json::json!({ "name": app.name });
                if let Some(version) = &app.version {
                    info["version"] = version.clone().into();
                }
                (StatusCode::OK, "application/json", info.to_string())
            }
            _ => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no route matches {WELL_KNOWN_PREFIX}{name}"),
                );
            }
        };
        crate::listener::host_response(status, content_type, body)
    }
}

/// A `static_response` route's answer (validated when the manifest loaded).
fn static_response(response: &crate::manifest::StaticResponse) -> http::Response<WasiBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from(
        response.body().unwrap_or_default().to_string(),
    ))
    .map_err(|never| match never {})
    .boxed_unsync();
    let mut out = http::Response::new(body);
    *out.status_mut() = StatusCode::from_u16(response.status()).unwrap_or(StatusCode::OK);
    for (name, value) in response.headers() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            out.headers_mut().append(name, value);
        }
    }
    out
}

/// A request URI that does not make an absolute URL.
struct MalformedUri;

impl MalformedUri {
    fn into_response(self) -> http::Response<WasiBody> {
        json_error(StatusCode::BAD_REQUEST, "the request URI is malformed")
    }
}

/// The route of a chained call to a component the path does not route to.
const PRIVATE_ROUTE: &str = "internal call";

impl InternalDispatch for HttpTrigger {
    fn dispatch(
        self: Arc<Self>,
        component: &str,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>> {
        let component = component.to_string();
        Box::pin(async move {
            let started = Instant::now();
            let path = request.uri().path().to_string();
            let Some(matched) = self.route(&path, Some(&component)) else {
                tracing::warn!(
                    "no component `{component}` for http://{component}{INTERNAL_SUFFIX}"
                );
                return Err(HttpError::DestinationNotFound);
            };
            let (mut parts, body) = request.into_parts();
            if let Err(e) = self.spin_headers(&mut parts, &matched, &Origin::Chained) {
                return Ok(e.into_response());
            }
            let request = http::Request::from_parts(parts, body);
            Ok(self.invoke(&matched, request, started).await)
        })
    }

    /// Spin sends a self request to its own listener; here it takes the
    /// same route in-process (routed, admitted and measured like a
    /// client's), without a socket.
    fn dispatch_self(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>> {
        Box::pin(async move {
            let started = Instant::now();
            let path = request.uri().path().to_string();
            if let Some(name) = path.strip_prefix(WELL_KNOWN_PREFIX) {
                return Ok(self.well_known(name));
            }
            let Some(matched) = self.route(&path, None) else {
                self.metrics.record_request("", "", 404, started.elapsed());
                return Ok(json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no route matches {path}"),
                ));
            };
            let (mut parts, body) = request.into_parts();
            if let Err(e) = self.spin_headers(&mut parts, &matched, &Origin::SelfCall) {
                return Ok(e.into_response());
            }
            let request = http::Request::from_parts(parts, body);
            Ok(self.invoke(&matched, request, started).await)
        })
    }
}

/// Serves the application on `listener` (see [`crate::listener`] for its
/// connection limits) until `shutdown` resolves, then stops accepting and
/// lets open connections finish their current requests for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    hygiene: Hygiene,
    trigger: Arc<HttpTrigger>,
    shutdown: impl Future<Output = ()>,
    drain: std::time::Duration,
) {
    let listener = crate::listener::Listener {
        socket: listener,
        hygiene,
        tls: None,
        name: "app listener",
    };
    crate::listener::serve(listener, Arc::new(AppHandler(trigger)), shutdown, drain).await;
}

/// Routes each request to its component.
struct AppHandler(Arc<HttpTrigger>);

impl Handler for AppHandler {
    fn handle(
        self: Arc<Self>,
        request: http::Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = http::Response<WasiBody>> + Send + 'static {
        let trigger = self.0.clone();
        async move { trigger.handle(request, client).await }
    }
}

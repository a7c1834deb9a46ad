//! Outbound HTTP (`wasi:http` client): requests leave the host only for
//! destinations in the component's `allowed_outbound_hosts`, and requests to
//! `http://NAME.spin.internal` are dispatched in-process to component NAME
//! without touching the network.

mod capability;

pub use capability::Outbound;

use futures::future::BoxFuture;
use std::sync::{Arc, OnceLock, Weak};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The suffix that addresses another component of the same application.
pub const INTERNAL_SUFFIX: &str = ".spin.internal";

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, where each
/// part may be `*` and the host may be `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: String,
    host: String,
    port: Option<String>,
}

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| format!("`{entry}` has no scheme"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!(
                "`{entry}` has a path; only scheme, host and port are allowed"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                if p != "*" && p.parse::<u16>().is_err() {
                    return Err(format!("`{entry}` has an invalid port `{p}`"));
                }
                (h, Some(p.to_string()))
            }
            None => (rest, None),
        };
        if scheme.is_empty() || host.is_empty() {
            return Err(format!("`{entry}` needs both a scheme and a host"));
        }
        Ok(AllowedHost {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether this entry allows `scheme://host:port`.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme == "*" || self.scheme.eq_ignore_ascii_case(scheme);
        let host = host.to_ascii_lowercase();
        let host_ok = self.host == "*"
            || self.host == host
            || self
                .host
                .strip_prefix("*.")
                .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")));
        let port_ok = match &self.port {
            Some(p) if p == "*" => true,
            Some(p) => p.parse() == Ok(port),
            None => default_port(scheme) == Some(port),
        };
        scheme_ok && host_ok && port_ok
    }
}

pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        "mysql" => Some(3306),
        _ => None,
    }
}

/// A component's outbound allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Arc<Vec<AllowedHost>>);

impl AllowList {
    /// Builds the list from manifest entries (validated when it loaded).
    pub fn new(entries: &[String]) -> Self {
        AllowList(Arc::new(
            entries
                .iter()
                .filter_map(|e| AllowedHost::parse(e).ok())
                .collect(),
        ))
    }

    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.0.iter().any(|a| a.allows(scheme, host, port))
    }
}

/// Delivers `*.spin.internal` requests to a component of this application.
pub trait InternalDispatch: Send + Sync {
    fn dispatch(
        self: Arc<Self>,
        component: &str,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>>;
}

/// Set once the application is assembled; weak so the application, which
/// owns every component's hooks, is not kept alive by them.
pub type InternalRouter = Arc<OnceLock<Weak<dyn InternalDispatch>>>;

/// The `wasi:http` hooks of one component instance.
#[derive(Clone)]
pub struct OutboundHttp {
    component: Arc<str>,
    allowed: AllowList,
    internal: InternalRouter,
}

impl OutboundHttp {
    pub fn new(component: &str, allowed: AllowList, internal: InternalRouter) -> Self {
        OutboundHttp {
            component: component.into(),
            allowed,
            internal,
        }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri
            .port_u16()
            .or_else(|| default_port(&scheme))
            .unwrap_or(0);

        if !self.allowed.allows(&scheme, &host, port) {
            tracing::warn!(
                component = %self.component,
                destination = %format!("{scheme}://{host}:{port}"),
                "outbound request refused: add \"{scheme}://{host}:{port}\" to allowed_outbound_hosts to permit it"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }

        if let Some(target) = host.strip_suffix(INTERNAL_SUFFIX) {
            let target = target.to_string();
            let router = self.internal.get().and_then(Weak::upgrade);
            // The callee sees an origin-form request, as if it came from outside.
            if let Some(pq) = uri.path_and_query().cloned() {
                *request.uri_mut() = http::Uri::from(pq);
            }
            return Box::new(async move {
                let router = router.ok_or_else(|| {
                    HttpError::InternalError(Some("the application is shutting down".into()))
                })?;
                let response = router.dispatch(&target, request).await?;
                let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, done))
            });
        }

        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_scheme_host_and_port() {
        let a = AllowedHost::parse("https://example.com").unwrap();
        assert!(a.allows("https", "example.com", 443));
        assert!(!a.allows("https", "example.com", 8443));
        assert!(!a.allows("http", "example.com", 80));
        assert!(!a.allows("https", "evil.com", 443));

        let w = AllowedHost::parse("http://*.spin.internal").unwrap();
        assert!(w.allows("http", "auth.spin.internal", 80));
        assert!(!w.allows("http", "spin.internal.evil.com", 80));

        let any = AllowedHost::parse("*://*:*").unwrap();
        assert!(any.allows("mysql", "db", 3306));

        let port = AllowedHost::parse("http://127.0.0.1:8080").unwrap();
        assert!(port.allows("http", "127.0.0.1", 8080));
        assert!(!port.allows("http", "127.0.0.1", 8081));
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(AllowedHost::parse("example.com").is_err());
        assert!(AllowedHost::parse("https://example.com/path").is_err());
        assert!(AllowedHost::parse("https://example.com:http").is_err());
    }
}

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

/// One `allowed_outbound_hosts` entry, as Spin parses it:
/// `scheme://host[:port]`, where the scheme may be `*`; the host `*`,
/// `*.suffix`, `self` (or `self.alt`: the application's own routes), an IP
/// network in CIDR form, or a name or address; the port `*`, a number, or
/// a half-open range `1000..2000`. Without a port, the scheme's well-known
/// port (and a scheme without one needs a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `None` is `*`.
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`, kept as `.example.com`.
    AnySubdomain(String),
    ToSelf,
    Literal(url::Host<String>),
    Network(ipnet::IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Port(u16),
    /// Start included, end excluded, as Spin's `1000..2000`.
    Range(u16, u16),
}

/// The error for a whole list that is Spin's old allow-all spelling.
const ALLOW_ALL: &str = "insecure:allow-all";

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let url = entry.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(match url {
                "*" | ":" | "" | "?" => format!(
                    "`{url}` is not a host; to allow every destination write \"*://*:*\" (which removes all network sandboxing)"
                ),
                _ => format!("`{url}` has no scheme (e.g. `https://` or `*://`)"),
            });
        };
        let (host, rest) = rest.rsplit_once(':').unwrap_or((rest, ""));
        let port = match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                return Err(format!("`{url}` has a path; only scheme, host and port are allowed"));
            }
            Some((port, _)) => port,
            None => rest,
        };
        let port = PortPattern::parse(port, scheme).map_err(|p| format!("`{url}`: {p}"))?;
        let scheme = match scheme {
            "*" => None,
            s if !s.is_empty() && s.chars().all(char::is_alphabetic) => Some(s.to_ascii_lowercase()),
            s => return Err(format!("`{url}`: scheme `{s}` may only have letters")),
        };
        let host = HostPattern::parse(host).map_err(|p| format!("`{url}`: {p}"))?;
        Ok(AllowedHost { scheme, host, port })
    }

    /// Whether this entry allows `scheme://host:port`.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme_allows(scheme) && self.host.allows(host) && self.port.allows(port)
    }

    fn scheme_allows(&self, scheme: &str) -> bool {
        self.scheme
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// Whether this entry allows requests to the application itself.
    fn allows_self(&self) -> bool {
        ["http", "https"].iter().any(|s| self.scheme_allows(s))
            && matches!(self.host, HostPattern::Any | HostPattern::ToSelf)
    }
}

impl HostPattern {
    fn parse(host: &str) -> Result<Self, String> {
        let host = host.trim();
        match host {
            "*" => return Ok(HostPattern::Any),
            "self" | "self.alt" => return Ok(HostPattern::ToSelf),
            _ => {}
        }
        if host.starts_with('{') {
            return Err("host lists are not supported".into());
        }
        if let Ok(net) = host.parse::<ipnet::IpNet>() {
            return Ok(HostPattern::Network(net.trunc()));
        }
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(HostPattern::Network(ipnet::IpNet::from(ip)));
        }
        let host = host.trim_end_matches('/');
        if host.contains('/') {
            return Err("the host must not include a path".into());
        }
        if let Some(domain) = host.strip_prefix("*.") {
            if domain.contains('*') {
                return Err("wildcards are allowed only as a leading `*.`".into());
            }
            return Ok(HostPattern::AnySubdomain(format!(
                ".{}",
                domain.to_ascii_lowercase()
            )));
        }
        if host.contains('*') {
            return Err("wildcards are allowed only as a leading `*.`".into());
        }
        url::Host::parse(host)
            .map(HostPattern::Literal)
            .map_err(|e| format!("`{host}` is not a host name or address: {e}"))
    }

    fn allows(&self, host: &str) -> bool {
        let Ok(host) = url::Host::parse(host) else {
            return false;
        };
        match (self, &host) {
            (HostPattern::Any, _) => true,
            (HostPattern::AnySubdomain(suffix), url::Host::Domain(d)) => d.ends_with(suffix),
            (HostPattern::Literal(literal), host) => literal == host,
            (HostPattern::Network(net), url::Host::Ipv4(ip)) => net.contains(&std::net::IpAddr::V4(*ip)),
            (HostPattern::Network(net), url::Host::Ipv6(ip)) => net.contains(&std::net::IpAddr::V6(*ip)),
            _ => false,
        }
    }
}

impl PortPattern {
    fn parse(port: &str, scheme: &str) -> Result<Self, String> {
        if port.is_empty() {
            return default_port(scheme).map(PortPattern::Port).ok_or_else(|| {
                format!("no port is given and scheme `{scheme}` has no well-known port; add one, e.g. `:5672`")
            });
        }
        if port == "*" {
            return Ok(PortPattern::Any);
        }
        if port.starts_with('{') {
            return Err("port lists are not supported".into());
        }
        let number = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("port `{port}` is not a number (or a range like `1000..2000`)"))
        };
        match port.split_once("..") {
            Some((start, end)) => Ok(PortPattern::Range(number(start)?, number(end)?)),
            None => Ok(PortPattern::Port(number(port)?)),
        }
    }

    fn allows(&self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Port(p) => *p == port,
            PortPattern::Range(start, end) => (*start..*end).contains(&port),
        }
    }
}

/// The well-known port of a scheme, as Spin knows them.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        "mysql" => Some(3306),
        "postgres" => Some(5432),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

/// An entry as written: a host, or a `{{ variable }}` template resolved
/// at start-up against the application variables.
#[derive(Debug, Clone)]
pub enum HostEntry {
    Literal(AllowedHost),
    Template(String),
}

/// Parses a component's `allowed_outbound_hosts`. Templates are checked
/// for their references, and parsed with the variables' defaults when all
/// have one (as Spin validates them); `variables` names the application's
/// variables and their defaults.
pub fn parse_entries(
    hosts: &[String],
    variables: &dyn Fn(&str) -> Option<Option<String>>,
) -> Result<Vec<HostEntry>, (usize, String)> {
    if let [only] = hosts
        && only == ALLOW_ALL
    {
        return Err((
            0,
            format!("`{ALLOW_ALL}` is not allowed; write \"*://*:*\" if every destination really is"),
        ));
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            if !host.contains("{{") {
                return AllowedHost::parse(host).map(HostEntry::Literal).map_err(|p| (i, p));
            }
            let parts = crate::capabilities::variables::parse_template(host).map_err(|p| (i, p))?;
            let mut rendered = String::new();
            let mut complete = true;
            for part in parts {
                match part {
                    crate::capabilities::variables::TemplatePart::Literal(l) => rendered.push_str(&l),
                    crate::capabilities::variables::TemplatePart::Variable(v) => match variables(&v) {
                        None => {
                            return Err((i, format!("refers to undefined application variable `{v}`")));
                        }
                        Some(Some(default)) => rendered.push_str(&default),
                        Some(None) => complete = false,
                    },
                }
            }
            if complete {
                AllowedHost::parse(&rendered).map_err(|p| {
                    (i, format!("with the variables' defaults `{host}` is `{rendered}`, which is not valid: {p}"))
                })?;
            }
            Ok(HostEntry::Template(host.clone()))
        })
        .collect()
}

/// Spin's conversion of the deprecated `allowed_http_hosts`: each host
/// allowed over `http://` and `https://`, `self` as `http://self`, and
/// `insecure:allow-all` as every HTTP destination.
pub fn from_allowed_http_hosts(hosts: &[String]) -> Result<Vec<String>, (usize, String)> {
    if hosts.iter().any(|h| h == ALLOW_ALL) {
        return Ok(vec![
            "http://*:*".into(),
            "https://*:*".into(),
            "http://self".into(),
        ]);
    }
    let mut out = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let text = if host.contains("//") {
            host.clone()
        } else {
            format!("http://{host}")
        };
        let url = url::Url::parse(&text).map_err(|_| (i, format!("`{host}` is not a host or host:port")))?;
        if !matches!(url.scheme(), "http" | "https") || url.path().len() > 1 {
            return Err((i, format!("`{host}` must be a host and optional port only")));
        }
        let name = url.host_str().ok_or_else(|| (i, format!("`{host}` has no host name")))?;
        if name == "self" {
            out.push("http://self".into());
            continue;
        }
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        out.push(format!("http://{name}{port}"));
        out.push(format!("https://{name}{port}"));
    }
    Ok(out)
}

/// A component's outbound allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Arc<Vec<AllowedHost>>);

impl AllowList {
    /// Builds the list from manifest entries (validated when it loaded);
    /// templates are left out (see [`AllowList::resolve`]).
    pub fn new(entries: &[String]) -> Self {
        AllowList(Arc::new(
            entries
                .iter()
                .filter_map(|e| AllowedHost::parse(e).ok())
                .collect(),
        ))
    }

    /// The list with its templates rendered by `render`.
    pub fn resolve(
        entries: &[HostEntry],
        render: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Self, (usize, String)> {
        let hosts = entries
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                HostEntry::Literal(h) => Ok(h.clone()),
                HostEntry::Template(t) => {
                    let rendered = render(t).map_err(|p| (i, p))?;
                    AllowedHost::parse(&rendered)
                        .map_err(|p| (i, format!("`{t}` is `{rendered}`, which is not valid: {p}")))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList(Arc::new(hosts)))
    }

    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.0.iter().any(|a| a.allows(scheme, host, port))
    }

    /// Whether requests to the application's own routes are allowed
    /// (`http://self`, or any host).
    pub fn allows_self(&self) -> bool {
        self.0.iter().any(AllowedHost::allows_self)
    }
}

/// Delivers `*.spin.internal` requests to a component of this application.
pub trait InternalDispatch: Send + Sync {
    fn dispatch(
        self: Arc<Self>,
        component: &str,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>>;

    /// Delivers a request to the application's own routes (`self`).
    fn dispatch_self(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>>;
}

/// Set once the application is assembled; weak so the application, which
/// owns every component's hooks, is not kept alive by them.
pub type InternalRouter = Arc<OnceLock<Weak<dyn InternalDispatch>>>;

/// What outbound HTTP keeps for the process: where `*.spin.internal` and
/// `self` requests go, and each component's allow-list with its
/// templates rendered at start-up.
#[derive(Clone, Default)]
pub struct OutboundBackend {
    pub internal: InternalRouter,
    lists: Arc<std::collections::HashMap<String, AllowList>>,
}

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

impl OutboundHttp {
    fn send_to_self(
        &self,
        mut request: http::Request<WasiBody>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allowed.allows_self() {
            tracing::warn!(
                component = %self.component,
                "request to the application itself refused: add \"http://self\" to allowed_outbound_hosts to permit it"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if let Some(pq) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = http::Uri::from(pq);
        }
        let router = self.internal.get().and_then(Weak::upgrade);
        Box::new(async move {
            let router = router.ok_or_else(|| {
                HttpError::InternalError(Some("the application is shutting down".into()))
            })?;
            let response = router.dispatch_self(request).await?;
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri().clone();
        // A relative URL (no host) or `self.alt` is a request to the
        // application's own routes, as in Spin.
        let to_self = uri
            .authority()
            .is_none_or(|a| a.host().is_empty() || a.host().eq_ignore_ascii_case("self.alt"));
        if to_self {
            return self.send_to_self(request);
        }
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
        assert!(a.allows("https", "EXAMPLE.com", 443));
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

        let range = AllowedHost::parse("redis://cache:7000..7002").unwrap();
        assert!(range.allows("redis", "cache", 7000));
        assert!(range.allows("redis", "cache", 7001));
        assert!(!range.allows("redis", "cache", 7002), "the end is excluded, as in Spin");

        let default = AllowedHost::parse("postgres://db").unwrap();
        assert!(default.allows("postgres", "db", 5432));

        let net = AllowedHost::parse("*://10.1.0.0/16:*").unwrap();
        assert!(net.allows("http", "10.1.200.3", 80));
        assert!(!net.allows("http", "10.2.0.1", 80));
        assert!(!net.allows("http", "example.com", 80));
    }

    #[test]
    fn self_is_the_application() {
        let list = AllowList::new(&["http://self".into()]);
        assert!(list.allows_self());
        assert!(!list.allows("http", "self", 80), "self is not a host name");
        assert!(AllowList::new(&["*://*:*".into()]).allows_self());
        assert!(!AllowList::new(&["https://example.com".into()]).allows_self());
    }

    #[test]
    fn malformed_entries_are_rejected() {
        for bad in [
            "example.com",
            "https://example.com/path",
            "https://example.com:http",
            "amqp://broker",
            "ht-tp://x",
            "https://a.*.com",
            "*",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(AllowedHost::parse("https://*:*").is_ok());
        assert!(AllowedHost::parse("https://example.com/").is_ok());
    }

    #[test]
    fn templates_resolve_against_variables() {
        let vars = |name: &str| match name {
            "host" => Some(Some("api.example.com".to_string())),
            "port" => Some(None),
            _ => None,
        };
        let entries = parse_entries(
            &["https://{{ host }}".into(), "https://{{ host }}:{{ port }}".into()],
            &vars,
        )
        .unwrap();
        let list = AllowList::resolve(&entries, &|t: &str| {
            Ok(t.replace("{{ host }}", "h.example.com").replace("{{ port }}", "8443"))
        })
        .unwrap();
        assert!(list.allows("https", "h.example.com", 443));
        assert!(list.allows("https", "h.example.com", 8443));
        let (i, e) = parse_entries(&["https://{{ nope }}".into()], &vars).unwrap_err();
        assert_eq!(i, 0);
        assert!(e.contains("undefined application variable `nope`"), "{e}");
        let bad = |name: &str| (name == "host").then(|| Some("a b".to_string()));
        assert!(parse_entries(&["https://{{ host }}".into()], &bad).is_err());
        assert!(parse_entries(&["insecure:allow-all".into()], &vars).is_err());
    }

    #[test]
    fn allowed_http_hosts_convert_as_in_spin() {
        let converted =
            from_allowed_http_hosts(&["example.com".into(), "localhost:3001".into(), "self".into()])
                .unwrap();
        assert_eq!(
            converted,
            [
                "http://example.com",
                "https://example.com",
                "http://localhost:3001",
                "https://localhost:3001",
                "http://self"
            ]
        );
        assert_eq!(
            from_allowed_http_hosts(&["insecure:allow-all".into()]).unwrap().len(),
            3
        );
        assert!(from_allowed_http_hosts(&["example.com/path".into()]).is_err());
    }
}

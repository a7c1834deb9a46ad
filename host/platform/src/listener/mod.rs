//! The accept loop both listeners share (the application's and the admin
//! API's), with the connection hygiene that keeps hostile clients from
//! holding the host:
//!
//! - a cap on open connections: at the cap the listener stops accepting,
//!   so new connections wait in the kernel's backlog until others close;
//! - a header-read timeout: a connection's request headers must be complete
//!   within `header_read_timeout` of the connection opening (TLS handshake
//!   included) or of the first byte of a later request (slowloris);
//! - an idle timeout: a keep-alive connection may sit between requests for
//!   `idle_timeout`;
//! - a back-off when accepting fails (e.g. EMFILE), instead of spinning.
//!
//! hyper's own header-read timer starts when a connection goes idle, so it
//! would fold the idle time into the header time; the clock here follows
//! the connection instead: reads mark the start of a request, the service
//! call its headers complete, and the end of the response body the return
//! to idle. While a request is in flight neither timer runs: the request
//! body has its minimum rate ([`crate::invoke::body`]) and the
//! component its own deadlines.

mod parse_errors;

use crate::runtime_config::Limits;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// The most connections `max_connections = 0` sizes a listener for.
const MACHINE_MAX_CONNECTIONS: u64 = 16384;
/// The longest pause between failed accepts.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How often a listener at its connection cap says so in the log.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// The largest request head (and read buffer) a connection may use.
const MAX_BUF_BYTES: usize = 256 * 1024;

/// The connection limits of one listener (`[limits]` in the runtime config).
#[derive(Debug, Clone, Copy)]
pub struct Hygiene {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Hygiene {
    /// The limits from `[limits]`; `max_connections = 0` sizes the cap for
    /// the machine: half the soft open-file limit, at most 16384.
    pub fn from_limits(limits: &Limits) -> Self {
        let max_connections = match limits.max_connections {
            0 => machine_connections(),
            n => n as usize,
        };
        Hygiene {
            header_read_timeout: Duration::from_secs_f64(limits.header_read_timeout_secs),
            idle_timeout: Duration::from_secs_f64(limits.idle_timeout_secs),
            max_connections,
        }
    }
}

/// Half the process's soft open-file limit (the other half is left for
/// backends, blobs and the compile cache), at most 16384.
fn machine_connections() -> usize {
    let half = open_file_limit().unwrap_or(1024) / 2;
    half.clamp(1, MACHINE_MAX_CONNECTIONS) as usize
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast, reason = "rlim_t is not u64 on every unix")]
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// What serves the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<WasiBody>> + Send + 'static;
}

/// One listener: its socket, limits, optional TLS and a name for the log.
pub struct Listener {
    pub socket: TcpListener,
    pub hygiene: Hygiene,
    pub tls: Option<TlsAcceptor>,
    pub name: &'static str,
}

/// Serves HTTP/1 on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish their current requests for
/// up to `drain` (idle keep-alive connections close at once).
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let Listener {
        socket,
        hygiene,
        tls,
        name,
    } = listener;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(hygiene.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    let mut warned_at_cap: Option<Instant> = None;
    loop {
        if permits.available_permits() == 0
            && warned_at_cap.is_none_or(|at| at.elapsed() > CAP_WARNING_EVERY)
        {
            warned_at_cap = Some(Instant::now());
            tracing::warn!(
                "{name}: {} connections open, the cap; new connections wait until one closes ([limits] max_connections)",
                hygiene.max_connections
            );
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or memory: wait for some to be
                    // released rather than spin on the error.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    tracing::warn!("{name}: accepting a connection failed, retrying in {backoff:?}: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        backoff = Duration::ZERO;
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let connection = Connection {
            io: Watched {
                inner: stream,
                activity: activity.clone(),
            },
            client,
            activity,
            hygiene,
            name,
        };
        let handler = handler.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            connection.run(handler, tls, watcher).await;
            drop(permit);
        });
    }
    drop(socket);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "{name}: requests still running after {}s; closing their connections",
            drain.as_secs()
        );
    }
}

struct Connection {
    io: Watched,
    client: SocketAddr,
    activity: Arc<Activity>,
    hygiene: Hygiene,
    name: &'static str,
}

impl Connection {
    /// Serves the connection until it ends or a timeout closes it.
    async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        tls: Option<TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let Connection {
            io,
            client,
            activity,
            hygiene,
            name,
        } = self;
        let serve = async {
            match tls {
                None => http1(io, client, handler, &activity, watcher).await,
                Some(tls) => match tls.accept(io).await {
                    Ok(io) => http1(io, client, handler, &activity, watcher).await,
                    Err(e) => tracing::debug!(%client, "{name}: TLS handshake failed: {e}"),
                },
            }
        };
        tokio::select! {
            () = serve => {}
            why = activity.expired(&hygiene) => {
                tracing::debug!(%client, "{name}: closing the connection: {why}");
            }
        }
    }
}

async fn http1<IO, H>(
    io: IO,
    client: SocketAddr,
    handler: Arc<H>,
    activity: &Arc<Activity>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let activity = activity.clone();
    let serving = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        activity.request_started();
        let handler = handler.clone();
        let activity = activity.clone();
        async move {
            let response = handler.handle(request, client).await;
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                inner: body,
                activity: Some(activity),
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are the connection's own (see the module docs).
    builder
        .max_buf_size(MAX_BUF_BYTES)
        .header_read_timeout(None);
    let io = parse_errors::JsonParseErrors::new(io, move || serving.serving());
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    if let Err(e) = conn.await {
        tracing::debug!(%client, "connection ended: {e}");
    }
}

/// Where a connection is between requests, for its timeouts.
struct Activity {
    state: Mutex<Phase>,
    changed: Notify,
}

#[derive(Clone, Copy)]
enum Phase {
    /// A request's headers are on their way since then.
    Head(Instant),
    /// This many requests are being served.
    Busy(usize),
    /// Idle since then, after a response.
    Idle(Instant),
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = change(*state);
        drop(state);
        self.changed.notify_one();
    }

    fn phase(&self) -> Phase {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request is being served (its answer is the service's).
    fn serving(&self) -> bool {
        matches!(self.phase(), Phase::Busy(_))
    }

    /// Bytes arrived: on an idle connection, a new request has begun.
    fn bytes_read(&self) {
        if matches!(self.phase(), Phase::Idle(_)) {
            self.update(|phase| match phase {
                Phase::Idle(_) => Phase::Head(Instant::now()),
                other => other,
            });
        }
    }

    /// A request's headers are complete.
    fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        });
    }

    /// A response has been sent (or abandoned).
    fn request_finished(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// Resolves when the connection has waited too long for headers or sat
    /// idle too long; says which.
    async fn expired(&self, hygiene: &Hygiene) -> String {
        loop {
            let (deadline, why) = match self.phase() {
                Phase::Busy(_) => {
                    self.changed.notified().await;
                    continue;
                }
                Phase::Head(since) => (
                    since + hygiene.header_read_timeout,
                    format!(
                        "request headers incomplete after {:?} (header_read_timeout)",
                        hygiene.header_read_timeout
                    ),
                ),
                Phase::Idle(since) => (
                    since + hygiene.idle_timeout,
                    format!("idle for {:?} (idle_timeout)", hygiene.idle_timeout),
                ),
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that tells the connection when it is done (sent in
/// full, or dropped because the connection ended).
struct Tracked {
    inner: WasiBody,
    activity: Option<Arc<Activity>>,
}

impl Tracked {
    fn finish(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.request_finished();
        }
    }
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, HttpError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

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

/// `{"error": message}` ([`crate::api::ErrorBody`], the shape of every error the host sends) with `status`.
pub fn json_error(status: StatusCode, message: &str) -> http::Response<WasiBody> {
    let body = crate::api::ErrorBody {
        error: message.to_string(),
    };
    match serde_json::to_string(&body) {
        Ok(text) => host_response(status, "application/json", text),
        // A struct of one string always encodes.
        Err(_) => host_response(status, "application/json", r#"{"error":"?"}"#.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_max_connections_sizes_for_the_machine() {
        let limits = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        let cap = Hygiene::from_limits(&limits).max_connections;
        assert!((1..=16384).contains(&cap), "{cap}");
        if let Some(soft) = open_file_limit() {
            assert_eq!(cap as u64, (soft / 2).clamp(1, 16384));
        }
        let limits = Limits {
            max_connections: 7,
            ..Limits::default()
        };
        assert_eq!(Hygiene::from_limits(&limits).max_connections, 7);
    }
}

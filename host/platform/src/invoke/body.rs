//! Request-body wrappers: upload time counts as progress, not as a slow
//! component; a body slower than the minimum rate ends its invocation
//! (408); and a body the component left unread is drained so the client
//! receives the response instead of a reset connection.

use crate::runtime::instance::Invocation;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Unread request bytes the host reads and discards after a response.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
/// How long the host keeps draining before it closes the connection.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The slowest a request body may arrive (`[limits]`
/// `min_body_rate_bytes_per_sec` over `body_rate_grace_secs`).
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub grace: Duration,
}

impl MinRate {
    pub fn from_limits(limits: &crate::runtime_config::Limits) -> Self {
        MinRate {
            bytes_per_sec: limits.min_body_rate_bytes_per_sec,
            grace: Duration::from_secs_f64(limits.body_rate_grace_secs),
        }
    }

    /// Bytes a grace period must bring.
    fn per_window(&self) -> u64 {
        (self.bytes_per_sec as f64 * self.grace.as_secs_f64()) as u64
    }
}

/// Measures a body against its [`MinRate`]. Only time spent waiting for
/// the client counts: while the reader is busy elsewhere (a component
/// querying its database before it reads on) the client is not to blame.
/// Every `grace` of waiting must have brought `rate × grace` bytes.
pub struct RateCheck {
    floor: MinRate,
    /// Waiting time and bytes of the current window.
    waited: Duration,
    bytes: u64,
    /// Since when the reader has been waiting, if it is.
    waiting_since: Option<Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl RateCheck {
    pub fn new(floor: MinRate) -> Self {
        RateCheck {
            floor,
            waited: Duration::ZERO,
            bytes: 0,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(floor.grace)),
        }
    }

    /// Follows one poll of the body; `Err` once it is too slow.
    pub fn observe<E>(
        &mut self,
        cx: &mut Context<'_>,
        polled: &Poll<Option<Result<Frame<Bytes>, E>>>,
    ) -> Result<(), BodyTooSlow> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = self.waiting_since.take() {
                    self.waited += since.elapsed();
                }
                self.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                self.end_window(Instant::now())
            }
            Poll::Pending => self.waiting(cx),
            Poll::Ready(_) => Ok(()),
        }
    }

    /// The reader waits for the client: arm the timer for the end of the
    /// window.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Result<(), BodyTooSlow> {
        loop {
            let now = Instant::now();
            let since = *self.waiting_since.get_or_insert(now);
            let left = self.floor.grace.saturating_sub(self.waited);
            self.timer.as_mut().reset((since + left).into());
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.end_window(Instant::now())?;
        }
    }

    /// At the end of a window, the body must have kept up; a new window
    /// starts.
    fn end_window(&mut self, now: Instant) -> Result<(), BodyTooSlow> {
        let current = self.waiting_since.map_or(Duration::ZERO, |s| now - s);
        if self.waited + current < self.floor.grace {
            return Ok(());
        }
        if self.bytes < self.floor.per_window() {
            return Err(BodyTooSlow(self.floor));
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        self.waiting_since = self.waiting_since.map(|_| now);
        Ok(())
    }
}

/// A request body that arrived below the minimum rate.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the request body arrived slower than {} bytes/s for {:?}; send it at a steady rate",
    .0.bytes_per_sec,
    .0.grace
)]
pub struct BodyTooSlow(pub MinRate);

/// Moves the invocation's deadline to `timeout` from now whenever request
/// data arrives, so an upload that keeps moving may take as long as it
/// needs while a stalled one (or a slow guest) still times out. A body
/// below the minimum rate ends the invocation, freeing its instance, and
/// the caller answers 408 ([`Invocation::body_stalled`]).
pub struct Progress {
    inner: WasiBody,
    invocation: Arc<OnceLock<Arc<Invocation>>>,
    timeout: Duration,
    rate: RateCheck,
    stalled: bool,
}

impl Progress {
    pub fn new(
        inner: WasiBody,
        invocation: Arc<OnceLock<Arc<Invocation>>>,
        timeout: Duration,
        floor: MinRate,
    ) -> Self {
        Progress {
            inner,
            invocation,
            timeout,
            rate: RateCheck::new(floor),
            stalled: false,
        }
    }
}

impl Body for Progress {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.stalled {
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled
            && let Some(invocation) = self.invocation.get()
        {
            invocation.extend(self.timeout);
        }
        if let Err(slow) = self.rate.observe(cx, &polled) {
            tracing::debug!("{slow}");
            self.stalled = true;
            if let Some(invocation) = self.invocation.get() {
                invocation.stall_body();
            }
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        !self.stalled && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why the body could not be read ahead.
#[derive(Debug, thiserror::Error)]
pub enum ReadAheadError {
    #[error(transparent)]
    TooSlow(#[from] BodyTooSlow),
    #[error("the request body could not be read: {0}")]
    Read(hyper::Error),
}

/// The incoming body, with what was read ahead ([`DrainOnDrop::read_ahead`])
/// served first. If dropped before its end (a component answered without
/// reading it all, e.g. a 413), the rest is read and discarded in the
/// background, up to [`DRAIN_LIMIT`] bytes or [`DRAIN_TIME`].
pub struct DrainOnDrop {
    ahead: std::collections::VecDeque<Frame<Bytes>>,
    ahead_bytes: u64,
    /// A read-ahead permit, held while read-ahead bytes are buffered.
    ahead_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    inner: Option<Incoming>,
    ended: bool,
}

impl DrainOnDrop {
    pub fn new(inner: Incoming) -> Self {
        DrainOnDrop {
            ahead: std::collections::VecDeque::new(),
            ahead_bytes: 0,
            ahead_permit: None,
            inner: Some(inner),
            ended: false,
        }
    }

    /// Reads up to `limit` bytes (or the whole body, if shorter) at no less
    /// than `floor`, before any component is involved, so a client
    /// trickling a small body (a login, a signup) holds no component slot
    /// or instance; when all of `permits` are taken (which bounds the
    /// memory these buffers use) it reads nothing ahead.
    pub async fn read_ahead(
        &mut self,
        limit: usize,
        floor: MinRate,
        permits: &Arc<tokio::sync::Semaphore>,
    ) -> Result<(), ReadAheadError> {
        if self.ended || self.inner.as_ref().is_none_or(Body::is_end_stream) {
            return Ok(());
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            return Ok(());
        };
        self.ahead_permit = Some(permit);
        let mut rate = RateCheck::new(floor);
        while self.ahead_bytes < limit as u64 && !self.ended {
            let Some(inner) = self.inner.as_mut() else {
                break;
            };
            let polled = std::future::poll_fn(|cx| {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match rate.observe(cx, &polled) {
                    Err(slow) => Poll::Ready(Err(slow)),
                    Ok(()) => polled.map(Ok),
                }
            })
            .await?;
            match polled {
                None => self.ended = true,
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(ReadAheadError::Read(e));
                }
                Some(Ok(frame)) => {
                    self.ahead_bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                    self.ahead.push_back(frame);
                }
            }
        }
        Ok(())
    }
}

impl DrainOnDrop {
    /// Gives up on the rest of the body: dropped, it is not drained, and
    /// the connection closes after the answer.
    pub fn abandon(&mut self) {
        self.ended = true;
    }
}

impl Body for DrainOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.ahead.pop_front() {
            self.ahead_bytes -= frame.data_ref().map_or(0, |d| d.len() as u64);
            if self.ahead.is_empty() {
                self.ahead_permit = None;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && (self.ended || self.inner.as_ref().is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        let rest = match (&self.inner, self.ended) {
            (Some(inner), false) => inner.size_hint(),
            _ => SizeHint::with_exact(0),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.ahead_bytes);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.ahead_bytes);
        }
        hint
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut drained = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    drained += frame.data_ref().map_or(0, Bytes::len);
                    if drained > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

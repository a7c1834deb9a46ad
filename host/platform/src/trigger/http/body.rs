//! Request-body wrappers: upload time counts as progress, not as a slow
//! component, and a body the component left unread is drained so the
//! client receives the response instead of a reset connection.

use crate::runtime::instance::Invocation;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Unread request bytes the host reads and discards after a response.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
/// How long the host keeps draining before it closes the connection.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Moves the invocation's deadline to `timeout` from now whenever request
/// data arrives, so an upload that keeps moving may take as long as it
/// needs while a stalled one (or a slow guest) still times out.
pub struct Progress {
    inner: WasiBody,
    invocation: Arc<OnceLock<Arc<Invocation>>>,
    timeout: Duration,
}

impl Progress {
    pub fn new(
        inner: WasiBody,
        invocation: Arc<OnceLock<Arc<Invocation>>>,
        timeout: Duration,
    ) -> Self {
        Progress {
            inner,
            invocation,
            timeout,
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled
            && let Some(invocation) = self.invocation.get()
        {
            invocation.extend(self.timeout);
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

/// The incoming body; if dropped before its end (a component answered
/// without reading it all, e.g. a 413), the rest is read and discarded in
/// the background, up to [`DRAIN_LIMIT`] bytes or [`DRAIN_TIME`].
pub struct DrainOnDrop {
    inner: Option<Incoming>,
    ended: bool,
}

impl DrainOnDrop {
    pub fn new(inner: Incoming) -> Self {
        DrainOnDrop {
            inner: Some(inner),
            ended: false,
        }
    }
}

impl Body for DrainOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
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

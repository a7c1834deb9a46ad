//! Bridges between component-model streams and tokio channels, so a
//! capability's backend can be written against plain `mpsc` channels (of
//! `Bytes` for a `stream<u8>`, of items for any other stream). Memory stays
//! bounded by the channels' capacity, whatever the data's size.

use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Destination, Source, StreamConsumer, StreamProducer, StreamResult, VecBuffer,
};

/// The largest piece copied out of guest memory at once.
const CHUNK: usize = 256 * 1024;

/// Feeds a guest's `stream<u8>` into a channel, chunk by chunk. The
/// channel closes when the guest ends the stream.
pub struct ChannelConsumer {
    tx: PollSender<Bytes>,
}

impl ChannelConsumer {
    /// A consumer and the receiver its bytes arrive on.
    pub fn new() -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(2);
        (
            ChannelConsumer {
                tx: PollSender::new(tx),
            },
            rx,
        )
    }
}

impl<D> StreamConsumer<D> for ChannelConsumer {
    type Item = u8;

    fn poll_consume(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        store: StoreContextMut<'_, D>,
        src: Source<'_, Self::Item>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        match self.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {}
            // The receiving side is gone: take nothing more.
            Poll::Ready(Err(_)) => return Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => return Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => return Poll::Pending,
        }
        let mut src = src.as_direct(store);
        let available = src.remaining();
        let n = available.len().min(CHUNK);
        if n == 0 {
            self.tx.abort_send();
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let chunk = Bytes::copy_from_slice(&available[..n]);
        src.mark_read(n);
        if self.tx.send_item(chunk).is_err() {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        Poll::Ready(Ok(StreamResult::Completed))
    }
}

/// Produces a guest-readable `stream<u8>` from a channel of chunks; the
/// stream ends when the channel closes or yields an error (reported to the
/// guest separately, through the capability's result future).
pub struct ChannelProducer<E> {
    rx: mpsc::Receiver<Result<Bytes, E>>,
    on_error: Option<tokio::sync::oneshot::Sender<E>>,
}

impl<E: Send + 'static> ChannelProducer<E> {
    /// `on_error` receives the first error the channel yields.
    pub fn new(
        rx: mpsc::Receiver<Result<Bytes, E>>,
        on_error: tokio::sync::oneshot::Sender<E>,
    ) -> Self {
        ChannelProducer {
            rx,
            on_error: Some(on_error),
        }
    }
}

impl<D, E: Send + 'static> StreamProducer<D> for ChannelProducer<E> {
    type Item = u8;
    type Buffer = Bytes;

    fn poll_produce<'a>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, Self::Item, Self::Buffer>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                destination.set_buffer(chunk);
                Poll::Ready(Ok(StreamResult::Completed))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(tx) = self.on_error.take() {
                    let _ = tx.send(e);
                }
                Poll::Ready(Ok(StreamResult::Dropped))
            }
            Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Produces a guest-readable `stream<T>` from a channel of batches of
/// items (batches save a wake-up per item); a batch larger than the
/// guest's read is kept by wasmtime for its next reads. The stream ends
/// when the channel closes.
pub struct ItemProducer<T> {
    rx: mpsc::Receiver<Vec<T>>,
}

impl<T> ItemProducer<T> {
    pub fn new(rx: mpsc::Receiver<Vec<T>>) -> Self {
        ItemProducer { rx }
    }
}

impl<D, T: Send + Sync + 'static> StreamProducer<D> for ItemProducer<T> {
    type Item = T;
    type Buffer = VecBuffer<T>;

    fn poll_produce<'a>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, Self::Item, Self::Buffer>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        if destination.remaining(&mut store) == Some(0) {
            // A zero-length read asks for readiness; answering at once is allowed.
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(batch)) => {
                destination.set_buffer(batch.into());
                Poll::Ready(Ok(StreamResult::Completed))
            }
            Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

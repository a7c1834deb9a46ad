//! Adapters between byte streams, so files pass through the gateway a chunk
//! at a time and its memory does not grow with their size.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use http_body_util::StreamBody;
use spin_sdk::http::{BoxBody, box_body};
use spin_sdk::wit_bindgen::{FutureReader, StreamReader, StreamResult};

use crate::bindings::blobs::store;

/// Bytes asked of the blob store per read when streaming a download.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A response body that streams a blob-store read: each frame is one read
/// of up to [`READ_CHUNK_BYTES`], so the whole file is never in memory.
///
/// `done` reports whether the store cut the stream short; that, or a stream
/// that ends before `expected` bytes, ends the body with an error so the
/// client sees a broken transfer instead of a silently truncated file.
pub fn blob_body(
    reader: StreamReader<u8>,
    done: FutureReader<Result<(), store::Error>>,
    expected: u64,
) -> BoxBody {
    struct State {
        reader: StreamReader<u8>,
        done: FutureReader<Result<(), store::Error>>,
        remaining: u64,
    }
    let frames = futures::stream::unfold(
        Some(State {
            reader,
            done,
            remaining: expected,
        }),
        |state| async move {
            let mut state = state?;
            loop {
                let (result, chunk) = state
                    .reader
                    .read(Vec::with_capacity(READ_CHUNK_BYTES))
                    .await;
                match result {
                    StreamResult::Complete(_) if chunk.is_empty() => continue,
                    StreamResult::Complete(_) => {
                        state.remaining = state.remaining.saturating_sub(chunk.len() as u64);
                        return Some((Ok(Frame::data(Bytes::from(chunk))), Some(state)));
                    }
                    StreamResult::Dropped | StreamResult::Cancelled => {
                        let State {
                            reader,
                            done,
                            remaining,
                        } = state;
                        drop(reader);
                        let outcome = match done.await {
                            Err(e) => Err(anyhow::anyhow!("reading the file failed: {e:?}")),
                            Ok(()) if remaining > 0 => {
                                Err(anyhow::anyhow!("the file ended {remaining} bytes early"))
                            }
                            Ok(()) => return None,
                        };
                        return Some((outcome, None));
                    }
                }
            }
        },
    );
    box_body(StreamBody::new(frames))
}

/// Hands its inner stream's items out one per wake-up: after each item the
/// next poll answers `Pending` (waking itself at once).
///
/// `multer` fills its parse buffer by polling the body until it is pending.
/// When the client sends faster than the blob store takes the data, every
/// poll of the request body is ready, and that loop would pull the whole
/// upload into guest memory. Yielding after each chunk makes multer parse
/// (and the upload pump forward) every chunk before the next is read, so the
/// buffer holds about one body frame, and backpressure from the store
/// reaches the client.
pub struct OneChunkPerPoll<S> {
    inner: S,
    yield_next: bool,
}

impl<S> OneChunkPerPoll<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            yield_next: false,
        }
    }
}

impl<S: Stream + Unpin> Stream for OneChunkPerPoll<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.yield_next {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(_)) = item {
            self.yield_next = true;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use futures::task::noop_waker_ref;

    #[test]
    fn one_chunk_per_poll_yields_between_items() {
        let mut stream = OneChunkPerPoll::new(futures::stream::iter([1, 2]));
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Pending);
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Pending);
        assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn one_chunk_per_poll_keeps_every_item() {
        let items: Vec<u32> = futures::executor::block_on(
            OneChunkPerPoll::new(futures::stream::iter(0..100)).collect(),
        );
        assert_eq!(items, (0..100).collect::<Vec<_>>());
    }
}

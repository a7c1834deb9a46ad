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

/// Bounds how far `multer` reads ahead of the upload pump.
///
/// `multer` fills its parse buffer by polling the body until the body is
/// pending. When the client sends faster than the gateway forwards (every
/// poll of the request body is ready), that loop would keep appending to the
/// buffer, in the worst case the whole upload. This wrapper answers
/// `Pending` (waking itself at once) after `budget` bytes have been handed
/// out without the inner stream having been pending, so the parser returns
/// what it has to the pump before reading on. The buffer then holds at most
/// about `budget` plus one body frame, and backpressure from the blob store
/// reaches the client.
///
/// A forced yield costs a trip through the async runtime, so the budget is
/// a few body frames rather than one: yielding after every 16 KiB frame
/// halved upload throughput in a trial.
pub struct BoundedReadAhead<S> {
    inner: S,
    budget: usize,
    since_pending: usize,
}

impl<S> BoundedReadAhead<S> {
    pub fn new(inner: S, budget: usize) -> Self {
        Self {
            inner,
            budget,
            since_pending: 0,
        }
    }
}

impl<S, E> Stream for BoundedReadAhead<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.since_pending >= self.budget {
            self.since_pending = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let item = Pin::new(&mut self.inner).poll_next(cx);
        match &item {
            Poll::Pending => self.since_pending = 0,
            Poll::Ready(Some(Ok(chunk))) => self.since_pending += chunk.len(),
            Poll::Ready(_) => {}
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use futures::task::noop_waker_ref;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, ()>> + Unpin {
        futures::stream::iter(
            sizes
                .iter()
                .map(|&n| Ok(Bytes::from(vec![0u8; n])))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn read_ahead_yields_once_the_budget_is_spent() {
        let mut stream = BoundedReadAhead::new(chunks(&[4, 4, 4, 1]), 8);
        let mut cx = Context::from_waker(noop_waker_ref());
        let len = |p: Poll<Option<Result<Bytes, ()>>>| match p {
            Poll::Ready(Some(Ok(b))) => Some(b.len()),
            _ => None,
        };
        assert_eq!(len(stream.poll_next_unpin(&mut cx)), Some(4));
        assert_eq!(len(stream.poll_next_unpin(&mut cx)), Some(4));
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(len(stream.poll_next_unpin(&mut cx)), Some(4));
        assert_eq!(len(stream.poll_next_unpin(&mut cx)), Some(1));
        assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn read_ahead_keeps_every_byte() {
        let sizes: Vec<usize> = (1..200).collect();
        let total: usize = futures::executor::block_on(
            BoundedReadAhead::new(chunks(&sizes), 100)
                .map(|c| c.map(|b| b.len()).unwrap_or(0))
                .collect::<Vec<_>>(),
        )
        .iter()
        .sum();
        assert_eq!(total, sizes.iter().sum::<usize>());
    }
}

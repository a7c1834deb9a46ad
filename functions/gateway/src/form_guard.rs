//! A guard between the request body and `multer` that bounds what the
//! parser can be made to buffer.
//!
//! `multer` bounds part *data* (it hands it out as it arrives), but it
//! keeps everything before the first boundary, and each part's header
//! block, in its buffer until the end of it is found, with no limit: a part
//! header that never ends grew the gateway to its memory cap. This stream
//! follows the same framing `multer` does (RFC 2046 delimiters, as `multer`
//! matches them) and fails the body as soon as the text before the first
//! boundary or one part's header block passes its limit, so the parser
//! never holds more than that plus the read-ahead.
//!
//! The scan costs one `memchr::memmem` search per body chunk in part data,
//! the same search `multer` itself runs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use memchr::memmem::Finder;

/// Longest part header block (from the boundary to the blank line that
/// ends the headers). Real ones are a few hundred bytes.
pub const MAX_PART_HEADER_BYTES: usize = 16 * 1024;

/// Longest text before the first boundary (the preamble, which clients
/// leave empty).
pub const MAX_PREAMBLE_BYTES: usize = 16 * 1024;

/// A body the guard refused, or the body's own error.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "no multipart boundary in the first {} KiB of the body; the body must \
         start with the boundary named in Content-Type",
        MAX_PREAMBLE_BYTES / 1024
    )]
    NoBoundary,
    #[error(
        "a part's headers are longer than {} KiB; send the file as one part with \
         ordinary headers (for example: curl -F file=@video.mp4 ...)",
        MAX_PART_HEADER_BYTES / 1024
    )]
    PartHeaderTooLarge,
    #[error("could not read the request body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// Where the scan is in the multipart framing.
enum Stage {
    /// Before the first `--boundary`; counts bytes.
    Preamble { seen: usize },
    /// Right after a `--boundary`: `--` next closes the form; anything else
    /// starts a part's header block.
    Delimiter { dashes: usize },
    /// In a part's header block, which ends at the first CRLF (the end of
    /// the boundary line) and then a CRLF CRLF, counting every byte.
    Headers { seen: usize, line_ended: bool },
    /// In part data, up to the next CRLF `--boundary`.
    Data,
    /// After the closing delimiter (the parser reads no further) or a
    /// refusal.
    Done,
}

/// The body stream with the guard applied; see the module docs.
pub struct FormGuard<S> {
    inner: S,
    stage: Stage,
    /// `--boundary`, as the first delimiter is matched.
    first: Carry,
    /// CRLF `--boundary`, as every later one is matched.
    next: Carry,
    line_end: Carry,
    header_end: Carry,
}

impl<S> FormGuard<S> {
    pub fn new(inner: S, boundary: &str) -> Self {
        FormGuard {
            inner,
            stage: Stage::Preamble { seen: 0 },
            first: Carry::new(format!("--{boundary}").as_bytes()),
            next: Carry::new(format!("\r\n--{boundary}").as_bytes()),
            line_end: Carry::new(b"\r\n"),
            header_end: Carry::new(b"\r\n\r\n"),
        }
    }

    /// Advances the scan over `chunk`, or says why the body is refused.
    fn scan(&mut self, mut chunk: &[u8]) -> Result<(), GuardError> {
        while !chunk.is_empty() {
            let consumed = match &mut self.stage {
                Stage::Done => return Ok(()),
                Stage::Preamble { seen } => match self.first.find_end(chunk) {
                    Some(end) => {
                        self.stage = Stage::Delimiter { dashes: 0 };
                        end
                    }
                    None => {
                        *seen += chunk.len();
                        if *seen > MAX_PREAMBLE_BYTES {
                            self.stage = Stage::Done;
                            return Err(GuardError::NoBoundary);
                        }
                        chunk.len()
                    }
                },
                Stage::Delimiter { dashes } => {
                    if chunk.first() == Some(&b'-') {
                        *dashes += 1;
                        if *dashes == 2 {
                            self.stage = Stage::Done;
                        }
                        1
                    } else {
                        // Not the closing `--`: what follows (including a
                        // lone `-`) belongs to the header block.
                        let seen = *dashes;
                        self.stage = Stage::Headers {
                            seen,
                            line_ended: false,
                        };
                        0
                    }
                }
                Stage::Headers { seen, line_ended } => {
                    let finder = if *line_ended {
                        &mut self.header_end
                    } else {
                        &mut self.line_end
                    };
                    let found = finder.find_end(chunk);
                    let used = found.unwrap_or(chunk.len());
                    *seen += used;
                    if *seen > MAX_PART_HEADER_BYTES {
                        self.stage = Stage::Done;
                        return Err(GuardError::PartHeaderTooLarge);
                    }
                    match found {
                        Some(_) if *line_ended => self.stage = Stage::Data,
                        Some(_) => *line_ended = true,
                        None => {}
                    }
                    used
                }
                Stage::Data => match self.next.find_end(chunk) {
                    Some(end) => {
                        self.stage = Stage::Delimiter { dashes: 0 };
                        end
                    }
                    None => chunk.len(),
                },
            };
            chunk = chunk.get(consumed..).unwrap_or_default();
        }
        Ok(())
    }
}

impl<S, E> Stream for FormGuard<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, GuardError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.scan(&chunk) {
                Ok(()) => Ok(chunk),
                Err(refused) => Err(refused),
            },
            Poll::Ready(Some(Err(e))) => Err(GuardError::Body(e.into())),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(Some(item))
    }
}

/// Finds a pattern in a stream of chunks, including across chunk edges,
/// by keeping the last `pattern.len() - 1` bytes seen.
struct Carry {
    finder: Finder<'static>,
    tail: Vec<u8>,
}

impl Carry {
    fn new(pattern: &[u8]) -> Self {
        Carry {
            finder: Finder::new(pattern).into_owned(),
            tail: Vec::new(),
        }
    }

    /// The index in `chunk` just past the first match (which may have begun
    /// in earlier chunks), or `None` after remembering the chunk's end.
    fn find_end(&mut self, chunk: &[u8]) -> Option<usize> {
        let len = self.finder.needle().len();
        let keep = len.saturating_sub(1);
        if !self.tail.is_empty() {
            // A match that starts in the tail ends within the chunk's first
            // `keep` bytes.
            let head = chunk.get(..keep).unwrap_or(chunk);
            let mut joined = self.tail.clone();
            joined.extend_from_slice(head);
            if let Some(at) = self.finder.find(&joined) {
                let end = at + len - self.tail.len();
                self.tail.clear();
                return Some(end);
            }
        }
        if let Some(at) = self.finder.find(chunk) {
            self.tail.clear();
            return Some(at + len);
        }
        self.tail.extend_from_slice(chunk);
        let excess = self.tail.len().saturating_sub(keep);
        self.tail.drain(..excess);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// Runs `body`, cut into `size`-byte chunks, through the guard.
    fn guard(body: &[u8], size: usize) -> Result<Vec<u8>, String> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let guarded = FormGuard::new(futures::stream::iter(chunks), "XyZ");
        futures::executor::block_on(guarded.collect::<Vec<_>>())
            .into_iter()
            .map(|item| item.map_err(|e| e.to_string()))
            .collect::<Result<Vec<Bytes>, String>>()
            .map(|chunks| chunks.concat())
    }

    fn form(header: &str, data: &[u8]) -> Vec<u8> {
        let mut body = format!("--XyZ\r\n{header}\r\n\r\n").into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        body
    }

    #[test]
    fn ordinary_forms_pass_unchanged_at_any_chunking() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let body = form(
            "Content-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"",
            &data,
        );
        for size in [1, 2, 3, 7, 4096, body.len()] {
            assert_eq!(guard(&body, size).as_deref(), Ok(&body[..]), "{size}");
        }
    }

    #[test]
    fn data_that_looks_like_headers_is_not_counted() {
        // Part data may be anything, including a very long "header".
        let body = form(
            "Content-Disposition: form-data; name=\"file\"; filename=\"a\"",
            &b"X-a: aaaa".repeat(10_000),
        );
        assert!(guard(&body, 1000).is_ok());
    }

    #[test]
    fn a_header_that_never_ends_is_refused() {
        let mut body = b"--XyZ\r\nX-a: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_PART_HEADER_BYTES + 10));
        let e = guard(&body, 1000).expect_err("refused");
        assert!(e.contains("16 KiB"), "{e}");
        // The same in a later part, after some data.
        let mut second = form("Content-Disposition: form-data; name=\"f\"", b"data");
        second.truncate(second.len() - 4); // drop the closing "--\r\n"
        second.extend_from_slice(b"\r\nX-a: ");
        second.extend(std::iter::repeat_n(b'a', MAX_PART_HEADER_BYTES + 10));
        assert!(guard(&second, 777).is_err());
    }

    #[test]
    fn a_blank_line_right_after_the_boundary_does_not_end_the_headers() {
        // multer looks for the blank line only after the boundary's own
        // line end, so the guard must too.
        let mut body = b"--XyZ\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_PART_HEADER_BYTES + 10));
        assert!(guard(&body, 4096).is_err());
    }

    #[test]
    fn junk_before_the_first_boundary_is_refused() {
        let body = vec![b'j'; MAX_PREAMBLE_BYTES + 1];
        let e = guard(&body, 1000).expect_err("refused");
        assert!(e.contains("no multipart boundary"), "{e}");
        let mut preamble = b"a short preamble\r\n".to_vec();
        preamble.extend(form("Content-Disposition: form-data; name=\"f\"", b"x"));
        assert!(guard(&preamble, 5).is_ok());
    }

    #[test]
    fn nothing_after_the_closing_delimiter_is_scanned() {
        let mut body = form("Content-Disposition: form-data; name=\"f\"", b"x");
        body.extend(std::iter::repeat_n(b'e', MAX_PART_HEADER_BYTES * 2));
        assert!(guard(&body, 1000).is_ok());
    }

    #[test]
    fn carry_finds_matches_across_chunks() {
        let mut carry = Carry::new(b"abcd");
        assert_eq!(carry.find_end(b"xxab"), None);
        assert_eq!(carry.find_end(b"c"), None);
        assert_eq!(carry.find_end(b"dzz"), Some(1));
        assert_eq!(carry.find_end(b"abcd"), Some(4));
        assert_eq!(carry.find_end(b"a"), None);
        assert_eq!(carry.find_end(b"x"), None);
        assert_eq!(carry.find_end(b"bcd"), None);
    }
}

//! Wire-protocol framing: reading requests and writing replies.
//!
//! Every message starts with a 16-byte header (`messageLength`, `requestID`,
//! `responseTo`, `opCode`, all little-endian `i32`). We accept the two request
//! formats a client can send to a modern server:
//!
//! * `OP_MSG` (2013): `flagBits: u32`, then sections — kind 0 is the command
//!   body, kind 1 is a document sequence (`size: i32`, identifier cstring,
//!   documents) which drivers use for bulk payloads (`documents`, `updates`,
//!   `deletes`); sequences are merged into the body as arrays, so command code
//!   never has to care how a payload arrived. An optional CRC-32C trailer
//!   (`checksumPresent`) is skipped, not verified.
//! * `OP_QUERY` (2004): only used for the first `hello`/`isMaster` by older
//!   clients and tools; answered with `OP_REPLY` (1).
//!
//! Anything malformed is an [`io::ErrorKind::InvalidData`] error; the caller
//! then drops that one connection.

use std::io;

use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::{Bson, Document};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

/// Largest message we accept or advertise (`maxMessageSizeBytes`).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// Largest document we advertise (`maxBsonObjectSize`).
pub const MAX_BSON_SIZE: usize = 16 * 1024 * 1024;

const HEADER_LEN: usize = 16;

/// Deepest nesting we accept: MongoDB's documented limit of 100 levels. The
/// `bson` decoder and our own matching recurse per level (the decoder uses
/// several KiB of stack per level in debug builds), so without a limit a
/// small hostile message could overflow a 2 MiB thread stack and abort the
/// process.
const MAX_DEPTH: usize = 100;

/// OP_MSG flag: a CRC-32C checksum follows the last section.
pub const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: the sender will not wait for a reply (e.g. `w: 0` writes).
pub const MORE_TO_COME: u32 = 1 << 1;
/// Bits 0-15 are "required": a receiver must reject bits it does not know.
/// Optional bits such as `exhaustAllowed` (bit 16) are ignored: we never
/// send exhaust replies.
const REQUIRED_BITS: u32 = 0xffff;

/// OP_REPLY `responseFlags` bit for a failed query.
const QUERY_FAILURE: i32 = 1 << 1;

/// A decoded client request.
#[derive(Debug)]
pub enum Request {
    /// An OP_MSG command; document sequences are already merged into `command`.
    Msg {
        request_id: i32,
        more_to_come: bool,
        command: Document,
    },
    /// A legacy OP_QUERY; `collection` is the full name, e.g. `admin.$cmd`.
    Query {
        request_id: i32,
        collection: String,
        query: Document,
    },
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one request. `Ok(None)` means the peer closed the connection cleanly
/// between messages.
pub async fn read_request<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Request>> {
    let mut header = [0u8; HEADER_LEN];
    // Distinguish a clean close (no byte of a new message) from a cut message.
    let first = reader.read(&mut header[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[1..]).await?;
    let length = i32_at(&header, 0)?;
    let request_id = i32_at(&header, 4)?;
    let op_code = i32_at(&header, 12)?;
    let length = usize::try_from(length).map_err(|_| invalid("negative message length"))?;
    if !(HEADER_LEN..=MAX_MESSAGE_SIZE).contains(&length) {
        return Err(invalid(format!("message length {length} out of range")));
    }
    let mut body = vec![0u8; length - HEADER_LEN];
    reader.read_exact(&mut body).await?;
    match op_code {
        OP_MSG => parse_msg(request_id, &body).map(Some),
        OP_QUERY => parse_query(request_id, &body).map(Some),
        OP_COMPRESSED => Err(invalid(
            "OP_COMPRESSED is not supported (no compressors are advertised)",
        )),
        other => Err(invalid(format!("unsupported opcode {other}"))),
    }
}

fn i32_at(buf: &[u8], at: usize) -> io::Result<i32> {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_le_bytes)
        .ok_or_else(|| invalid("message truncated"))
}

/// Takes one BSON document off the front of `buf`.
fn take_document(buf: &mut &[u8]) -> io::Result<Document> {
    let size = i32_at(buf, 0)?;
    let size = usize::try_from(size).map_err(|_| invalid("negative document size"))?;
    if size < 5 || size > buf.len() {
        return Err(invalid(format!("document size {size} out of range")));
    }
    let (bytes, rest) = buf.split_at(size);
    check_depth(bytes)?;
    let doc = Document::from_reader(bytes).map_err(|e| invalid(format!("invalid BSON: {e}")))?;
    *buf = rest;
    Ok(doc)
}

type Values<'a> = Box<dyn Iterator<Item = bson::raw::Result<RawBsonRef<'a>>> + 'a>;

fn document_values(doc: &RawDocument) -> Values<'_> {
    Box::new(doc.iter().map(|entry| entry.map(|(_, value)| value)))
}

fn array_values(array: &RawArray) -> Values<'_> {
    Box::new(array.into_iter())
}

/// Walks a raw document without recursion and rejects nesting deeper than
/// [`MAX_DEPTH`] (and structurally invalid BSON).
fn check_depth(bytes: &[u8]) -> io::Result<()> {
    let bad = |e: bson::raw::Error| invalid(format!("invalid BSON: {e}"));
    let mut stack = vec![document_values(
        RawDocument::from_bytes(bytes).map_err(bad)?,
    )];
    while let Some(top) = stack.last_mut() {
        let child = match top.next() {
            None => {
                stack.pop();
                continue;
            }
            Some(value) => match value.map_err(bad)? {
                RawBsonRef::Document(d) => document_values(d),
                RawBsonRef::Array(a) => array_values(a),
                RawBsonRef::JavaScriptCodeWithScope(c) => document_values(c.scope),
                _ => continue,
            },
        };
        if stack.len() >= MAX_DEPTH {
            return Err(invalid(format!(
                "document nested deeper than {MAX_DEPTH} levels"
            )));
        }
        stack.push(child);
    }
    Ok(())
}

/// Takes a NUL-terminated UTF-8 string off the front of `buf`.
fn take_cstring(buf: &mut &[u8]) -> io::Result<String> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| invalid("unterminated cstring"))?;
    let s = std::str::from_utf8(&buf[..nul])
        .map_err(|_| invalid("cstring is not UTF-8"))?
        .to_owned();
    *buf = &buf[nul + 1..];
    Ok(s)
}

fn parse_msg(request_id: i32, body: &[u8]) -> io::Result<Request> {
    let flags = u32::from_le_bytes(
        body.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("OP_MSG without flags"))?,
    );
    let unknown_required = flags & REQUIRED_BITS & !(CHECKSUM_PRESENT | MORE_TO_COME);
    if unknown_required != 0 {
        return Err(invalid(format!(
            "unknown required OP_MSG flag bits {unknown_required:#x}"
        )));
    }
    let mut sections = &body[4..];
    if flags & CHECKSUM_PRESENT != 0 {
        let end = sections
            .len()
            .checked_sub(4)
            .ok_or_else(|| invalid("OP_MSG too short for its checksum"))?;
        sections = &sections[..end];
    }

    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while let Some((&kind, rest)) = sections.split_first() {
        sections = rest;
        match kind {
            0 => {
                if command.is_some() {
                    return Err(invalid("OP_MSG with more than one body section"));
                }
                command = Some(take_document(&mut sections)?);
            }
            1 => {
                let size = usize::try_from(i32_at(sections, 0)?)
                    .map_err(|_| invalid("negative document sequence size"))?;
                if size < 4 || size > sections.len() {
                    return Err(invalid("document sequence size out of range"));
                }
                let (mut seq, rest) = sections.split_at(size);
                sections = rest;
                seq = &seq[4..];
                let identifier = take_cstring(&mut seq)?;
                let mut docs = Vec::new();
                while !seq.is_empty() {
                    docs.push(Bson::Document(take_document(&mut seq)?));
                }
                sequences.push((identifier, docs));
            }
            other => return Err(invalid(format!("unknown OP_MSG section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| invalid("OP_MSG without a body section"))?;
    for (identifier, docs) in sequences {
        if command.contains_key(&identifier) {
            return Err(invalid(format!(
                "'{identifier}' is both in the body and a document sequence"
            )));
        }
        command.insert(identifier, Bson::Array(docs));
    }
    Ok(Request::Msg {
        request_id,
        more_to_come: flags & MORE_TO_COME != 0,
        command,
    })
}

fn parse_query(request_id: i32, body: &[u8]) -> io::Result<Request> {
    let mut rest = body
        .get(4..)
        .ok_or_else(|| invalid("OP_QUERY without flags"))?;
    let collection = take_cstring(&mut rest)?;
    // numberToSkip and numberToReturn are meaningless for commands.
    rest = rest.get(8..).ok_or_else(|| invalid("OP_QUERY truncated"))?;
    let query = take_document(&mut rest)?;
    // An optional returnFieldsSelector may follow; commands ignore it.
    Ok(Request::Query {
        request_id,
        collection,
        query,
    })
}

fn frame(request_id: i32, response_to: i32, op_code: i32, payload: &[u8]) -> io::Result<Vec<u8>> {
    let length =
        i32::try_from(HEADER_LEN + payload.len()).map_err(|_| invalid("reply too large"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn encode_document(doc: &Document) -> io::Result<Vec<u8>> {
    bson::to_vec(doc).map_err(|e| io::Error::other(format!("cannot encode reply: {e}")))
}

/// An OP_MSG reply: no flags, one kind-0 section.
pub fn encode_msg(request_id: i32, response_to: i32, reply: &Document) -> io::Result<Vec<u8>> {
    let doc = encode_document(reply)?;
    let mut payload = Vec::with_capacity(5 + doc.len());
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.push(0);
    payload.extend_from_slice(&doc);
    frame(request_id, response_to, OP_MSG, &payload)
}

/// An OP_REPLY carrying one document (the command reply, or `{$err}`).
pub fn encode_reply(request_id: i32, response_to: i32, reply: &Document) -> io::Result<Vec<u8>> {
    let doc = encode_document(reply)?;
    let flags = if reply.contains_key("$err") {
        QUERY_FAILURE
    } else {
        0
    };
    let mut payload = Vec::with_capacity(20 + doc.len());
    payload.extend_from_slice(&flags.to_le_bytes());
    payload.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    payload.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    payload.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    payload.extend_from_slice(&doc);
    frame(request_id, response_to, OP_REPLY, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn op_msg(flags: u32, sections: &[u8]) -> Vec<u8> {
        let mut payload = flags.to_le_bytes().to_vec();
        payload.extend_from_slice(sections);
        frame(7, 0, OP_MSG, &payload).unwrap()
    }

    async fn read(bytes: Vec<u8>) -> io::Result<Option<Request>> {
        read_request(&mut bytes.as_slice()).await
    }

    #[tokio::test]
    async fn merges_document_sequences_into_the_body() {
        let mut sections = vec![0u8];
        sections.extend(bson::to_vec(&doc! { "insert": "c", "$db": "d" }).unwrap());
        let d1 = bson::to_vec(&doc! { "a": 1 }).unwrap();
        let d2 = bson::to_vec(&doc! { "a": 2 }).unwrap();
        let size = 4 + "documents".len() + 1 + d1.len() + d2.len();
        sections.push(1);
        sections.extend((size as i32).to_le_bytes());
        sections.extend(b"documents\0");
        sections.extend(&d1);
        sections.extend(&d2);
        // With a (fake) checksum trailer.
        sections.extend([1, 2, 3, 4]);
        let Some(Request::Msg {
            command,
            more_to_come,
            request_id,
        }) = read(op_msg(CHECKSUM_PRESENT, &sections)).await.unwrap()
        else {
            panic!("expected OP_MSG");
        };
        assert_eq!(request_id, 7);
        assert!(!more_to_come);
        assert_eq!(
            command,
            doc! { "insert": "c", "$db": "d", "documents": [{ "a": 1 }, { "a": 2 }] }
        );
    }

    #[tokio::test]
    async fn rejects_malformed_messages() {
        // Body section whose document length overruns the message.
        let mut sections = vec![0u8];
        sections.extend(200i32.to_le_bytes());
        sections.extend([0u8; 8]);
        assert!(read(op_msg(0, &sections)).await.is_err());
        // Unknown required flag bit.
        let mut sections = vec![0u8];
        sections.extend(bson::to_vec(&doc! { "ping": 1 }).unwrap());
        assert!(read(op_msg(1 << 5, &sections)).await.is_err());
        // Absurd length.
        assert!(
            read(frame(1, 0, OP_MSG, &[]).unwrap()[..4].to_vec())
                .await
                .is_err()
        );
        let mut huge = (i32::MAX).to_le_bytes().to_vec();
        huge.extend([0u8; 12]);
        assert!(read(huge).await.is_err());
        // Clean close.
        assert!(read(Vec::new()).await.unwrap().is_none());
    }

    /// `{a: {a: {a: ...}}}` nested `depth` times, built without recursion.
    fn nested(depth: usize) -> Vec<u8> {
        let mut doc = vec![5, 0, 0, 0, 0];
        for _ in 0..depth {
            let mut outer = ((doc.len() + 8) as i32).to_le_bytes().to_vec();
            outer.extend([3, b'a', 0]);
            outer.extend(&doc);
            outer.push(0);
            doc = outer;
        }
        doc
    }

    #[tokio::test]
    async fn limits_nesting_depth() {
        let body = |doc: Vec<u8>| {
            let mut sections = vec![0u8];
            sections.extend(doc);
            op_msg(0, &sections)
        };
        // The deepest accepted document still decodes on a 2 MiB stack
        // (the test thread's default), in debug builds too.
        assert!(read(body(nested(MAX_DEPTH - 1))).await.unwrap().is_some());
        let err = read(body(nested(50_000))).await.unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }
}

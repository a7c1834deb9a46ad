//! Hostile requests (issue 10, points 4 and 7): odd bytes, odd ids, odd
//! framing and oversized multipart parts. Every answer is a 4xx (JSON
//! whenever the application or the host answers; see `expect_refused`),
//! never a 500, a reset or a crash, and an honest client is served between
//! and after.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::support::{self, Spindle, UpOptions, expect_json_error, up};

const PASSWORD: &str = "correct horse battery";

/// Bound on every raw socket wait, so no test can hang.
const WAIT: Duration = Duration::from_secs(30);

fn start() -> (Spindle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    (up(UpOptions::new(&manifest)), dir)
}

fn basic(email: &str, password: &str) -> String {
    let pair = format!("{email}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A signed-up user who checks, between the attacks, that signup, login and
/// validate still work.
struct Honest {
    http: reqwest::Client,
    url: String,
    email: String,
    token: String,
}

impl Honest {
    async fn new(spindle: &Spindle) -> Honest {
        let http = support::client();
        let email = format!("{}@example.com", support::unique("honest"));
        let resp = http
            .post(format!("{}/signup", spindle.url))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let mut honest = Honest {
            http,
            url: spindle.url.clone(),
            email,
            token: String::new(),
        };
        honest.still_served().await;
        honest
    }

    /// Logs in again and has the new token validated.
    async fn still_served(&mut self) {
        let resp = self
            .http
            .post(format!("{}/login", self.url))
            .header("authorization", basic(&self.email, PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the honest client can log in");
        self.token = resp.text().await.unwrap();
        let resp = self
            .http
            .post(format!("{}/validate", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the honest client's token is valid");
        let claims: Value = resp.json().await.unwrap();
        assert_eq!(claims["username"], self.email);
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_bytes_and_odd_ids_get_json_4xx() {
    let (spindle, _dir) = start();
    let mut honest = Honest::new(&spindle).await;

    // NUL bytes in JSON strings: refused in an email, kept literally in a
    // password (which is opaque), and in Basic credentials.
    let resp = honest
        .post("/signup")
        .json(&json!({ "email": "nul\u{0}@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 400).await;
    let nul_email = format!("{}@example.com", support::unique("nulpass"));
    let nul_password = "pass\u{0}word\u{0}";
    let resp = honest
        .post("/signup")
        .json(&json!({ "email": nul_email, "password": nul_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = honest
        .post("/login")
        .header("authorization", basic(&nul_email, nul_password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a password with NULs logs in");
    let resp = honest
        .post("/login")
        .header("authorization", basic("a\u{0}b@example.com", "x"))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 401).await;
    honest.still_served().await;

    // Huge emails: over the body limit, over the email limit, over the
    // header limit, and a long one that fits in a header.
    let huge = format!("{}@example.com", "a".repeat(100_000));
    let resp = honest
        .post("/signup")
        .json(&json!({ "email": huge, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 413).await;
    let long = format!("{}@example.com", "a".repeat(50_000));
    let resp = honest
        .post("/signup")
        .json(&json!({ "email": long, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 400).await;
    let resp = honest
        .post("/login")
        .header("authorization", basic(&huge, PASSWORD))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 431).await;
    let resp = honest
        .post("/login")
        .header("authorization", basic(&"b".repeat(20_000), PASSWORD))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 401).await;
    honest.still_served().await;

    // Bodies that are not UTF-8 JSON.
    for body in [
        vec![0xff, 0xfe, 0xfd, b'{', b'}'],
        b"\xff\xfe{\x00\"\x00e\x00\"\x00:\x00}\x00".to_vec(),
        b"{\"email\": \"\xc3\x28@example.com\", \"password\": \"long enough\"}".to_vec(),
        b"{\"email\": \"x@example.com\", \"password\": \"\\ud800 lone\"}".to_vec(),
    ] {
        let resp = honest
            .post("/signup")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_json_error(resp, 400).await;
    }
    honest.still_served().await;

    // Job ids that are not job ids.
    let long_id = "7".repeat(20_000);
    for path in [
        "/jobs/".to_owned(),
        "/jobs/..%2f..".to_owned(),
        "/jobs/..%2F..%2Fetc%2Fpasswd".to_owned(),
        "/jobs/%ff%fe".to_owned(),
        "/jobs/%c0%af".to_owned(),
        "/jobs/%00".to_owned(),
        format!("/jobs/{long_id}"),
        "/jobs/00000000-0000-0000-0000-000000000000".to_owned(),
    ] {
        let resp = honest.get(&path).send().await.unwrap();
        expect_json_error(resp, 404).await;
    }
    // The client resolves `%2e%2e` as `..` (WHATWG URL), so this is `GET /`:
    // the web page, not a job.
    let resp = honest.get("/jobs/%2e%2e").send().await.unwrap();
    assert_eq!(resp.url().path(), "/");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // fid parameters that are not one fid.
    let fid = "65f0a1b2c3d4e5f6a7b8c9d0";
    for query in [
        "".to_owned(),
        "?".to_owned(),
        "?fid=".to_owned(),
        format!("?fid={fid}&fid={fid}"),
        format!("?fid={fid}&fid=ffffffffffffffffffffffff"),
        format!("?fid[]={fid}"),
        format!("?fid%5B%5D={fid}"),
        "?fid=%00".to_owned(),
        "?fid=%ff%fe".to_owned(),
        format!("?fid={}", "f".repeat(20_000)),
    ] {
        let resp = honest
            .get(&format!("/download{query}"))
            .send()
            .await
            .unwrap();
        expect_json_error(resp, 400).await;
    }
    honest.still_served().await;
}

/// A raw HTTP/1.1 connection, for what an HTTP client library will not send.
struct Raw {
    read: OwnedReadHalf,
    /// Taken by a test that writes from another task.
    write: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
}

/// One response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    async fn connect(spindle: &Spindle) -> Raw {
        let addr = spindle.url.trim_start_matches("http://").to_owned();
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connecting in time")
            .expect("connecting");
        let (read, write) = stream.into_split();
        Raw {
            read,
            write: Some(write),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let write = self.write.as_mut().expect("the write half is here");
        tokio::time::timeout(WAIT, write.write_all(bytes))
            .await
            .expect("sending in time")
            .expect("sending");
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    /// A reset is a failure: the server must answer, not drop the client.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.read.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .expect("the connection is not reset");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response, or `None` if the server closed the connection
    /// instead.
    async fn response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "a cut-off response: {:?}", self.buf);
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("an ASCII head");
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {head}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if response.header("transfer-encoding") == Some("chunked") {
            response.body = self.chunked().await;
        } else {
            let length: usize = response
                .header("content-length")
                .map(|v| v.parse().expect("a numeric Content-Length"))
                .unwrap_or(0);
            while self.buf.len() < length {
                assert!(self.fill().await, "the body ended early");
            }
            response.body = self.buf.drain(..length).collect();
        }
        Some(response)
    }

    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.buf, b"\r\n") {
                    break at;
                }
                assert!(self.fill().await, "the chunked body ended early");
            };
            let size_line = String::from_utf8(self.buf[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .expect("a chunk size");
            while self.buf.len() < line_end + 2 + size + 2 {
                assert!(self.fill().await, "the chunked body ended early");
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return body;
            }
        }
    }

    /// True once the server has closed the connection, with nothing more
    /// sent.
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks a refusal: `status` and a JSON `{"error"}` body. Requests hyper
/// cannot parse (a NUL in a header, more than 100 headers, a non-UTF-8
/// request target, a Transfer-Encoding other than chunked) are refused by
/// hyper before the host sees them; the listener gives those answers their
/// JSON body too.
fn expect_refused(resp: &RawResponse, status: u16) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert!(
        resp.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{resp:?}"
    );
    let body: Value = serde_json::from_slice(&resp.body).expect("a JSON body");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_attacks_are_refused_or_handled_per_rfc_9112() {
    let (spindle, _dir) = start();
    let mut honest = Honest::new(&spindle).await;

    // Pipelined requests on one connection are answered in order.
    let fresh = format!("{}@example.com", support::unique("piped"));
    let signup = json!({ "email": fresh, "password": PASSWORD }).to_string();
    let mut raw = Raw::connect(&spindle).await;
    raw.send(
        format!(
            "POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{signup}\
             POST /login HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 0\r\n\r\n\
             GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            signup.len(),
            basic(&fresh, PASSWORD)
        )
        .as_bytes(),
    )
    .await;
    let created = raw.response().await.expect("the signup's answer");
    assert_eq!(created.status, 201, "{created:?}");
    let login = raw.response().await.expect("the login's answer");
    assert_eq!(login.status, 200, "{login:?}");
    expect_refused(&raw.response().await.expect("the 404"), 404);
    expect_refused(&raw.response().await.expect("the 401"), 401);

    // Content-Length together with Transfer-Encoding: chunked, either
    // order. RFC 9112 §6.1: the body is read as chunked and the connection
    // closed after the answer, so the request hidden in the
    // Content-Length bytes is never served.
    let hidden = "0\r\n\r\nPOST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let length = format!("Content-Length: {}", hidden.len());
    for (first, second) in [
        (length.as_str(), "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", length.as_str()),
    ] {
        let mut raw = Raw::connect(&spindle).await;
        raw.send(
            format!("POST /signup HTTP/1.1\r\nHost: x\r\n{first}\r\n{second}\r\n\r\n{hidden}")
                .as_bytes(),
        )
        .await;
        let answer = raw
            .response()
            .await
            .expect("an answer to the first request");
        expect_refused(&answer, 400);
        assert!(raw.closed().await, "nothing answers the smuggled request");
    }
    // A Transfer-Encoding that is not chunked is refused.
    let mut raw = Raw::connect(&spindle).await;
    raw.send(b"POST /signup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n")
        .await;
    expect_refused(&raw.response().await.expect("a refusal"), 400);
    honest.still_served().await;

    // A NUL byte where headers and request targets allow none.
    for request in [
        &b"POST /validate HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n"[..],
        &b"GET /jobs/\0 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"GET /jobs/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let mut raw = Raw::connect(&spindle).await;
        raw.send(request).await;
        expect_refused(&raw.response().await.expect("a refusal"), 400);
    }
    honest.still_served().await;

    // Header bombs: thousands of small headers, one huge header.
    let mut many = b"POST /validate HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..5000 {
        many.extend_from_slice(format!("X-Bomb-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let huge = format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nX-Bomb: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    for request in [many, huge.into_bytes()] {
        let mut raw = Raw::connect(&spindle).await;
        raw.send(&request).await;
        expect_refused(&raw.response().await.expect("a refusal"), 431);
    }
    honest.still_served().await;
}

/// A raw upload declaring `Content-Length: total` whose body is `prefix`
/// and then `filler` bytes, written from another task until the server
/// answers; returns the answer and how many body bytes had been sent by
/// the time it was read.
async fn upload_until_answered(
    spindle: &Spindle,
    token: &str,
    prefix: &[u8],
    filler: u8,
    total: usize,
) -> (RawResponse, usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut raw = Raw::connect(spindle).await;
    raw.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {total}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let mut write = raw.write.take().expect("the write half");
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (sent, prefix) = (sent.clone(), prefix.to_vec());
        tokio::spawn(async move {
            write.write_all(&prefix).await?;
            sent.fetch_add(prefix.len(), Ordering::SeqCst);
            let chunk = vec![filler; 64 * 1024];
            let mut left = total.saturating_sub(prefix.len());
            while left > 0 {
                let n = left.min(chunk.len());
                write.write_all(&chunk[..n]).await?;
                sent.fetch_add(n, Ordering::SeqCst);
                left -= n;
            }
            Ok::<_, std::io::Error>(())
        })
    };
    let answer = raw.response().await.expect("an answer to the upload");
    let sent = sent.load(Ordering::SeqCst);
    // The host drains or closes the rest of the body; the writer's errors
    // from then on are not the point.
    writer.abort();
    (answer, sent)
}

/// A multipart body of `parts` (name, filename, data), boundary `XyZ`.
fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        let filename = filename
            .map(|f| format!("; filename=\"{f}\""))
            .unwrap_or_default();
        body.extend_from_slice(
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XyZ--\r\n");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_limits_refuse_early_in_bounded_memory() {
    let (spindle, _dir) = start();
    let mut honest = Honest::new(&spindle).await;
    let stored_videos = || {
        std::fs::read_dir(spindle.state_dir.join("blobs").join("videos"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // A part header that never ends: 150 MiB of `X-a: aaaa...`. Before the
    // guard the gateway buffered it until its memory cap (500); now it is
    // refused once the header passes 16 KiB, long before the body ends.
    let total = 150 * 1024 * 1024;
    let started = Instant::now();
    let (answer, sent) =
        upload_until_answered(&spindle, &honest.token, b"--XyZ\r\nX-a: ", b'a', total).await;
    expect_refused(&answer, 413);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("16 KiB"), "{body}");
    assert!(
        sent < total,
        "answered before the body was sent ({sent} bytes)"
    );
    eprintln!(
        "endless part header: 413 after {sent} body bytes sent, in {:?}",
        started.elapsed()
    );
    // Junk where the first boundary should be.
    let (answer, sent) = upload_until_answered(&spindle, &honest.token, b"", b'j', total).await;
    expect_refused(&answer, 400);
    assert!(
        sent < total,
        "answered before the body was sent ({sent} bytes)"
    );
    honest.still_served().await;

    // Parts other than the one file, and too many parts: each refused at
    // the first part that is not the file, nothing stored.
    let video: &[u8] = &[7u8; 4096];
    let refused_forms = [
        form(&[
            ("title", None, &b"my video"[..]),
            ("file", Some("a.mp4"), video),
        ]),
        form(&[
            ("file", Some("a.mp4"), video),
            ("title", None, &b"my video"[..]),
        ]),
        form(&[("file", Some(""), &b""[..])]),
        form(&[
            ("file", Some("a.mp4"), video),
            ("file2", Some("b.mp4"), video),
        ]),
        form(&vec![("f", None, &b"x"[..]); 10_000]),
    ];
    for body in refused_forms {
        let resp = honest
            .post("/upload")
            .bearer_auth(&honest.token)
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_json_error(resp, 400).await;
    }
    assert_eq!(stored_videos(), 0, "refused uploads leave nothing stored");

    // The honest upload still goes through.
    let resp = honest
        .post("/upload")
        .bearer_auth(&honest.token)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form(&[("file", Some("clip.mp4"), video)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    honest.still_served().await;
}

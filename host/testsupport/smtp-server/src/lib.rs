//! A small but real SMTP server for tests: ESMTP over TCP on 127.0.0.1 with
//! STARTTLS or implicit TLS (a self-signed certificate made per server with
//! rcgen), AUTH PLAIN and LOGIN, and a list of recipients to refuse. It
//! records every accepted message: envelope sender and recipients, the DATA
//! bytes (dot-unstuffed, without the final CRLF of the terminator, so they
//! equal the RFC 5322 message the client meant), who logged in, and whether
//! the session was encrypted.
//!
//! It runs on its own thread with its own Tokio runtime, so sync tests,
//! `#[tokio::test]` and tests of `spindle up` processes can all use it; it
//! stops when dropped.
//!
//! Dev-only: the platform's mail conformance tests
//! (`host/platform/tests/conformance/mail.rs`) and the host's integration
//! tests (as `support::smtp_server`) use it; nothing links it into a binary.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

/// How the server secures connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS; STARTTLS is not offered (`smtp://`).
    Plain,
    /// STARTTLS offered and required before AUTH and MAIL (`smtp+starttls://`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

impl TlsMode {
    pub fn scheme(self) -> &'static str {
        match self {
            TlsMode::Plain => "smtp",
            TlsMode::StartTls => "smtp+starttls",
            TlsMode::Implicit => "smtps",
        }
    }
}

/// Credentials the server demands before MAIL, and the mechanisms it offers.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub user: String,
    pub password: String,
    /// Space-separated, as in the EHLO `AUTH` line: "PLAIN LOGIN", "LOGIN".
    pub mechanisms: String,
}

impl AuthConfig {
    pub fn new(user: &str, password: &str) -> Self {
        AuthConfig {
            user: user.into(),
            password: password.into(),
            mechanisms: "PLAIN LOGIN".into(),
        }
    }

    pub fn only(mut self, mechanisms: &str) -> Self {
        self.mechanisms = mechanisms.into();
        self
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub tls: TlsMode,
    pub auth: Option<AuthConfig>,
    /// RCPT TO for these addresses gets `550 5.1.1 ... User unknown`.
    pub reject_recipients: Vec<String>,
}

impl Options {
    pub fn new(tls: TlsMode) -> Self {
        Options {
            tls,
            auth: None,
            reject_recipients: Vec::new(),
        }
    }

    pub fn auth(mut self, auth: AuthConfig) -> Self {
        self.auth = Some(auth);
        self
    }

    pub fn reject(mut self, recipient: &str) -> Self {
        self.reject_recipients.push(recipient.into());
        self
    }
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The reverse-path of MAIL FROM, without angle brackets.
    pub mail_from: String,
    /// The forward-paths of accepted RCPT TOs, without angle brackets.
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// The user that authenticated on this session, if any.
    pub authenticated_as: Option<String>,
    /// Whether the session was encrypted when DATA arrived.
    pub tls: bool,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The first header named `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = value.as_mut() {
                    v.push_str(line);
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((key, rest)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                value = Some(rest.trim_start().to_owned());
            }
        }
        value
    }

    /// Everything after the blank line that ends the headers.
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    auth_failures: AtomicUsize,
    tls_failures: AtomicUsize,
}

pub struct SmtpServer {
    addr: SocketAddr,
    tls: TlsMode,
    shared: Arc<Shared>,
    /// Holds `ca.pem` (the server's self-signed certificate) for TLS modes.
    cert_dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SmtpServer {
    pub fn start(tls: TlsMode) -> Self {
        Self::start_with(Options::new(tls))
    }

    pub fn start_with(options: Options) -> Self {
        let (acceptor, cert_dir) = match options.tls {
            TlsMode::Plain => (None, None),
            TlsMode::StartTls | TlsMode::Implicit => {
                let (acceptor, dir) = self_signed_acceptor();
                (Some(acceptor), Some(dir))
            }
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the SMTP port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("SMTP listener address");
        let shared = Arc::new(Shared::default());
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let tls = options.tls;
        let config = Arc::new(Config { options, acceptor });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("smtp-test-{}", addr.port()))
                .spawn(move || serve(listener, config, shared, stop))
                .expect("spawning the SMTP server thread")
        };
        SmtpServer {
            addr,
            tls,
            shared,
            cert_dir,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://127.0.0.1:port` for this server's TLS mode.
    pub fn url(&self) -> String {
        format!("{}://{}", self.tls.scheme(), self.addr)
    }

    /// The same with `user:password@` (neither is percent-encoded here).
    pub fn url_with_login(&self, user: &str, password: &str) -> String {
        format!("{}://{user}:{password}@{}", self.tls.scheme(), self.addr)
    }

    /// A PEM file holding the server's self-signed certificate, for the
    /// client's `ca_file`. Panics for a plain server.
    pub fn ca_file(&self) -> PathBuf {
        self.cert_dir
            .as_ref()
            .expect("a plain SMTP server has no certificate")
            .path()
            .join("ca.pem")
    }

    pub fn messages(&self) -> Vec<Received> {
        self.shared.messages.lock().expect("messages lock").clone()
    }

    /// SMTP sessions accepted so far (TCP connections).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Failed AUTH attempts so far.
    pub fn auth_failures(&self) -> usize {
        self.shared.auth_failures.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client refused the certificate).
    pub fn tls_failures(&self) -> usize {
        self.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// Waits (blocking) until `n` messages have arrived; panics after `timeout`.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} messages within {timeout:?}, got {}",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (async) until `n` messages have arrived; panics after `timeout`.
    pub async fn wait_for_messages_async(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} messages within {timeout:?}, got {}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Config {
    options: Options,
    acceptor: Option<TlsAcceptor>,
}

/// A certificate for `localhost` and `127.0.0.1`, signed by its own key,
/// written as `ca.pem` into a fresh temporary directory.
fn self_signed_acceptor() -> (TlsAcceptor, tempfile::TempDir) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("generating a certificate");
    let dir = tempfile::tempdir().expect("certificate directory");
    std::fs::write(dir.path().join("ca.pem"), certified.cert.pem()).expect("writing ca.pem");
    let key = pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server certificate");
    (TlsAcceptor::from(Arc::new(config)), dir)
}

fn serve(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("SMTP server runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let (config, shared) = (Arc::clone(&config), Arc::clone(&shared));
                    tokio::spawn(async move {
                        // A client that hangs up or fails TLS ends only its session.
                        let _ = session(stream, &config, &shared).await;
                    });
                }
            }
        }
    });
    // Dropping the runtime here cancels every open session.
}

async fn session(stream: TcpStream, config: &Config, shared: &Shared) -> std::io::Result<()> {
    match (config.options.tls, &config.acceptor) {
        (TlsMode::Implicit, Some(acceptor)) => {
            let tls = handshake(acceptor, stream, shared).await?;
            converse(tls, config, shared, true, true).await.map(drop)
        }
        (TlsMode::StartTls, Some(acceptor)) => {
            match converse(stream, config, shared, false, true).await? {
                End::StartTls(stream) => {
                    let tls = handshake(acceptor, stream, shared).await?;
                    converse(tls, config, shared, true, false).await.map(drop)
                }
                End::Closed => Ok(()),
            }
        }
        _ => converse(stream, config, shared, false, true)
            .await
            .map(drop),
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    shared: &Shared,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    acceptor.accept(stream).await.inspect_err(|_| {
        shared.tls_failures.fetch_add(1, Ordering::SeqCst);
    })
}

enum End<S> {
    Closed,
    /// The client asked for STARTTLS: here is the plain stream to upgrade.
    StartTls(S),
}

/// Per-session state; a new EHLO or STARTTLS starts it over.
#[derive(Default)]
struct State {
    authenticated: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

/// One SMTP dialogue over `stream`, until QUIT, hang-up or STARTTLS.
async fn converse<S>(
    stream: S,
    config: &Config,
    shared: &Shared,
    secure: bool,
    greet: bool,
) -> std::io::Result<End<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let options = &config.options;
    let mut io = BufReader::new(stream);
    if greet {
        reply(&mut io, "220 spindle-test ESMTP ready").await?;
    }
    let mut state = State::default();
    loop {
        let Some(line) = read_line(&mut io).await? else {
            return Ok(End::Closed);
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim().to_owned()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let need_tls = options.tls == TlsMode::StartTls && !secure;
        match verb.as_str() {
            "EHLO" | "HELO" => {
                state = State::default();
                let mut lines = vec!["spindle-test".to_string(), "8BITMIME".into()];
                if need_tls {
                    lines.push("STARTTLS".into());
                }
                if let (Some(auth), false) = (&options.auth, need_tls) {
                    lines.push(format!("AUTH {}", auth.mechanisms));
                }
                lines.push("SIZE 10485760".into());
                multiline(&mut io, 250, &lines).await?;
            }
            "STARTTLS" if need_tls => {
                reply(&mut io, "220 2.0.0 Ready to start TLS").await?;
                return Ok(End::StartTls(io.into_inner()));
            }
            "AUTH" if options.auth.is_some() && !need_tls => {
                let expected = options.auth.as_ref().expect("checked above");
                match authenticate(&mut io, expected, &arg).await? {
                    Some(user) => {
                        state.authenticated = Some(user);
                        reply(&mut io, "235 2.7.0 Authentication successful").await?;
                    }
                    None => {
                        shared.auth_failures.fetch_add(1, Ordering::SeqCst);
                        reply(&mut io, "535 5.7.8 Authentication credentials invalid").await?;
                    }
                }
            }
            "MAIL" if need_tls => {
                reply(&mut io, "530 5.7.0 Must issue a STARTTLS command first").await?;
            }
            "MAIL" if options.auth.is_some() && state.authenticated.is_none() => {
                reply(&mut io, "530 5.7.0 Authentication required").await?;
            }
            "MAIL" if state.mail_from.is_some() => {
                reply(&mut io, "503 5.5.1 Error: nested MAIL command").await?;
            }
            "MAIL" => match path_after(&arg, "FROM:") {
                Some(from) => {
                    state.mail_from = Some(from);
                    state.rcpt_to.clear();
                    reply(&mut io, "250 2.1.0 Ok").await?;
                }
                None => reply(&mut io, "501 5.5.4 Syntax: MAIL FROM:<address>").await?,
            },
            "RCPT" if state.mail_from.is_none() => {
                reply(&mut io, "503 5.5.1 Error: need MAIL command").await?;
            }
            "RCPT" => match path_after(&arg, "TO:") {
                Some(to) if options.reject_recipients.contains(&to) => {
                    let text =
                        format!("550 5.1.1 <{to}>: Recipient address rejected: User unknown");
                    reply(&mut io, &text).await?;
                }
                Some(to) => {
                    state.rcpt_to.push(to);
                    reply(&mut io, "250 2.1.5 Ok").await?;
                }
                None => reply(&mut io, "501 5.5.4 Syntax: RCPT TO:<address>").await?,
            },
            "DATA" if state.rcpt_to.is_empty() => {
                reply(&mut io, "503 5.5.1 Error: need RCPT command").await?;
            }
            "DATA" => {
                reply(&mut io, "354 End data with <CR><LF>.<CR><LF>").await?;
                let data = read_data(&mut io).await?;
                let received = Received {
                    mail_from: state.mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut state.rcpt_to),
                    data,
                    authenticated_as: state.authenticated.clone(),
                    tls: secure,
                };
                let queued = {
                    let mut messages = shared.messages.lock().expect("messages lock");
                    messages.push(received);
                    messages.len()
                };
                reply(&mut io, &format!("250 2.0.0 Ok: queued as {queued}")).await?;
            }
            "RSET" => {
                state.mail_from = None;
                state.rcpt_to.clear();
                reply(&mut io, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(&mut io, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(&mut io, "221 2.0.0 Bye").await?;
                return Ok(End::Closed);
            }
            _ => reply(&mut io, "502 5.5.2 Error: command not recognized").await?,
        }
    }
}

/// Runs AUTH PLAIN or LOGIN (with or without an initial response) and
/// returns the user on success.
async fn authenticate<S>(
    io: &mut BufReader<S>,
    expected: &AuthConfig,
    arg: &str,
) -> std::io::Result<Option<String>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let offered = expected
        .mechanisms
        .split_whitespace()
        .any(|m| m.eq_ignore_ascii_case(&mechanism));
    if !offered {
        return Ok(None);
    }
    let (user, password) = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(r) => r,
                None => challenge(io, "").await?,
            };
            // authzid NUL authcid NUL password
            let decoded = decode(&response);
            let mut parts = decoded.split('\0').skip(1);
            match (parts.next(), parts.next()) {
                (Some(u), Some(p)) => (u.to_owned(), p.to_owned()),
                _ => return Ok(None),
            }
        }
        "LOGIN" => {
            let user = match initial {
                Some(u) => u,
                None => challenge(io, "VXNlcm5hbWU6").await?, // "Username:"
            };
            let password = challenge(io, "UGFzc3dvcmQ6").await?; // "Password:"
            (decode(&user), decode(&password))
        }
        _ => return Ok(None),
    };
    let ok = user == expected.user && password == expected.password;
    Ok(ok.then_some(user))
}

async fn challenge<S>(io: &mut BufReader<S>, text: &str) -> std::io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    reply(io, &format!("334 {text}")).await?;
    read_line(io)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
}

fn decode(b64: &str) -> String {
    BASE64
        .decode(b64.trim())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// `FROM:<a@b> BODY=8BITMIME` → `a@b`.
fn path_after(arg: &str, keyword: &str) -> Option<String> {
    let rest = arg.get(..keyword.len())?;
    if !rest.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

/// One command line without its CRLF; `None` at end of stream.
async fn read_line<S>(io: &mut BufReader<S>) -> std::io::Result<Option<String>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    if io.read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&buf);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// The DATA lines up to the lone ".", dot-unstuffed; the CRLF that precedes
/// the terminating dot belongs to the terminator and is dropped.
async fn read_data<S>(io: &mut BufReader<S>) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let unstuffed = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
    if data.ends_with(b"\r\n") {
        data.truncate(data.len() - 2);
    }
    Ok(data)
}

async fn reply<S>(io: &mut BufReader<S>, line: &str) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = io.get_mut();
    stream.write_all(format!("{line}\r\n").as_bytes()).await?;
    stream.flush().await
}

async fn multiline<S>(io: &mut BufReader<S>, code: u16, lines: &[String]) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut text = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        text.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    let stream = io.get_mut();
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

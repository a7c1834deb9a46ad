//! Hostile-client benchmark: an honest client's latency on its own and
//! under each attack of the hostile-client suite, with the host's peak RSS,
//! against a release `spindle up` of the app on embedded defaults.
//!
//! Run with `cargo bench -p spindle --bench attack`. Knobs (env):
//! `BENCH_SECONDS` per phase (default 10). The attackers, the honest client
//! and the host share the machine, so the latencies include the attack's
//! own CPU use on the client side.

// Benchmark code: a failed unwrap is a failed benchmark, which is what it should be.
#![allow(clippy::unwrap_used)]

#[path = "../tests/integration/support/mod.rs"]
mod support;

use base64::Engine as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "honest password";

#[derive(Clone, Copy, Debug)]
enum Attack {
    None,
    /// 400 connections that never finish their headers.
    Slowloris,
    /// 300 signup bodies trickling a byte every 2 s.
    SlowBodies,
    /// 300 connections logging in at once, over and over (60 accounts,
    /// each from its own address).
    LoginFlood,
    /// 50 connections guessing one account's password.
    Guessing,
    /// Requests with 64 KiB of headers, as fast as they are answered.
    HeaderBomb,
    /// Uploads whose multipart part header never ends.
    MultipartBomb,
}

struct Target {
    url: String,
    addr: String,
    token: String,
    victim: String,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Resets the kernel's peak-RSS mark (VmHWM) so each phase has its own.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

async fn raw(addr: &str) -> Option<TcpStream> {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()
}

/// Accounts the login flood uses, each from an address of its own
/// (127.0.1.N): every login is a real Argon2 hash, within the throttle.
const FLOOD_ACCOUNTS: usize = 60;

fn flood_address(n: usize) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 1, (n % FLOOD_ACCOUNTS + 1) as u8])
}

/// A connection to `addr` from `local`.
async fn raw_from(addr: &str, local: std::net::IpAddr) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(std::net::SocketAddr::new(local, 0)).ok()?;
    let target = addr.parse().ok()?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
        .await
        .ok()?
        .ok()
}

/// One attacker connection (the `n`th), repeated until `stop`.
async fn attacker(attack: Attack, n: usize, t: Arc<Target>, stop: Arc<AtomicBool>) {
    let host = t.addr.clone();
    while !stop.load(Ordering::Relaxed) {
        match attack {
            Attack::None => return,
            Attack::Slowloris => {
                let Some(mut s) = raw(&t.addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let _ = s
                    .write_all(format!("GET /jobs/x HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
                    .await;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if s.write_all(b"X-a: b\r\n").await.is_err() {
                        break;
                    }
                }
            }
            Attack::SlowBodies => {
                let Some(mut s) = raw(&t.addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let head = format!(
                    "POST /signup HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes()).await;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if s.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
            Attack::LoginFlood => {
                let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                    "flood-{}@example.com:{PASSWORD}",
                    n % FLOOD_ACCOUNTS
                ));
                let request = format!(
                    "POST /login HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {basic}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if let Some(s) = raw_from(&t.addr, flood_address(n)).await {
                    exchange(s, request.as_bytes()).await;
                }
            }
            Attack::Guessing => {
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:wrong guess", t.victim));
                let request = format!(
                    "POST /login HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {basic}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if let Some(s) = raw(&t.addr).await {
                    exchange(s, request.as_bytes()).await;
                }
            }
            Attack::HeaderBomb => {
                let mut request = format!("GET /jobs/x HTTP/1.1\r\nHost: {host}\r\n");
                for i in 0..1000 {
                    request.push_str(&format!("X-Bomb-{i}: {}\r\n", "a".repeat(60)));
                }
                request.push_str("Connection: close\r\n\r\n");
                if let Some(s) = raw(&t.addr).await {
                    exchange(s, request.as_bytes()).await;
                }
            }
            Attack::MultipartBomb => {
                let Some(mut s) = raw(&t.addr).await else {
                    continue;
                };
                let head = format!(
                    "POST /upload HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=XX\r\nTransfer-Encoding: chunked\r\n\r\n",
                    t.token
                );
                let _ = s.write_all(head.as_bytes()).await;
                let first = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\nX-a: ";
                let mut ok = write_chunk(&mut s, first).await;
                let filler = vec![b'a'; 64 * 1024];
                let mut sent = 0usize;
                while ok && sent < 150 << 20 && !stop.load(Ordering::Relaxed) {
                    ok = write_chunk(&mut s, &filler).await;
                    sent += filler.len();
                }
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
            }
        }
    }
}

async fn write_chunk(s: &mut TcpStream, data: &[u8]) -> bool {
    let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    s.write_all(&frame).await.is_ok()
}

/// Sends one request on `s` and reads until the connection closes.
async fn exchange(mut s: TcpStream, request: &[u8]) {
    if s.write_all(request).await.is_err() {
        return;
    }
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink)).await;
}

fn connections(attack: Attack) -> usize {
    match attack {
        Attack::None => 0,
        Attack::Slowloris => 400,
        Attack::SlowBodies | Attack::LoginFlood => 300,
        Attack::Guessing => 50,
        Attack::HeaderBomb => 32,
        Attack::MultipartBomb => 8,
    }
}

struct Phase {
    latencies: Vec<Duration>,
    failures: usize,
    peak_mib: u64,
}

/// The honest client: `GET /jobs/{unknown}` with a valid token (gateway,
/// auth's /validate, a blob lookup) answered 404, on 4 connections.
async fn honest(t: Arc<Target>, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let failures = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (client, t, stop, failures) =
                (client.clone(), t.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let url = format!("{}/jobs/00000000-0000-4000-8000-00000000000{i}", t.url);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let answer = client.get(&url).bearer_auth(&t.token).send().await;
                    match answer {
                        Ok(r) if r.status() == 404 => latencies.push(started.elapsed()),
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("honest worker"));
    }
    all.sort();
    (all, failures.load(Ordering::Relaxed))
}

async fn phase(attack: Attack, t: Arc<Target>, pid: u32, seconds: u64) -> Phase {
    reset_peak(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..connections(attack))
        .map(|n| tokio::spawn(attacker(attack, n, t.clone(), stop.clone())))
        .collect();
    // Let the attack build up before measuring.
    if !matches!(attack, Attack::None) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let honest_stop = Arc::new(AtomicBool::new(false));
    let measuring = tokio::spawn(honest(t.clone(), honest_stop.clone()));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    honest_stop.store(true, Ordering::Relaxed);
    let (latencies, failures) = measuring.await.expect("honest client");
    let peak_mib = rss_mib(pid, "VmHWM:");
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    // Let the host settle (closed sockets, freed instances) between phases.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Phase {
        latencies,
        failures,
        peak_mib,
    }
}

fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
    latencies.get(i).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = support::app_manifest(dir.path());
    let s = support::up(support::UpOptions::new(&manifest).env("SPINDLE_LOG", "warn"));
    let client = support::client();
    for email in ["honest@example.com", "victim@example.com"] {
        let r = client
            .post(format!("{}/signup", s.url))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("signup");
        assert_eq!(r.status(), 201, "signup {email}");
    }
    for n in 0..FLOOD_ACCOUNTS {
        // Each from its own address: signups are limited per address.
        let from = reqwest::Client::builder()
            .local_address(flood_address(n))
            .build()
            .expect("client");
        let r = from
            .post(format!("{}/signup", s.url))
            .json(&serde_json::json!({"email": format!("flood-{n}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .expect("signup");
        assert_eq!(r.status(), 201, "signup flood-{n}");
    }
    let token = client
        .post(format!("{}/login", s.url))
        .basic_auth("honest@example.com", Some(PASSWORD))
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("token");
    let addr = s.url.trim_start_matches("http://").to_string();
    let target = Arc::new(Target {
        url: s.url.clone(),
        addr,
        token,
        victim: "victim@example.com".into(),
    });

    println!(
        "spindle attack bench: honest client = GET /jobs/ID with a token (4 connections), {seconds}s per phase, release build, embedded defaults"
    );
    println!(
        "{:<28} {:>11} {:>9} {:>9} {:>9} {:>14}",
        "attack", "connections", "answers", "p50", "p99", "host peak RSS"
    );
    for attack in [
        Attack::None,
        Attack::Slowloris,
        Attack::SlowBodies,
        Attack::LoginFlood,
        Attack::Guessing,
        Attack::HeaderBomb,
        Attack::MultipartBomb,
    ] {
        let p = phase(attack, target.clone(), s.pid(), seconds).await;
        println!(
            "{:<28} {:>11} {:>9} {:>9.1?} {:>9.1?} {:>10} MiB{}",
            format!("{attack:?}"),
            connections(attack),
            p.latencies.len(),
            percentile(&p.latencies, 0.5),
            percentile(&p.latencies, 0.99),
            p.peak_mib,
            if p.failures > 0 {
                format!("   ({} honest requests failed)", p.failures)
            } else {
                String::new()
            }
        );
    }
}

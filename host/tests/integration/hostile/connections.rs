//! Connection hygiene over raw sockets: headers that never finish, idle
//! keep-alive connections, the connection cap, and request bodies that
//! trickle, while an honest client keeps being served.

use crate::support::{self, Spindle, expect_json_error, up_with_config, write_manifest};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The testbed component on every path, allowed to publish to `jobs`.
fn testbed_manifest() -> (tempfile::TempDir, std::path::PathBuf) {
    let wasm = support::build_components();
    write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "hostile-connections"
[[trigger.http]]
route = "/..."
component = "testbed"
[component.testbed]
source = "{}"
publish_queues = ["jobs"]
"#,
        wasm.join("testbed.wasm").display()
    ))
}

fn start(limits: &str) -> (Spindle, tempfile::TempDir, tempfile::TempDir) {
    let (dir, manifest) = testbed_manifest();
    let (s, rc) = up_with_config(&manifest, &format!("[limits]\n{limits}"));
    (s, dir, rc)
}

fn addr(s: &Spindle) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Waits up to `limit` for the server to close `stream`: true when it did
/// (end of stream or a reset), false when it was still open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response the server sends before it closes (none expected).
            Ok(Ok(_)) => {}
        }
    }
}

/// An HTTP/1 client connection; the task resolves when the server closes it.
async fn connect(s: &Spindle) -> (SendRequest<Empty<Bytes>>, JoinHandle<Instant>) {
    let stream = TcpStream::connect(addr(s)).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    (send, closed)
}

async fn get(send: &mut SendRequest<Empty<Bytes>>, s: &Spindle, path: &str) -> (u16, String) {
    let request = http::Request::get(path)
        .header("host", addr(s))
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), send.send_request(request))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Asks `/hello` on a fresh connection; the status, or 0 for no answer.
async fn honest(c: &reqwest::Client, s: &Spindle) -> u16 {
    match c.get(format!("{}/hello", s.url)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_headers_are_cut_off_while_an_honest_client_is_served() {
    let (s, _dir, _rc) = start("header_read_timeout_secs = 2\nidle_timeout_secs = 60\n");
    let started = Instant::now();
    let mut attackers = Vec::new();
    for i in 0..400 {
        let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
        stream
            .write_all(format!("GET /hello?{i} HTTP/1.1\r\nHost: x\r\n").as_bytes())
            .await
            .unwrap();
        attackers.push(stream);
    }
    // One more that keeps dribbling header bytes: progress does not reset
    // the clock.
    let mut dribbler = TcpStream::connect(addr(&s)).await.unwrap();
    let dribbling = tokio::spawn(async move {
        dribbler
            .write_all(b"GET /hello HTTP/1.1\r\n")
            .await
            .unwrap();
        let opened = Instant::now();
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if dribbler.write_all(b"X-Slow: a\r\n").await.is_err() {
                return opened.elapsed();
            }
        }
        panic!("a connection dribbling its headers was still open after 15 s");
    });

    // The honest client is answered the whole time.
    let c = fresh_client();
    let honest_task = {
        let (c, url) = (c.clone(), s.url.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                let status = match c.get(format!("{url}/hello")).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                answers.push(status);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        })
    };

    let mut closed = 0;
    for stream in &mut attackers {
        let limit = Duration::from_secs(20).saturating_sub(started.elapsed());
        if closed_within(stream, limit).await {
            closed += 1;
        }
    }
    let all_closed_after = started.elapsed();
    assert_eq!(closed, 400, "connections with unfinished headers stay open");
    assert!(
        all_closed_after >= Duration::from_secs(2),
        "closed before the header-read timeout: {all_closed_after:?}"
    );
    let dribbled = tokio::time::timeout(Duration::from_secs(30), dribbling)
        .await
        .expect("the dribbler finishes")
        .unwrap();
    assert!(dribbled < Duration::from_secs(15), "{dribbled:?}");

    let answers = honest_task.await.unwrap();
    assert!(answers.len() >= 5, "{answers:?}");
    assert!(
        answers.iter().all(|&a| a == 200),
        "the honest client was not always answered: {answers:?}"
    );
    println!(
        "400 slowloris connections closed after {all_closed_after:?}; the dribbler after {dribbled:?}; honest requests meanwhile: {}",
        answers.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_closes_after_idle_timeout() {
    // The idle timeout is longer than the header-read timeout: idling
    // between requests is not judged by the header clock.
    let (s, _dir, _rc) = start("header_read_timeout_secs = 1\nidle_timeout_secs = 5\n");
    let (mut send, closed) = connect(&s).await;
    assert_eq!(get(&mut send, &s, "/hello").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !closed.is_finished(),
        "closed after 2.5 s idle (idle_timeout is 5 s)"
    );
    assert_eq!(get(&mut send, &s, "/hello").await.0, 200);
    let idle_since = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("an idle connection is closed within 20 s")
        .unwrap();
    let idle = closed_at.duration_since(idle_since);
    assert!(
        idle >= Duration::from_millis(4900),
        "closed after {idle:?} idle"
    );
    println!("idle keep-alive connection closed after {idle:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let (s, _dir, _rc) = start("max_connections = 8\nidle_timeout_secs = 60\n");
    let mut held = Vec::new();
    for _ in 0..8 {
        let (mut send, closed) = connect(&s).await;
        assert_eq!(get(&mut send, &s, "/hello").await.0, 200);
        held.push((send, closed));
    }
    let c = fresh_client();
    let waiting = {
        let (c, s_url) = (c.clone(), s.url.clone());
        tokio::spawn(async move {
            match c.get(format!("{s_url}/hello")).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "a ninth connection was served while 8 held the cap"
    );
    assert!(s.log_contains("max_connections"), "the cap is logged");
    // One held connection closes: the waiting one gets its slot.
    let (send, closed) = held.pop().unwrap();
    drop(send);
    closed.abort();
    let status = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("answered once a slot is free")
        .unwrap();
    assert_eq!(status, 200);
    // The held connections were never disturbed.
    for (send, _) in &mut held {
        assert_eq!(get(send, &s, "/hello").await.0, 200);
    }
}

/// How a body is sent: `burst` bytes at once, then `chunk` bytes every
/// `every`, `len` in all.
#[derive(Clone, Copy)]
struct Pace {
    len: usize,
    burst: usize,
    chunk: usize,
    every: Duration,
}

/// Sends `request` (method and path) with a body paced by `pace`; returns
/// the answer's status and body.
async fn trickle(addr: &str, request: &str, pace: Pace, extra_headers: &str) -> (u16, String) {
    let Pace {
        len,
        burst,
        chunk,
        every,
    } = pace;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{request} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n{extra_headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let mut sent = burst.min(len);
        if writer.write_all(&vec![b' '; sent]).await.is_err() {
            return;
        }
        while sent < len {
            let n = chunk.min(len - sent);
            if writer.write_all(&vec![b' '; n]).await.is_err() {
                return;
            }
            sent += n;
            tokio::time::sleep(every).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if complete(&answer) {
                break;
            }
        }
    })
    .await;
    writing.abort();
    assert!(read.is_ok(), "no answer within 60 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Whether `answer` holds a whole response with a Content-Length body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| body.len() >= n)
}

/// A trickled answer must be a 408 naming the floor.
fn expect_too_slow(status: u16, body: &str) {
    assert_eq!(status, 408, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("1024 bytes/s"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trickled_bodies_get_408_and_never_keep_a_slot() {
    // One slot for the component: whoever holds it blocks everyone else.
    let (s, _dir, _rc) = start(
        "min_body_rate_bytes_per_sec = 1024
body_rate_grace_secs = 2
queue_timeout_secs = 0.5
         [limits.components.testbed]
max_concurrency = 1
",
    );
    let c = fresh_client();
    let slow = |burst| Pace {
        len: burst + 1000,
        burst,
        chunk: 1,
        every: Duration::from_millis(500),
    };

    // Small bodies are read ahead before any slot is taken: trickling them
    // holds nothing, and the component keeps serving.
    let started = Instant::now();
    let trickles: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr(&s);
            tokio::spawn(async move { trickle(&addr, "POST /publish/jobs", slow(0), "").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(honest(&c, &s).await, 200, "the only slot is free meanwhile");
    for t in trickles {
        let (status, body) = t.await.unwrap();
        expect_too_slow(status, &body);
    }
    let cut_after = started.elapsed();
    assert!(cut_after >= Duration::from_secs(2), "{cut_after:?}");

    // A large body reaches the component, which reads it as it comes; once
    // it trickles below the floor the invocation ends and the slot is free.
    let big = {
        let addr = addr(&s);
        tokio::spawn(async move { trickle(&addr, "POST /publish/jobs", slow(96 * 1024), "").await })
    };
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        honest(&c, &s).await,
        503,
        "the component's one slot is reading the body"
    );
    let (status, body) = big.await.unwrap();
    expect_too_slow(status, &body);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let status = honest(&c, &s).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline && status != 0,
            "the trickled request's slot was not freed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "small trickles answered 408 after {cut_after:?} holding no slot; the large one's slot was free on attempt {attempts}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_at_a_steady_rate_may_take_longer_than_the_grace_period() {
    let (s, _dir, _rc) = start("min_body_rate_bytes_per_sec = 1024\nbody_rate_grace_secs = 1\n");
    // 16 KiB at 4 KiB/s: four times the floor, for four grace periods.
    let started = Instant::now();
    let pace = Pace {
        len: 16 * 1024,
        burst: 0,
        chunk: 512,
        every: Duration::from_millis(125),
    };
    let (status, body) = trickle(&addr(&s), "POST /publish/jobs", pace, "").await;
    let took = started.elapsed();
    assert_eq!(status, 202, "{body}");
    assert!(took > Duration::from_secs(2), "{took:?}");
    println!("a 16 KiB body at 4 KiB/s took {took:?} and was accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_deploy_on_the_admin_listener_gets_408() {
    let (s, _dir, _rc) = start("min_body_rate_bytes_per_sec = 1024\nbody_rate_grace_secs = 1\n");
    let admin = s.admin.trim_start_matches("http://").to_string();
    let auth = format!("Authorization: Bearer {}\r\n", s.admin_token());
    let pace = Pace {
        len: 100,
        burst: 0,
        chunk: 1,
        every: Duration::from_millis(400),
    };
    let (status, body) = trickle(&admin, "PUT /components/testbed", pace, &auth).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let c = support::client();
    let health = c.get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    expect_json_error(
        c.get(format!("{}/nope", s.admin)).send().await.unwrap(),
        404,
    )
    .await;
}

/// Sets the soft open-file limit of process `pid` (util-linux `prlimit`).
fn set_open_file_limit(pid: u32, soft: u64) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("running prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_errors_back_off_instead_of_spinning() {
    let (s, _dir, _rc) = start("max_connections = 1000\n");
    let c = fresh_client();
    assert_eq!(honest(&c, &s).await, 200);
    let original = std::fs::read_to_string(format!("/proc/{}/limits", s.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .expect("the open-file limit in /proc/PID/limits");
    let open = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .count() as u64;
    set_open_file_limit(s.pid(), open + 10);
    // More connections than descriptors left: accept runs into EMFILE.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(addr(&s)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = s.stderr().matches("accepting a connection failed").count();
    assert!(
        failures >= 1,
        "accept never failed; the test did not reach EMFILE"
    );
    // Backing off from 10 ms to 1 s retries about ten times in 3 s; a
    // spinning loop would log thousands of times.
    assert!(failures <= 50, "{failures} accept failures logged in 3 s");

    set_open_file_limit(s.pid(), original);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while honest(&c, &s).await != 200 {
        assert!(Instant::now() < deadline, "not serving again after EMFILE");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{failures} accept failures logged in 3 s at EMFILE");
}

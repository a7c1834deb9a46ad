//! Load benchmark: requests per second and p50/p99 latency for the auth
//! function's `/validate` and for a hello component, under concurrent
//! clients, against a release `spindle up` on embedded defaults.
//!
//! Run with `cargo bench -p spindle --bench http_load`. Knobs (env):
//! `BENCH_SECONDS` (default 10), `BENCH_CONNECTIONS` (default 32).
//! The load generator shares the machine with the host, so the numbers are
//! a floor for what the host alone could do.

// Benchmark code: a failed unwrap is a failed benchmark, which is what it should be.
#![allow(clippy::unwrap_used)]

#[path = "../tests/integration/support/mod.rs"]
mod support;

use base64::Engine as _;
use std::time::{Duration, Instant};
use support::{UpOptions, up, write_manifest};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Report {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<10} {:>9.0} req/s   p50 {:>8.2?}   p99 {:>8.2?}   ({} requests, {} errors, {:.1?})",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.requests,
            self.errors,
            self.elapsed,
        );
    }
}

async fn load(
    client: reqwest::Client,
    make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + Clone + 'static,
    connections: u64,
    duration: Duration,
) -> Report {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let client = client.clone();
            let make = make.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match make(&client).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.expect("load worker");
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Report {
        requests: latencies.len(),
        errors,
        elapsed: started.elapsed(),
        latencies,
    }
}

#[tokio::main]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let wasm = support::build_components();
    let (_dir, manifest) = write_manifest(
        &include_str!("load.spin.toml").replace("@WASM@", &wasm.display().to_string()),
    );
    let s = up(UpOptions::new(&manifest).env("SPINDLE_LOG", "warn"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections as usize)
        .build()
        .expect("client");

    let signup = client
        .post(format!("{}/signup", s.url))
        .json(&serde_json::json!({"email": "bench@example.com", "password": "bench-password"}))
        .send()
        .await
        .expect("signup");
    assert!(signup.status().is_success(), "signup: {}", signup.status());
    let basic =
        base64::engine::general_purpose::STANDARD.encode("bench@example.com:bench-password");
    let token = client
        .post(format!("{}/login", s.url))
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .expect("login")
        .text()
        .await
        .expect("token");

    println!("spindle http_load: {connections} connections, {seconds}s per target, release build");
    let duration = Duration::from_secs(seconds);
    // Warm-up: first requests fault in the instance pool's pages.
    let hello_url = format!("{}/hello", s.url);
    let _ = load(
        client.clone(),
        move |c| c.get(&hello_url),
        connections,
        Duration::from_secs(1),
    )
    .await;

    let hello_url = format!("{}/hello", s.url);
    load(
        client.clone(),
        move |c| c.get(&hello_url),
        connections,
        duration,
    )
    .await
    .print("hello");
    let validate_url = format!("{}/validate", s.url);
    let bearer = format!("Bearer {token}");
    load(
        client.clone(),
        move |c| c.post(&validate_url).header("authorization", &bearer),
        connections,
        duration,
    )
    .await
    .print("/validate");
}

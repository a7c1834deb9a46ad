//! The application's throughput and memory: a 1 GiB upload and a 1 GiB
//! download through a release `spindle up` on embedded defaults, with the
//! host's peak RSS; then a 60 s video from upload to `done`, next to
//! ffmpeg's own time for the same conversion.
//!
//! Run with `cargo bench -p spindle --bench app` (needs ffmpeg). Knob:
//! `BENCH_MIB` (default 1024) sets the size of the large file.

// Benchmark code: a failed unwrap is a failed benchmark, which is what it should be.
#![allow(clippy::unwrap_used)]

#[path = "../tests/integration/support/mod.rs"]
mod support;

use base64::Engine as _;
use spindle_platform::capabilities::blobs::{BlobStore, NewFile};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{UpOptions, up};

const CHUNK: usize = 1 << 20;

/// kB values of `VmRSS` and `VmHWM` (peak) from /proc.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples the host's RSS every 20 ms; the maximum seen since the last reset.
struct RssWatch {
    max_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let max_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(rss_kb(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch { max_kb, stop }
    }

    fn take_max_mib(&self) -> f64 {
        self.max_kb.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pattern_stream(
    total: usize,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let n = total / CHUNK;
    tokio_stream::iter((0..n).map(move |_| Ok(chunk.clone())))
}

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg is needed for this benchmark");
    assert!(status.success());
}

async fn wait_done(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    job: &str,
) -> serde_json::Value {
    loop {
        let v: serde_json::Value = client
            .get(format!("{url}/jobs/{job}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "done" || v["status"] == "failed" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib * CHUNK;
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let s = up(UpOptions::new(&manifest));
    let pid = s.pid();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let email = "bench@example.com";
    client
        .post(format!("{}/signup", s.url))
        .json(&serde_json::json!({"email": email, "password": "benchmark password"}))
        .send()
        .await
        .unwrap();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{email}:benchmark password"));
    let token = client
        .post(format!("{}/login", s.url))
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (idle_rss, _) = rss_kb(pid);
    println!("host RSS at rest: {:.1} MiB", idle_rss as f64 / 1024.0);
    let watch = RssWatch::start(pid);

    // Upload: multipart, streamed from memory chunks (never held whole).
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(pattern_stream(size)),
        size as u64,
    )
    .file_name("big.bin");
    let started = Instant::now();
    let resp = client
        .post(format!("{}/upload", s.url))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let job: serde_json::Value = resp.json().await.unwrap();
    println!(
        "upload   {mib} MiB in {took:.2?}: {:.0} MB/s, host peak RSS {:.1} MiB",
        size as f64 / 1e6 / took.as_secs_f64(),
        watch.take_max_mib()
    );
    // Not a video: the worker spools it and fails it; wait so it does not
    // overlap the download.
    let failed = wait_done(&client, &s.url, &token, job["job_id"].as_str().unwrap()).await;
    println!(
        "(the upload, not a video, ended `{}`: {})",
        failed["status"], failed["error"]
    );
    watch.take_max_mib();

    // Download: a file of the same size in `mp3s`, owned by the user.
    let blobs = BlobStore::connect(None, &s.state_dir).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let feed = async move {
        let chunk = bytes::Bytes::from(vec![0x55u8; CHUNK]);
        for _ in 0..mib {
            tx.send(chunk.clone()).await.unwrap();
        }
    };
    let file = NewFile {
        filename: "big.mp3".into(),
        content_type: Some("audio/mpeg".into()),
        metadata: vec![("owner".into(), email.into())],
    };
    let (_, stored) = tokio::join!(feed, blobs.create("mp3s", file, rx));
    let fid = stored.unwrap().id;
    let started = Instant::now();
    let mut resp = client
        .get(format!("{}/download?fid={fid}", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0usize;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len();
    }
    let took = started.elapsed();
    assert_eq!(got, size);
    println!(
        "download {mib} MiB in {took:.2?}: {:.0} MB/s, host peak RSS {:.1} MiB",
        size as f64 / 1e6 / took.as_secs_f64(),
        watch.take_max_mib()
    );
    println!(
        "host VmHWM (peak RSS over its whole life): {:.1} MiB",
        rss_kb(pid).1 as f64 / 1024.0
    );

    // A 60 s video: ffmpeg alone, then upload to `done` through the app.
    let video = dir.path().join("sixty.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=60:size=640x480:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=60",
        "-c:v",
        "mpeg4",
        "-q:v",
        "5",
        "-c:a",
        "aac",
        "-shortest",
        video.to_str().unwrap(),
    ]);
    let alone = dir.path().join("alone.mp3");
    let started = Instant::now();
    // The worker's own output arguments, into a file instead of a pipe.
    let mut args = vec!["-i", video.to_str().unwrap()];
    args.extend(convert::MP3_OUTPUT_ARGS);
    args.push(alone.to_str().unwrap());
    ffmpeg(&args);
    let ffmpeg_alone = started.elapsed();
    let bytes = std::fs::read(&video).unwrap();
    let video_mb = bytes.len() as f64 / 1e6;
    let started = Instant::now();
    let part = reqwest::multipart::Part::bytes(bytes).file_name("sixty.mp4");
    let job: serde_json::Value = client
        .post(format!("{}/upload", s.url))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let accepted = started.elapsed();
    let done = wait_done(&client, &s.url, &token, job["job_id"].as_str().unwrap()).await;
    let total = started.elapsed();
    assert_eq!(done["status"], "done", "{done}");
    println!(
        "60 s video ({video_mb:.1} MB): upload→202 {accepted:.2?}, upload→done {total:.2?}; ffmpeg alone {ffmpeg_alone:.2?}"
    );
}

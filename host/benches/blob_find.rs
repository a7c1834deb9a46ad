//! `find` by `job_id` on the embedded (files) blob backend, what
//! `GET /jobs/{id}` does, at 100, 1,000, 10,000 and 100,000 stored files:
//! median and p99 of the indexed lookup, next to a full scan of the
//! descriptions (what `find` did before the index) for scale.
//!
//! Run with `cargo bench -p spindle --bench blob_find`. Knobs: `BENCH_DIR`
//! (default `/dev/shm` when there is one: each create fsyncs several times,
//! which on a disk makes filling 100,000 files take long; the lookups read
//! from the page cache either way), `BENCH_MAX_FILES` (default 100000),
//! `BENCH_LOOKUPS` (default 500 per size).
//!
//! The GridFS backend is not measured: its test server (`mongo-wire`)
//! answers every query with a linear scan, so timing it would measure the
//! test server, not an index.

// Benchmark code: a failed unwrap is a failed benchmark, which is what it should be.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use spindle_platform::capabilities::blobs::{BlobStore, NewFile};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A cheap deterministic sequence (xorshift), to pick job ids.
struct Picker(u64);

impl Picker {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What `find` did before the index: read and parse every description.
fn scan(bucket_dir: &Path, key: &str, value: &str) -> usize {
    let mut found = 0;
    for entry in std::fs::read_dir(bucket_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read(&path).unwrap();
            let stored: serde_json::Value = serde_json::from_slice(&text).unwrap();
            if stored["metadata"][key] == value {
                found += 1;
            }
        }
    }
    found
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "median {:>9.1} µs, p99 {:>9.1} µs",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6
    )
}

#[tokio::main]
async fn main() {
    let base: PathBuf = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        });
    let max_files: usize = env_or("BENCH_MAX_FILES", 100_000);
    let lookups: usize = env_or("BENCH_LOOKUPS", 500);
    let dir = tempfile::tempdir_in(&base).unwrap();
    println!("blob store in {}", dir.path().display());
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    let bucket_dir = dir.path().join("blobs/videos");
    let mut job_ids: Vec<String> = Vec::new();
    let mut picker = Picker(0x9e37_79b9_7f4a_7c15);
    for size in SIZES.into_iter().filter(|s| *s <= max_files) {
        let started = Instant::now();
        let new: Vec<String> = futures::stream::iter(job_ids.len()..size)
            .map(|i| {
                let store = store.clone();
                async move {
                    let job_id = uuid_like(i);
                    let (_, rx) = tokio::sync::mpsc::channel(1);
                    let file = NewFile {
                        filename: format!("video-{i}.mp4"),
                        content_type: Some("video/mp4".into()),
                        metadata: vec![
                            ("owner".into(), format!("user{}@example.com", i % 100)),
                            ("job_id".into(), job_id.clone()),
                            ("state".into(), "done".into()),
                        ],
                    };
                    store.create("videos", file, rx).await.unwrap();
                    job_id
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        job_ids.extend(new);
        let filled = started.elapsed();

        let mut indexed = Vec::with_capacity(lookups);
        for _ in 0..lookups {
            let job_id = &job_ids[picker.next(job_ids.len())];
            let t = Instant::now();
            let found = store.find("videos", "job_id", job_id).await.unwrap();
            indexed.push(t.elapsed());
            assert_eq!(found.len(), 1);
        }
        let scans = if size <= 1_000 { 50 } else { 5 };
        let mut scanned = Vec::with_capacity(scans);
        for _ in 0..scans {
            let job_id = job_ids[picker.next(job_ids.len())].clone();
            let dir = bucket_dir.clone();
            let t = Instant::now();
            let found = tokio::task::spawn_blocking(move || scan(&dir, "job_id", &job_id))
                .await
                .unwrap();
            scanned.push(t.elapsed());
            assert_eq!(found, 1);
        }
        println!(
            "{size:>7} files (filled in {:.1} s): find {} ({lookups} lookups); full scan {} ({scans} scans)",
            filled.as_secs_f64(),
            summary(indexed),
            summary(scanned),
        );
    }
}

/// A job id shaped like the gateway's (a UUID), distinct per `i`.
fn uuid_like(i: usize) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        i,
        i.wrapping_mul(2_654_435_761)
    )
}

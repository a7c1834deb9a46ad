//! Every account is a potential attacker: its storage and its jobs in
//! flight are bounded, and an upload past either stores nothing.

use crate::support::{self, Spindle, UpOptions, expect_json_error, up};
use std::path::Path;

/// The app with the given quota variables and conversion left to a worker
/// that is not running, so uploaded jobs stay queued.
fn start(dir: &Path, variables: &[&str]) -> Spindle {
    let manifest = support::app_manifest(dir);
    let rc = dir.join("runtime.toml");
    std::fs::write(&rc, "[convert]\nin_process = false\n").unwrap();
    let mut opts = UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string());
    for v in variables {
        opts = opts.arg("--variable").arg(*v);
    }
    up(opts)
}

async fn token(s: &Spindle, email: &str) -> String {
    let c = support::client();
    let r = c
        .post(format!("{}/signup", s.url))
        .json(&serde_json::json!({"email": email, "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    c.post(format!("{}/login", s.url))
        .basic_auth(email, Some("long enough"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn upload(s: &Spindle, token: &str, bytes: usize) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(vec![7u8; bytes]).file_name("clip.mp4");
    support::client()
        .post(format!("{}/upload", s.url))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}

/// Stored videos (the embedded blob store's data files).
fn stored_videos(s: &Spindle) -> usize {
    let dir = s.state_dir.join("blobs").join("videos");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_past_the_storage_quota_or_the_jobs_in_flight_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        &["storage_quota_bytes=250000", "max_jobs_in_flight=3"],
    );
    let alice = token(&s, "alice@example.com").await;
    let bob = token(&s, "bob@example.com").await;

    for _ in 0..2 {
        assert_eq!(upload(&s, &alice, 100_000).await.status(), 202);
    }
    // 200,000 of 250,000 bytes used: another 100,000 do not fit, with or
    // without a Content-Length (reqwest sends one; the limit is also
    // enforced as the body streams).
    let msg = expect_json_error(upload(&s, &alice, 100_000).await, 413).await;
    assert!(
        msg.contains("use 200000 of 250000 bytes") && msg.contains("50000 more"),
        "{msg}"
    );
    assert_eq!(stored_videos(&s), 2, "the refused upload stored nothing");
    // What still fits is taken; the quota is per account.
    assert_eq!(upload(&s, &alice, 40_000).await.status(), 202);
    assert_eq!(upload(&s, &bob, 100_000).await.status(), 202);

    // Alice now has three jobs queued (no worker runs): a fourth waits.
    let r = upload(&s, &alice, 1_000).await;
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let msg = expect_json_error(r, 429).await;
    assert!(
        msg.contains("3 jobs queued or processing") && msg.contains("at most 3"),
        "{msg}"
    );
    assert!(retry.is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_eq!(stored_videos(&s), 4);
}

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

/// Uploads `bytes` as the form's one file.
async fn upload(s: &Spindle, token: &str, bytes: Vec<u8>) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes).file_name("clip.mp4");
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
        assert_eq!(upload(&s, &alice, vec![7; 100_000]).await.status(), 202);
    }
    // 200,000 of 250,000 bytes used: another 100,000 do not fit, with or
    // without a Content-Length (reqwest sends one; the limit is also
    // enforced as the body streams).
    let msg = expect_json_error(upload(&s, &alice, vec![7; 100_000]).await, 413).await;
    assert!(
        msg.contains("use 200000 of 250000 bytes") && msg.contains("50000 more"),
        "{msg}"
    );
    assert_eq!(stored_videos(&s), 2, "the refused upload stored nothing");
    // What still fits is taken; the quota is per account.
    assert_eq!(upload(&s, &alice, vec![7; 40_000]).await.status(), 202);
    assert_eq!(upload(&s, &bob, vec![7; 100_000]).await.status(), 202);

    // Alice now has three jobs queued (no worker runs): a fourth waits.
    let r = upload(&s, &alice, vec![7; 1_000]).await;
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

/// A 2 s video made by ffmpeg.
fn video(dir: &Path) -> Vec<u8> {
    std::fs::read(support::make_video(dir, "clip.mp4", 2)).unwrap()
}

/// Waits for a job to leave `queued`/`processing`; returns its JSON.
async fn ended(s: &Spindle, token: &str, job_id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let job: serde_json::Value = support::client()
            .get(format!("{}/jobs/{job_id}", s.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(job["status"].as_str(), Some("done" | "failed")) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ended_jobs_keep_their_record_and_mp3s_expire() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let s = up(UpOptions::new(&manifest)
        .arg("--variable")
        .arg("mp3_ttl_days=1"));
    let token = token(&s, "carol@example.com").await;
    let accepted: serde_json::Value = upload(&s, &token, video(dir.path()))
        .await
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap();
    let video_fid = accepted["video_fid"].as_str().unwrap();
    let job = ended(&s, &token, job_id).await;
    assert_eq!(job["status"], "done", "{job}");

    // The video's bytes are gone (keep_videos is false); its record stays.
    // The worker empties the video right after it marks the job done, so
    // `/jobs` may say done a moment before.
    let videos = s.state_dir.join("blobs/videos");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(videos.join(format!("{video_fid}.json"))).unwrap(),
        )
        .unwrap();
        let data = std::fs::metadata(videos.join(format!("{video_fid}.data"))).unwrap();
        if record["length"] == 0 && data.len() == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{record}, data: {} bytes",
            data.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A fresh MP3 downloads; one made two days ago (mp3_ttl_days = 1) is
    // gone: 410, then 404.
    let mp3_fid = job["mp3_fid"].as_str().unwrap();
    let download = || {
        support::client()
            .get(format!("{}/download?fid={mp3_fid}", s.url))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(download().await.unwrap().status(), 200);
    let description = s
        .state_dir
        .join("blobs/mp3s")
        .join(format!("{mp3_fid}.json"));
    let mut mp3: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&description).unwrap()).unwrap();
    let two_days_ms = 2 * 24 * 3600 * 1000;
    mp3["uploaded_at"] = (mp3["uploaded_at"].as_u64().unwrap() - two_days_ms).into();
    std::fs::write(&description, mp3.to_string()).unwrap();
    let msg = expect_json_error(download().await.unwrap(), 410).await;
    assert!(msg.contains("expired"), "{msg}");
    expect_json_error(download().await.unwrap(), 404).await;
    assert!(!description.exists(), "the expired MP3 was deleted");
}

/// A small filesystem of the test's own (tmpfs; mounting needs root),
/// unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_and_the_queue_keeps_working() {
    let Some(disk) = SmallDisk::mount(8) else {
        eprintln!("SKIPPED: mounting a small tmpfs needs root; the disk-full test did not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(disk.dir.path().to_path_buf());
    let s = up(opts);
    let token = token(&s, "dave@example.com").await;

    // More than the disk holds.
    let msg = expect_json_error(upload(&s, &token, vec![7; 12 << 20]).await, 507).await;
    assert!(msg.contains("storage is full"), "{msg}");
    let leftovers: Vec<_> = std::fs::read_dir(disk.dir.path().join("blobs").join("videos"))
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "nothing stored: {leftovers:?}");

    // The space is back and the queue is intact: a real job goes through.
    let accepted: serde_json::Value = upload(&s, &token, video(dir.path()))
        .await
        .json()
        .await
        .unwrap();
    let job = ended(&s, &token, accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_and_retention_on_mariadb_rabbitmq_and_gridfs() {
    let Some(servers) = support::RealServers::start("quota").await else {
        eprintln!(
            "SKIPPED: set SPINDLE_TEST_MYSQL_URL and SPINDLE_TEST_AMQP_URL to run quotas and retention on MariaDB, RabbitMQ and GridFS"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, servers.runtime_config()).unwrap();
    let clip = video(dir.path());
    // Room for one video and its MP3, not for a second video.
    let quota = clip.len() * 3 / 2 + 200_000;
    let s = up(UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string())
        .arg("--variable")
        .arg(format!("storage_quota_bytes={quota}")));
    let email = format!("{}@example.com", support::unique("erin"));
    let token = token(&s, &email).await;

    let accepted: serde_json::Value = upload(&s, &token, clip.clone()).await.json().await.unwrap();
    let job = ended(&s, &token, accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");

    // On GridFS too the video keeps only its record once the job is done.
    let blobs = spindle_platform::capabilities::blobs::BlobStore::connect(
        Some(&servers.gridfs),
        dir.path(),
    )
    .await
    .unwrap();
    let video_fid = accepted["video_fid"].as_str().unwrap();
    let record = blobs.stat("videos", video_fid).await.unwrap();
    assert_eq!(record.length, 0);
    assert!(
        record
            .metadata
            .contains(&("state".to_string(), "done".to_string()))
    );

    // The MP3 is counted: the video no longer is, so another fits once;
    // past the quota, 413 and nothing stored.
    assert_eq!(upload(&s, &token, clip.clone()).await.status(), 202);
    let before = blobs.find("videos", "owner", &email).await.unwrap().len();
    let msg = expect_json_error(upload(&s, &token, vec![1u8; quota]).await, 413).await;
    assert!(msg.contains("storage quota"), "{msg}");
    assert_eq!(
        blobs.find("videos", "owner", &email).await.unwrap().len(),
        before
    );
}

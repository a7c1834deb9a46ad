//! The convert worker with real ffmpeg, on the embedded blob store and
//! queue (and RabbitMQ when `SPINDLE_TEST_AMQP_URL` is set): idempotent
//! redelivery, unreadable input, the time limit, stopping on SIGTERM, and
//! hostile uploads (a decompression bomb, no audio, playlists that point
//! elsewhere, forged messages).

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use convert::{AppSettings, ConvertConfig, JobMessage};
use spindle_platform::capabilities::blobs::{BlobStore, FileInfo, NewFile};
use spindle_platform::capabilities::queue::{
    Broker, ConsumeOptions, DeadLetterHook, Delivery, Handler, Outcome,
};
use spindle_platform::clock::now_ms;
use spindle_platform::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{nanos}")
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("running ffmpeg (a prerequisite: install ffmpeg)");
    assert!(status.success());
}

fn short_video(dir: &Path) -> PathBuf {
    let out = dir.join("clip.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=3:size=160x120:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=3",
            "-c:v",
            "mpeg4",
            "-c:a",
            "aac",
            "-shortest",
        ],
        &out,
    );
    out
}

/// 15 minutes of audio: several seconds of work for libmp3lame.
fn long_audio(dir: &Path) -> PathBuf {
    let out = dir.join("long.wav");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=900:sample_rate=44100",
            "-c:a",
            "pcm_s16le",
        ],
        &out,
    );
    out
}

/// ~7 MB of FLAC (silence) that decodes to 10 hours of audio.
fn audio_bomb(dir: &Path) -> PathBuf {
    let out = dir.join("silence.flac");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "36000",
            "-c:a",
            "flac",
        ],
        &out,
    );
    out
}

fn manifest(dir: &Path, queue: &str) -> PathBuf {
    let path = dir.join("spin.toml");
    std::fs::write(
        &path,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"convert-test\"\n[[trigger.amqp]]\nqueue = \"{queue}\"\nworker = \"convert\"\nconcurrency = 1\nmax_attempts = 3\n"
        ),
    )
    .unwrap();
    path
}

/// Stores `file` in `videos` the way the gateway does.
async fn store_video(blobs: &BlobStore, file: &Path, job_id: &str) -> FileInfo {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let bytes = std::fs::read(file).unwrap();
    let send = async move {
        for chunk in bytes.chunks(256 * 1024) {
            tx.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
        }
    };
    let meta = NewFile {
        filename: file.file_name().unwrap().to_string_lossy().into_owned(),
        content_type: None,
        metadata: vec![
            ("owner".into(), "user@example.com".into()),
            ("job_id".into(), job_id.into()),
            ("state".into(), "queued".into()),
        ],
    };
    let (_, stored) = tokio::join!(send, blobs.create("videos", meta, rx));
    stored.unwrap()
}

fn message(job_id: &str, video_fid: &str) -> Vec<u8> {
    serde_json::to_vec(&JobMessage {
        v: 1,
        job_id: job_id.into(),
        video_fid: video_fid.into(),
        mp3_fid: None,
        username: "user@example.com".into(),
    })
    .unwrap()
}

fn delivery(body: Vec<u8>, attempt: u32) -> Delivery {
    Delivery {
        queue: "video".into(),
        body,
        attempt,
        message_id: unique("m"),
        replayed: false,
    }
}

fn meta(info: &FileInfo, key: &str) -> Option<String> {
    info.metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

struct Worker {
    /// The queue's dead-letter hook of the worker.
    on_dead_letter: DeadLetterHook,
    blobs: BlobStore,
    broker: Broker,
    handler: Handler,
}

async fn worker(dir: &Path, config: &str) -> Worker {
    worker_with(dir, config, AppSettings::default()).await
}

async fn worker_with(dir: &Path, config: &str, settings: AppSettings) -> Worker {
    worker_on(dir, config, settings, None, None).await
}

/// A worker on GridFS at `gridfs` and RabbitMQ at `amqp` where given, else
/// on the embedded backends.
async fn worker_on(
    dir: &Path,
    config: &str,
    settings: AppSettings,
    gridfs: Option<&str>,
    amqp: Option<&str>,
) -> Worker {
    let blobs = BlobStore::connect(gridfs, dir).await.unwrap();
    let broker = Broker::connect(amqp, dir, &["video", "mp3"]).await.unwrap();
    let manifest = Manifest::load(&manifest(dir, "video")).unwrap();
    let config = ConvertConfig::from_section(Some(&toml::from_str(config).unwrap())).unwrap();
    let trigger = convert::trigger(&manifest, &config).unwrap();
    let worker = convert::worker(
        blobs.clone(),
        broker.clone(),
        &config,
        &trigger,
        settings,
        Default::default(),
    )
    .await
    .unwrap();
    Worker {
        blobs,
        broker,
        handler: worker.handler,
        on_dead_letter: worker
            .on_dead_letter
            .expect("the worker marks given-up jobs failed"),
    }
}

/// Collects what arrives on `queue` until `n` messages or 30 s.
async fn collect(broker: &Broker, queue: &str, n: usize) -> Vec<Delivery> {
    collect_for(broker, queue, n, Duration::from_secs(30)).await
}

async fn collect_for(broker: &Broker, queue: &str, n: usize, patience: Duration) -> Vec<Delivery> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handler: Handler = Arc::new(move |d| {
        sink.lock().unwrap().push(d);
        Box::pin(async { Outcome::Ack })
    });
    let consumer = broker
        .consume(queue, ConsumeOptions::default(), handler)
        .await
        .unwrap();
    let deadline = Instant::now() + patience;
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.stop().await;
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_makes_no_second_mp3() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let video = store_video(&w.blobs, &short_video(dir.path()), "job-1").await;
    let body = message("job-1", &video.id);

    assert_eq!((w.handler)(delivery(body.clone(), 1)).await, Outcome::Ack);
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("done"));
    let mp3_fid = meta(&after, "mp3_fid").expect("done names the MP3");
    let mp3 = w.blobs.stat("mp3s", &mp3_fid).await.unwrap();
    assert_eq!(mp3.content_type.as_deref(), Some("audio/mpeg"));
    assert_eq!(mp3.filename, "clip.mp3");
    assert_eq!(meta(&mp3, "owner").as_deref(), Some("user@example.com"));
    assert!(mp3.length > 10_000, "3 s of MP3: {} bytes", mp3.length);
    // What the job list shows: done, how long, how large the upload was.
    assert_eq!(meta(&after, "progress").as_deref(), Some("100"));
    let secs: f64 = meta(&after, "duration_secs").unwrap().parse().unwrap();
    assert!((secs - 3.0).abs() < 0.2, "duration_secs {secs}");
    assert_eq!(
        meta(&after, "video_bytes"),
        Some(video.length.to_string()),
        "the size survives the video's bytes"
    );

    // Delivered again (at-least-once): nothing new is made or announced.
    assert_eq!((w.handler)(delivery(body, 1)).await, Outcome::Ack);
    assert_eq!(
        w.blobs.find("mp3s", "job_id", "job-1").await.unwrap().len(),
        1
    );
    let announced = collect_for(&w.broker, "mp3", 2, Duration::from_secs(3)).await;
    assert_eq!(announced.len(), 1, "announced once");
    for d in &announced {
        let m: JobMessage = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(m.mp3_fid.as_deref(), Some(mp3_fid.as_str()));
        assert_eq!(
            (m.job_id.as_str(), m.video_fid.as_str()),
            ("job-1", video.id.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_upload_fails_the_job_and_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video at all\n".repeat(100)).unwrap();
    let video = store_video(&w.blobs, &text, "job-2").await;

    let outcome = (w.handler)(delivery(message("job-2", &video.id), 1)).await;
    let Outcome::DeadLetter(reason) = outcome else {
        panic!("expected a dead letter, got {outcome:?}");
    };
    assert!(reason.contains("not a video or audio file"), "{reason}");
    assert!(
        reason.contains("notes.mp4") && !reason.contains("spindle-convert-"),
        "{reason}"
    );
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("failed"));
    assert_eq!(meta(&after, "error"), Some(reason));
    assert!(
        w.blobs
            .find("mp3s", "job_id", "job-2")
            .await
            .unwrap()
            .is_empty()
    );

    // The worker keeps going: a malformed message is a dead letter; one
    // whose video is gone (its job deleted while queued) is done with.
    assert!(matches!(
        (w.handler)(delivery(b"{not json".to_vec(), 1)).await,
        Outcome::DeadLetter(r) if r.contains("not a video job")
    ));
    assert_eq!(
        (w.handler)(delivery(message("job-3", "0123456789abcdef01234567"), 1)).await,
        Outcome::Ack
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_time_limit_stops_ffmpeg_and_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "time_limit_secs = 1").await;
    let video = store_video(&w.blobs, &long_audio(dir.path()), "job-4").await;
    let started = Instant::now();
    let outcome = (w.handler)(delivery(message("job-4", &video.id), 1)).await;
    let Outcome::DeadLetter(reason) = outcome else {
        panic!("expected a dead letter, got {outcome:?}");
    };
    assert!(reason.contains("longer than the limit of 1 s"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("failed"));
    assert!(
        w.blobs
            .find("mp3s", "job_id", "job-4")
            .await
            .unwrap()
            .is_empty()
    );
}

/// Pids of ffmpeg processes whose command line mentions `needle`.
fn ffmpeg_pids(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.starts_with("ffmpeg") && cmdline.contains(needle)).then_some(pid)
        })
        .collect()
}

/// Runs `spindle-convert`, waits until ffmpeg works on the job, sends
/// SIGTERM, and checks the worker stopped ffmpeg and exited.
fn terminate_mid_conversion(dir: &Path, manifest: &Path, runtime_config: &Path) {
    let work = dir.join("work");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spindle-convert"))
        .arg("--manifest")
        .arg(manifest)
        .arg("--runtime-config-file")
        .arg(runtime_config)
        .arg("--state-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ffmpeg_pids(&work.display().to_string()).is_empty() {
        assert!(Instant::now() < deadline, "ffmpeg never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the worker exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(10),
            "the worker did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        exit.success(),
        "the worker exits cleanly on SIGTERM: {exit}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ffmpeg_pids(&work.display().to_string()).is_empty() {
        assert!(Instant::now() < deadline, "ffmpeg outlived the worker");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_ffmpeg_and_returns_the_message_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "video");
    let rc = dir.path().join("runtime.toml");
    std::fs::write(
        &rc,
        format!(
            "[convert]\nwork_dir = \"{}\"\n",
            dir.path().join("work").display()
        ),
    )
    .unwrap();
    let video_fid = {
        let blobs = BlobStore::connect(None, dir.path()).await.unwrap();
        let broker = Broker::connect(None, dir.path(), &["video", "mp3"])
            .await
            .unwrap();
        let video = store_video(&blobs, &long_audio(dir.path()), "job-5").await;
        broker
            .publish("video", &message("job-5", &video.id))
            .await
            .unwrap();
        video.id
    };
    terminate_mid_conversion(dir.path(), &manifest, &rc);

    let broker = Broker::connect(None, dir.path(), &["video"]).await.unwrap();
    let back = collect(&broker, "video", 1).await;
    assert_eq!(back.len(), 1, "the message is back on the queue");
    assert_eq!(
        back[0].attempt, 2,
        "the interrupted delivery counts (it might have been the one that kills)"
    );
    let job: JobMessage = serde_json::from_slice(&back[0].body).unwrap();
    assert_eq!(job.video_fid, video_fid);
    let blobs = BlobStore::connect(None, dir.path()).await.unwrap();
    assert!(
        blobs
            .find("mp3s", "job_id", "job-5")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_ffmpeg_and_returns_the_message_rabbitmq() {
    let Ok(amqp) = std::env::var("SPINDLE_TEST_AMQP_URL") else {
        eprintln!("SKIPPED: set SPINDLE_TEST_AMQP_URL to run the worker against RabbitMQ");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("video");
    let manifest = manifest(dir.path(), &queue);
    let rc = dir.path().join("runtime.toml");
    std::fs::write(
        &rc,
        format!(
            "[amqp]\nurl = \"{amqp}\"\n[convert]\nwork_dir = \"{}\"\n",
            dir.path().join("work").display()
        ),
    )
    .unwrap();
    let blobs = BlobStore::connect(None, dir.path()).await.unwrap();
    let broker = Broker::connect(Some(&amqp), dir.path(), &[queue.as_str()])
        .await
        .unwrap();
    let video = store_video(&blobs, &long_audio(dir.path()), "job-6").await;
    broker
        .publish(&queue, &message("job-6", &video.id))
        .await
        .unwrap();
    drop(blobs);
    terminate_mid_conversion(dir.path(), &manifest, &rc);

    let back = collect(&broker, &queue, 1).await;
    assert_eq!(back.len(), 1, "the unacked message returned to {queue}");
    let job: JobMessage = serde_json::from_slice(&back[0].body).unwrap();
    assert_eq!(job.video_fid, video.id);
}

/// Runs one job and expects it to fail with a reason, a `failed` video and
/// no MP3; returns the reason.
async fn expect_failed_job(w: &Worker, file: &Path, job_id: &str) -> String {
    let video = store_video(&w.blobs, file, job_id).await;
    let outcome = (w.handler)(delivery(message(job_id, &video.id), 1)).await;
    let Outcome::DeadLetter(reason) = outcome else {
        panic!("{job_id}: expected a dead letter, got {outcome:?}");
    };
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("failed"), "{job_id}");
    assert_eq!(meta(&after, "error").as_deref(), Some(reason.as_str()));
    assert!(
        w.blobs
            .find("mp3s", "job_id", job_id)
            .await
            .unwrap()
            .is_empty(),
        "{job_id}: no MP3"
    );
    assert!(
        !reason.contains("/tmp") && !reason.contains("spindle-convert-"),
        "{job_id}: the reason shows no host path: {reason}"
    );
    reason
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_hour_audio_bomb_fails_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = audio_bomb(dir.path());
    let w = worker(dir.path(), "").await;
    // A normal job beside it is converted as usual.
    let normal = store_video(&w.blobs, &short_video(dir.path()), "beside-the-bomb").await;
    let started = Instant::now();
    let converting = async {
        let outcome = (w.handler)(delivery(message("beside-the-bomb", &normal.id), 1)).await;
        (outcome, started.elapsed())
    };
    let failing = async {
        let reason = expect_failed_job(&w, &bomb, "bomb").await;
        (reason, started.elapsed())
    };
    let ((outcome, normal_took), (reason, bomb_took)) = tokio::join!(converting, failing);
    eprintln!(
        "the bomb failed after {bomb_took:.1?} ({reason}); the job beside it took {normal_took:.1?}"
    );
    assert_eq!(outcome, Outcome::Ack, "the normal job converts");
    assert!(
        reason.contains("10 h 0 min 0 s") && reason.contains("at most 3 h 0 min 0 s"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_duration_limit_follows_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let settings = AppSettings {
        max_duration: Duration::from_secs(2),
        ..AppSettings::default()
    };
    let w = worker_with(dir.path(), "", settings).await;
    let reason = expect_failed_job(&w, &short_video(dir.path()), "too-long").await;
    assert!(reason.contains("at most 2 s"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_without_audio_fails_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=160x120:rate=10",
            "-c:v",
            "mpeg4",
        ],
        &silent,
    );
    let w = worker(dir.path(), "").await;
    let reason = expect_failed_job(&w, &silent, "no-audio").await;
    assert!(reason.contains("no audio track"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn playlists_and_concat_lists_open_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // A real media file the lists point at: converting it would mean
    // ffmpeg read a file that was not uploaded.
    let secret = short_video(dir.path());
    let segment = dir.path().join("secret.ts");
    ffmpeg(
        &[
            "-i",
            &secret.display().to_string(),
            "-c",
            "copy",
            "-f",
            "mpegts",
        ],
        &segment,
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let lists = [
        (
            "local.m3u8",
            format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\n{}\n#EXT-X-ENDLIST\n",
                segment.display()
            ),
        ),
        (
            "remote.m3u8",
            format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\nhttp://127.0.0.1:{port}/secret.ts\n#EXT-X-ENDLIST\n"
            ),
        ),
        (
            "manifest.mpd",
            format!(
                r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT3S" minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
<Period><AdaptationSet mimeType="video/mp4"><Representation id="1" bandwidth="100000">
<BaseURL>file://{}</BaseURL>
</Representation></AdaptationSet></Period></MPD>
"#,
                secret.display()
            ),
        ),
        (
            "list.ffconcat",
            format!("ffconcat version 1.0\nfile '{}'\n", secret.display()),
        ),
    ];
    let w = worker(dir.path(), "").await;
    for (i, (name, text)) in lists.iter().enumerate() {
        let upload = dir.path().join(name);
        std::fs::write(&upload, text).unwrap();
        let reason = expect_failed_job(&w, &upload, &format!("list-{i}")).await;
        eprintln!("{name}: {reason}");
        assert!(reason.starts_with("conversion failed"), "{name}: {reason}");
        assert!(
            !reason.contains(&dir.path().display().to_string()),
            "{name}: {reason}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "nothing connected to the address the playlist named"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_message_converts_nothing_and_leaves_the_job_alone() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let video = forged_messages_are_refused(&w, dir.path()).await;
    // The real message still converts.
    assert_eq!(
        (w.handler)(delivery(message("job-real", &video.id), 1)).await,
        Outcome::Ack
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_uploads_on_gridfs_and_rabbitmq() {
    let Ok(amqp) = std::env::var("SPINDLE_TEST_AMQP_URL") else {
        eprintln!(
            "SKIPPED: set SPINDLE_TEST_AMQP_URL to run the worker's hostile-upload checks on RabbitMQ and GridFS"
        );
        return;
    };
    let mongo = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = worker_on(
        dir.path(),
        "",
        AppSettings::default(),
        Some(&mongo.url()),
        Some(&amqp),
    )
    .await;
    forged_messages_are_refused(&w, dir.path()).await;
    let bomb = audio_bomb(dir.path());
    let reason = expect_failed_job(&w, &bomb, "bomb-gridfs").await;
    assert!(reason.contains("10 h 0 min 0 s"), "{reason}");
    let list = dir.path().join("local.m3u8");
    std::fs::write(
        &list,
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\n{}\n#EXT-X-ENDLIST\n",
            short_video(dir.path()).display()
        ),
    )
    .unwrap();
    expect_failed_job(&w, &list, "playlist-gridfs").await;
}

/// Messages naming a stored video with another account or job are
/// dead-lettered, convert nothing and leave the job as it was; returns the
/// video.
async fn forged_messages_are_refused(w: &Worker, dir: &Path) -> FileInfo {
    let video = store_video(&w.blobs, &short_video(dir), "job-real").await;
    let forged = [
        serde_json::to_vec(&JobMessage {
            v: 1,
            job_id: "job-real".into(),
            video_fid: video.id.clone(),
            mp3_fid: None,
            username: "attacker@example.com".into(),
        })
        .unwrap(),
        message("job-other", &video.id),
    ];
    for body in forged {
        let outcome = (w.handler)(delivery(body, 1)).await;
        let Outcome::DeadLetter(reason) = outcome else {
            panic!("expected a dead letter, got {outcome:?}");
        };
        assert!(
            reason.contains("does not match the stored video"),
            "{reason}"
        );
    }
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(
        meta(&after, "state").as_deref(),
        Some("queued"),
        "untouched"
    );
    assert!(
        w.blobs
            .find("mp3s", "job_id", "job-real")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        w.blobs
            .find("mp3s", "job_id", "job-other")
            .await
            .unwrap()
            .is_empty()
    );
    video
}

/// Runs `program args` boxed like ffmpeg with `input` as its upload;
/// returns whether it succeeded and what it printed.
async fn boxed(
    sandbox: &convert::sandbox::Sandbox,
    input: &Path,
    program: &str,
    args: &[&str],
) -> (bool, String) {
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null());
    let limits = convert::sandbox::Rlimits {
        cpu_secs: 10,
        address_space: 1 << 30,
    };
    sandbox.confine(&mut command, Some(input), limits).unwrap();
    let out = command.output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + String::from_utf8_lossy(&out.stderr).as_ref();
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_keeps_ffmpeg_to_its_upload_and_off_the_network() {
    let sandbox =
        convert::sandbox::Sandbox::detect(&[Path::new("ffmpeg"), Path::new("ffprobe")]).await;
    let described = sandbox.describe();
    eprintln!("{described}");
    // These machines' kernels have Landlock and seccomp.
    assert!(
        described.contains("Landlock (files: the upload only; no TCP) on")
            && described.contains("seccomp (no sockets, no ptrace) on"),
        "{described}"
    );
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, "the upload").unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("cache")).unwrap();
    let secret = state.join("cache").join("other-users-video.mp4");
    std::fs::write(&secret, "someone else's").unwrap();

    let (ok, text) = boxed(&sandbox, &upload, "cat", &[&upload.display().to_string()]).await;
    assert!(ok && text == "the upload", "the upload is readable: {text}");
    let (ok, text) = boxed(&sandbox, &upload, "cat", &[&secret.display().to_string()]).await;
    assert!(
        !ok && text.contains("Permission denied"),
        "state dir: {text}"
    );
    let environ = format!("/proc/{}/environ", std::process::id());
    let (ok, text) = boxed(&sandbox, &upload, "cat", &[&environ]).await;
    assert!(!ok, "the host's environment: {text}");
    let (ok, _) = boxed(
        &sandbox,
        &upload,
        "ls",
        &[&dir.path().display().to_string()],
    )
    .await;
    assert!(!ok, "directories cannot be listed");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    let (ok, text) = boxed(&sandbox, &upload, "bash", &["-c", &connect]).await;
    assert!(!ok && !text.contains("connected"), "TCP: {text}");
    assert!(listener.accept().is_err(), "nothing reached the listener");
    let udp = "exec 3<>/dev/udp/127.0.0.1/53 && echo opened";
    let (ok, text) = boxed(&sandbox, &upload, "bash", &["-c", udp]).await;
    assert!(!ok && !text.contains("opened"), "UDP: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ended_job_keeps_its_record_and_drops_its_video_unless_kept() {
    for keep_videos in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let settings = AppSettings {
            keep_videos,
            ..AppSettings::default()
        };
        let w = worker_with(dir.path(), "", settings).await;
        let clip = short_video(dir.path());
        let size = std::fs::metadata(&clip).unwrap().len();
        let done = store_video(&w.blobs, &clip, "ends-done").await;
        assert_eq!(
            (w.handler)(delivery(message("ends-done", &done.id), 1)).await,
            Outcome::Ack
        );
        let text = dir.path().join("notes.mp4");
        std::fs::write(&text, "not a video\n".repeat(100)).unwrap();
        let failed = store_video(&w.blobs, &text, "ends-failed").await;
        assert!(matches!(
            (w.handler)(delivery(message("ends-failed", &failed.id), 1)).await,
            Outcome::DeadLetter(_)
        ));
        for (video, state, original) in [(done, "done", size), (failed, "failed", 1200)] {
            let after = w.blobs.stat("videos", &video.id).await.unwrap();
            assert_eq!(meta(&after, "state").as_deref(), Some(state));
            let expected = if keep_videos { original } else { 0 };
            assert_eq!(after.length, expected, "keep_videos={keep_videos}, {state}");
        }
        // A redelivery of the done job still only re-announces its MP3.
        assert_eq!(
            (w.handler)(delivery(
                message("ends-done", &done_id(&w, "ends-done").await),
                2
            ))
            .await,
            Outcome::Ack
        );
        assert_eq!(
            w.blobs
                .find("mp3s", "job_id", "ends-done")
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

/// A job deleted while ffmpeg converts it (as `DELETE /jobs/{id}` does:
/// the video goes, then the MP3s): the worker reports progress until then,
/// stops, writes nothing back, keeps no MP3 and announces nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_deleted_mid_conversion_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let video = store_video(&w.blobs, &long_audio(dir.path()), "deleted").await;
    let handler = w.handler.clone();
    let body = message("deleted", &video.id);
    let running = tokio::spawn(async move { handler(delivery(body, 1)).await });

    // Progress shows while it converts, at most about once a second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let now = w.blobs.stat("videos", &video.id).await.unwrap();
        let progress: u8 = meta(&now, "progress").map_or(0, |p| p.parse().unwrap());
        if seen.last() != Some(&progress) {
            seen.push(progress);
        }
        if progress > 0 {
            assert_eq!(meta(&now, "state").as_deref(), Some("processing"));
            assert_eq!(meta(&now, "duration_secs").as_deref(), Some("900.000"));
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.iter().all(|p| *p < 100), "{seen:?}");

    w.blobs.delete("videos", &video.id).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops soon after the delete")
        .unwrap();
    assert_eq!(outcome, Outcome::Ack);
    assert!(
        w.blobs.stat("videos", &video.id).await.is_err(),
        "not written back"
    );
    assert!(
        w.blobs
            .find("mp3s", "job_id", "deleted")
            .await
            .unwrap()
            .is_empty(),
        "no MP3 kept"
    );
    let announced = collect_for(&w.broker, "mp3", 1, Duration::from_secs(2)).await;
    assert!(announced.is_empty(), "nothing announced");
    let mp3_files = std::fs::read_dir(dir.path().join("blobs").join("mp3s"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(mp3_files, 0, "no MP3 file or temp file left");
}

async fn done_id(w: &Worker, job_id: &str) -> String {
    w.blobs.find("videos", "job_id", job_id).await.unwrap()[0]
        .id
        .clone()
}

/// Two deliveries of one message at once: one converts under its claim,
/// the other defers; delivered again later it finds the job done and
/// announced. One MP3, one announcement.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deliveries_make_one_mp3_and_one_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let video = store_video(&w.blobs, &short_video(dir.path()), "twice").await;
    let body = message("twice", &video.id);
    let (a, b) = tokio::join!(
        (w.handler)(delivery(body.clone(), 1)),
        (w.handler)(delivery(body.clone(), 1))
    );
    let mut outcomes = [format!("{a:?}"), format!("{b:?}")];
    outcomes.sort();
    assert_eq!(outcomes[0], "Ack", "{outcomes:?}");
    assert!(outcomes[1].starts_with("Defer"), "{outcomes:?}");
    // The deferred delivery comes back.
    assert_eq!((w.handler)(delivery(body, 1)).await, Outcome::Ack);
    assert_eq!(
        w.blobs.find("mp3s", "job_id", "twice").await.unwrap().len(),
        1
    );
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("done"));
    assert_eq!(meta(&after, "claim").as_deref(), Some(""), "released");
    let announced = collect_for(&w.broker, "mp3", 2, Duration::from_secs(3)).await;
    assert_eq!(announced.len(), 1);
}

/// A claim whose holder died is taken over once its lease ran out; a live
/// one makes the delivery defer.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_holders_claim_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let video = store_video(&w.blobs, &short_video(dir.path()), "held").await;
    let live = format!("someone {}", now_ms() + 60_000);
    w.blobs
        .update_metadata("videos", &video.id, vec![("claim".into(), live)])
        .await
        .unwrap();
    let body = message("held", &video.id);
    assert!(matches!(
        (w.handler)(delivery(body.clone(), 1)).await,
        Outcome::Defer(r) if r.contains("another delivery is converting")
    ));
    let expired = format!("someone {}", now_ms() - 1);
    w.blobs
        .update_metadata("videos", &video.id, vec![("claim".into(), expired)])
        .await
        .unwrap();
    assert_eq!((w.handler)(delivery(body, 2)).await, Outcome::Ack);
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("done"));
}

/// The queue's dead-letter hook marks a given-up job failed and keeps its
/// video for a replay; a replayed message converts the failed job.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_job_fails_and_a_replay_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "").await;
    let video = store_video(&w.blobs, &short_video(dir.path()), "given-up").await;
    let body = message("given-up", &video.id);
    let hook = |reason: &str| (w.on_dead_letter.0)(delivery(body.clone(), 6), reason.to_string());

    // While a delivery holds the job the dead letter waits.
    let live = format!("someone {}", now_ms() + 60_000);
    w.blobs
        .update_metadata("videos", &video.id, vec![("claim".into(), live)])
        .await
        .unwrap();
    assert!(hook("gave up").await.is_err());
    w.blobs
        .update_metadata("videos", &video.id, vec![("claim".into(), String::new())])
        .await
        .unwrap();
    hook("gave up after 5 deliveries").await.unwrap();
    let after = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&after, "state").as_deref(), Some("failed"));
    assert_eq!(
        meta(&after, "error").as_deref(),
        Some("gave up after 5 deliveries")
    );
    assert_eq!(after.length, video.length, "kept for a replay");
    // Another message's hook, or a second call, changes nothing.
    let forged = message("someone-else", &video.id);
    (w.on_dead_letter.0)(delivery(forged, 1), "x".into())
        .await
        .unwrap();
    hook("again").await.unwrap();
    let still = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(
        meta(&still, "error").as_deref(),
        Some("gave up after 5 deliveries")
    );

    // A plain redelivery leaves the failed job alone; a replay converts it.
    assert_eq!((w.handler)(delivery(body.clone(), 1)).await, Outcome::Ack);
    assert!(
        w.blobs
            .find("mp3s", "job_id", "given-up")
            .await
            .unwrap()
            .is_empty()
    );
    let replay = Delivery {
        replayed: true,
        ..delivery(body, 1)
    };
    assert_eq!((w.handler)(replay).await, Outcome::Ack);
    let done = w.blobs.stat("videos", &video.id).await.unwrap();
    assert_eq!(meta(&done, "state").as_deref(), Some("done"));
    assert_eq!(
        w.blobs
            .find("mp3s", "job_id", "given-up")
            .await
            .unwrap()
            .len(),
        1
    );
}

/// `spindle-convert` with a health listener on a free port; killed when
/// dropped.
struct Probed {
    child: std::process::Child,
    /// The health listener's address.
    addr: String,
}

impl Drop for Probed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the worker with `runtime_config` (TOML) and waits for the
/// address its health listener prints.
fn start_probed(dir: &Path, runtime_config: &str) -> Probed {
    use std::io::BufRead;
    let rc = dir.join("runtime.toml");
    std::fs::write(&rc, runtime_config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spindle-convert"))
        .arg("--manifest")
        .arg(manifest(dir, "video"))
        .arg("--runtime-config-file")
        .arg(&rc)
        .arg("--state-dir")
        .arg(dir)
        .args(["--health-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("Health http://")
                .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        })
        .expect("the worker prints its health address");
    // Read on, so the worker's later lines do not meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Probed { child, addr }
}

/// GET `path` (HTTP/1.0, so the answer ends with the connection): the
/// status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_serves_health_readiness_and_its_queue_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // A job waits in the queue before the worker starts.
    {
        let blobs = BlobStore::connect(None, dir.path()).await.unwrap();
        let broker = Broker::connect(None, dir.path(), &["video", "mp3"])
            .await
            .unwrap();
        let video = store_video(&blobs, &short_video(dir.path()), "job-h").await;
        broker
            .publish("video", &message("job-h", &video.id))
            .await
            .unwrap();
    }
    let work = dir.path().join("work");
    let w = start_probed(
        dir.path(),
        &format!("[convert]\nwork_dir = \"{}\"\n", work.display()),
    );
    let (status, body) = get(&w.addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&w.addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\""), "{body}");
    // The consumer's counts: the queued job is converted and acked.
    let acked = "spindle_queue_messages_acked_total{queue=\"video\"} 1\n";
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (status, metrics) = get(&w.addr, "/metrics");
        assert_eq!(status, 200);
        if metrics.contains(acked) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "no ack counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("spindle_queue_messages_consumed_total{queue=\"video\"} 1\n"),
        "{metrics}"
    );
    // The conversion: by outcome (every outcome shown), ffmpeg's time and
    // the media seconds (the clip lasts 3 s).
    for line in [
        "spindle_conversions_total{outcome=\"done\"} 1\n",
        "spindle_conversions_total{outcome=\"failed\"} 0\n",
        "spindle_conversion_duration_seconds_count 1\n",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    let media: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spindle_conversion_media_seconds_total "))
        .and_then(|v| v.parse().ok())
        .expect("media seconds counted");
    assert!((2.5..3.5).contains(&media), "{media}");
    assert_eq!(get(&w.addr, "/components").0, 404);
    drop(w);

    // A worker whose blob store does not answer is alive, not ready, and
    // says which capability is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let w = start_probed(
        other.path(),
        &format!("[gridfs]\nurl = \"mongodb://{dead}\"\n"),
    );
    assert_eq!(get(&w.addr, "/healthz").0, 200);
    let (status, body) = get(&w.addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["down"]["spindle:blobs"].is_string(), "{body}");
    assert!(body["down"].get("spindle:queue").is_none(), "{body}");
}

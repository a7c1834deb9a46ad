//! The video-to-MP3 application end to end, through the repo's own
//! `spin.toml`: signup, login, upload, conversion by ffmpeg, the email,
//! download with ranges, and bad input. On embedded defaults always; on
//! MariaDB, RabbitMQ, the MongoDB test server and a real SMTP server when
//! `SPINDLE_TEST_MYSQL_URL` and `SPINDLE_TEST_AMQP_URL` are set.
//!
//! Videos are made by ffmpeg at test time (`testsrc` + `sine`).

use crate::support;

// GET /jobs and DELETE /jobs/{id}.
mod jobs;

use base64::Engine as _;
use serde_json::Value;
use smtp_server::{SmtpServer, TlsMode};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, expect_json_error, unique, up, up_fails};

/// ffprobe's first audio codec and the container's duration in seconds.
fn probe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0"])
        .args(["-show_entries", "stream=codec_name:format=duration"])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("running ffprobe");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let codec = v["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(-1.0);
    (codec, duration)
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(spindle: &Spindle) -> Self {
        Client {
            http: support::client(),
            url: spindle.url.clone(),
        }
    }

    /// Signs `email` up and logs in through the gateway; returns the JWT.
    async fn account(&self, email: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/signup", self.url))
            .json(&serde_json::json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "signup: {}", resp.text().await.unwrap());
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{email}:correct horse battery"));
        let resp = self
            .http
            .post(format!("{}/login", self.url))
            .header("authorization", format!("Basic {basic}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    async fn upload_parts(&self, token: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.http
            .post(format!("{}/upload", self.url))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads one file; returns the 202 body.
    async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> Value {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
        let resp = self
            .upload_parts(token, reqwest::multipart::Form::new().part("file", part))
            .await;
        assert_eq!(resp.status(), 202, "upload: {}", resp.text().await.unwrap());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "queued");
        assert_eq!(body["video_fid"].as_str().map(str::len), Some(24), "{body}");
        body
    }

    async fn job(&self, token: &str, job_id: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/jobs/{job_id}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Polls `/jobs/{id}` until the job is `done` or `failed`.
    async fn finished_job(&self, token: &str, job_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let resp = self.job(token, job_id).await;
            assert_eq!(resp.status(), 200);
            let job: Value = resp.json().await.unwrap();
            assert_eq!(job["job_id"], job_id);
            match job["status"].as_str() {
                Some("done" | "failed") => return job,
                Some("queued" | "processing") => {}
                other => panic!("unexpected job status {other:?} in {job}"),
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not finish: {job}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn download(&self, token: &str, fid: &str, range: Option<&str>) -> reqwest::Response {
        let headers: Vec<_> = range.map(|range| ("range", range)).into_iter().collect();
        self.download_with(reqwest::Method::GET, token, fid, &headers)
            .await
    }

    async fn download_with(
        &self,
        method: reqwest::Method,
        token: &str,
        fid: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}/download?fid={fid}", self.url))
            .bearer_auth(token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap()
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Upload, conversion, download and ranges for one user; returns the
/// job's id and MP3 id.
async fn convert_one(client: &Client, token: &str, video: &Path) -> (String, String) {
    let (_, video_secs) = probe(video);
    let upload = client
        .upload(token, "clip.mp4", std::fs::read(video).unwrap())
        .await;
    let job_id = upload["job_id"].as_str().unwrap().to_string();
    let job = client.finished_job(token, &job_id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["video_fid"], upload["video_fid"]);
    assert!(job.get("error").is_none_or(Value::is_null), "{job}");
    let mp3_fid = job["mp3_fid"]
        .as_str()
        .expect("a done job names its MP3")
        .to_string();

    let resp = client.download(token, &mp3_fid, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "audio/mpeg");
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert!(header(&resp, "content-disposition").starts_with("attachment"));
    let length: usize = header(&resp, "content-length").parse().unwrap();
    let mp3 = resp.bytes().await.unwrap().to_vec();
    assert_eq!(mp3.len(), length);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("out.mp3");
    std::fs::write(&saved, &mp3).unwrap();
    let (codec, mp3_secs) = probe(&saved);
    assert_eq!(codec, "mp3");
    assert!(
        (mp3_secs - video_secs).abs() <= 0.5,
        "MP3 lasts {mp3_secs} s, the video {video_secs} s"
    );

    // Ranges: a middle slice, a suffix, an open end, and one past the end.
    let resp = client
        .download(token, &mp3_fid, Some("bytes=100-1123"))
        .await;
    assert_eq!(resp.status(), 206);
    assert_eq!(
        header(&resp, "content-range"),
        format!("bytes 100-1123/{length}")
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &mp3[100..1124]);
    let resp = client.download(token, &mp3_fid, Some("bytes=-500")).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &mp3[length - 500..]);
    let start = length - 10;
    let resp = client
        .download(token, &mp3_fid, Some(&format!("bytes={start}-")))
        .await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &mp3[start..]);
    let resp = client
        .download(token, &mp3_fid, Some(&format!("bytes={length}-")))
        .await;
    assert_eq!(header(&resp, "content-range"), format!("bytes */{length}"));
    expect_json_error(resp, 416).await;

    // HEAD: the GET's headers, no body.
    let resp = client
        .download_with(reqwest::Method::HEAD, token, &mp3_fid, &[])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), length.to_string());
    let etag = header(&resp, "etag");
    assert_eq!(etag, format!("\"{mp3_fid}\""));
    let last_modified = header(&resp, "last-modified");
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");
    assert!(resp.bytes().await.unwrap().is_empty());

    // Resuming: If-Range with the same file's validator gets the rest; with
    // another's, the whole file.
    for validator in [etag.as_str(), last_modified.as_str()] {
        let resp = client
            .download_with(
                reqwest::Method::GET,
                token,
                &mp3_fid,
                &[("range", "bytes=1000-"), ("if-range", validator)],
            )
            .await;
        assert_eq!(resp.status(), 206, "If-Range: {validator}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &mp3[1000..]);
    }
    let resp = client
        .download_with(
            reqwest::Method::GET,
            token,
            &mp3_fid,
            &[("range", "bytes=1000-"), ("if-range", "\"another-file\"")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &mp3[..]);

    // A cache revalidating gets 304 and no body.
    let resp = client
        .download_with(
            reqwest::Method::GET,
            token,
            &mp3_fid,
            &[("if-none-match", etag.as_str())],
        )
        .await;
    assert_eq!(resp.status(), 304);
    assert_eq!(header(&resp, "etag"), etag);
    assert!(resp.bytes().await.unwrap().is_empty());
    (job_id, mp3_fid)
}

/// The `.eml` files in the outbox.
fn outbox(spindle: &Spindle) -> Vec<String> {
    let dir = spindle.state_dir.join("outbox");
    let mut mails: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    mails.sort();
    mails
}

fn wait_for_outbox(spindle: &Spindle, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let mails = outbox(spindle);
        if mails.len() >= n {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} emails arrived",
            mails.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn video_to_mp3_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = support::make_video(dir.path(), "clip.mp4", 12);
    let spindle = up(UpOptions::new(&manifest));
    let client = Client::new(&spindle);
    let email = format!("{}@example.com", unique("listener"));
    let token = client.account(&email).await;

    let (job_id, mp3_fid) = convert_one(&client, &token, &video).await;

    let mails = wait_for_outbox(&spindle, 1, Duration::from_secs(60));
    // Notify runs once per mp3 message; give a duplicate time to show up.
    std::thread::sleep(Duration::from_secs(2));
    let mails_later = outbox(&spindle);
    assert_eq!(mails_later.len(), 1, "exactly one email: {mails_later:#?}");
    let mail = &mails[0];
    assert!(mail.contains(&format!("To: {email}")), "{mail}");
    assert!(mail.contains(&mp3_fid), "the email names the MP3: {mail}");
    assert!(mail.contains(&job_id), "the email names the job: {mail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_good_work_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = support::make_video(dir.path(), "good.mp4", 10);
    let max = 4 * 1024 * 1024;
    let spindle = up(UpOptions::new(&manifest)
        .arg("--variable")
        .arg(format!("max_upload_bytes={max}")));
    let client = Client::new(&spindle);
    let token = client
        .account(&format!("{}@example.com", unique("owner")))
        .await;
    let other = client
        .account(&format!("{}@example.com", unique("other")))
        .await;
    let stored_videos = || {
        std::fs::read_dir(spindle.state_dir.join("blobs").join("videos"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // A text file posted as a video fails readably while a good one beside it completes.
    let text = client
        .upload(
            &token,
            "notes.mp4",
            b"these are my notes, not a video\n".repeat(200),
        )
        .await;
    let good = client
        .upload(&token, "good.mp4", std::fs::read(&video).unwrap())
        .await;
    let failed = client
        .finished_job(&token, text["job_id"].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["error"].as_str().expect("a failed job says why");
    assert!(
        reason.contains("not a video or audio file"),
        "the reason reads as words: {reason}"
    );
    assert!(failed.get("mp3_fid").is_none_or(Value::is_null), "{failed}");
    let done = client
        .finished_job(&token, good["job_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "done", "{done}");
    let mp3_fid = done["mp3_fid"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/queues/video/dead-letters", spindle.admin))
        .bearer_auth(spindle.admin_token())
        .send()
        .await
        .unwrap();
    let dead: Value = resp.json().await.unwrap();
    assert!(
        dead.to_string().contains(text["job_id"].as_str().unwrap()),
        "the unreadable video's message is dead-lettered: {dead}"
    );

    // Multipart with no file, or with two files.
    let before = stored_videos();
    let form = reqwest::multipart::Form::new().text("title", "no file here");
    expect_json_error(client.upload_parts(&token, form).await, 400).await;
    let two = reqwest::multipart::Form::new()
        .part(
            "a",
            reqwest::multipart::Part::bytes(vec![1; 1000]).file_name("a.mp4"),
        )
        .part(
            "b",
            reqwest::multipart::Part::bytes(vec![2; 1000]).file_name("b.mp4"),
        );
    expect_json_error(client.upload_parts(&token, two).await, 400).await;
    // Over max_upload_bytes, with a Content-Length and streamed without one.
    let big = reqwest::multipart::Part::bytes(vec![7; max + 1]).file_name("big.mp4");
    expect_json_error(
        client
            .upload_parts(&token, reqwest::multipart::Form::new().part("file", big))
            .await,
        413,
    )
    .await;
    let chunks = (0..(max / 65536 + 4)).map(|_| Ok::<_, std::io::Error>(vec![9u8; 65536]));
    let streamed =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(tokio_stream::iter(chunks)))
            .file_name("streamed.mp4");
    expect_json_error(
        client
            .upload_parts(
                &token,
                reqwest::multipart::Form::new().part("file", streamed),
            )
            .await,
        413,
    )
    .await;
    assert_eq!(
        stored_videos(),
        before,
        "refused uploads leave nothing stored"
    );
    // No token, a bad token.
    let resp = client
        .http
        .post(format!("{}/upload", client.url))
        .multipart(reqwest::multipart::Form::new().text("x", "y"))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 401).await;
    expect_json_error(
        client
            .job("not-a-jwt", done["job_id"].as_str().unwrap())
            .await,
        401,
    )
    .await;

    // Someone else's job and download are not found; a malformed fid is a 400.
    expect_json_error(
        client.job(&other, done["job_id"].as_str().unwrap()).await,
        404,
    )
    .await;
    expect_json_error(client.job(&token, "no-such-job").await, 404).await;
    expect_json_error(client.download(&other, mp3_fid, None).await, 404).await;
    expect_json_error(
        client
            .download(&token, "0123456789abcdef01234567", None)
            .await,
        404,
    )
    .await;
    expect_json_error(client.download(&token, "not-an-id", None).await, 400).await;
    expect_json_error(client.download(&token, "../../etc/passwd", None).await, 400).await;
    // HEAD reveals no more than GET; other methods are refused with `Allow`.
    let resp = client
        .download_with(reqwest::Method::HEAD, &other, mp3_fid, &[])
        .await;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("etag").is_none());
    let resp = client
        .download_with(reqwest::Method::DELETE, &token, mp3_fid, &[])
        .await;
    assert_eq!(header(&resp, "allow"), "GET, HEAD");
    expect_json_error(resp, 405).await;
    // The owner still gets the file.
    assert_eq!(client.download(&token, mp3_fid, None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_publish_leaves_no_orphan_video() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    // The gateway may no longer publish: every publish fails after the
    // video was stored.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let without = text.replacen("publish_queues = [\"video\"]\n", "", 1);
    assert_ne!(
        text, without,
        "spin.toml grants the gateway the video queue"
    );
    std::fs::write(&manifest, without).unwrap();
    let spindle = up(UpOptions::new(&manifest));
    let client = Client::new(&spindle);
    let token = client
        .account(&format!("{}@example.com", unique("orphan")))
        .await;
    let part = reqwest::multipart::Part::bytes(vec![1u8; 300_000]).file_name("clip.mp4");
    let resp = client
        .upload_parts(&token, reqwest::multipart::Form::new().part("file", part))
        .await;
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let status = resp.status().as_u16();
    let msg = expect_json_error(resp, status).await;
    assert!(msg.contains("video"), "{msg}");
    let videos = spindle.state_dir.join("blobs").join("videos");
    let left = std::fs::read_dir(&videos).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the stored video was removed again");
}

#[test]
fn missing_ffmpeg_is_said_plainly_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, "[convert]\nffmpeg = \"/nonexistent/ffmpeg\"\n").unwrap();
    let stderr = up_fails(
        UpOptions::new(&manifest)
            .arg("--runtime-config-file")
            .arg(rc.display().to_string()),
    );
    assert!(
        stderr.contains("ffmpeg was not found") && stderr.contains("/nonexistent/ffmpeg"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn video_to_mp3_on_real_servers() {
    let Some(servers) = support::RealServers::start("app").await else {
        eprintln!(
            "SKIPPED: set SPINDLE_TEST_MYSQL_URL and SPINDLE_TEST_AMQP_URL to run the app on MariaDB and RabbitMQ"
        );
        return;
    };
    let amqp = servers.amqp.clone();
    let smtp = SmtpServer::start(TlsMode::Plain);
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = support::make_video(dir.path(), "clip.mp4", 15);
    let rc = dir.path().join("runtime.toml");
    std::fs::write(
        &rc,
        format!(
            "{}[smtp]\nurl = \"{}\"\nfrom = \"Spindle <noreply@spindle.test>\"\n",
            servers.runtime_config(),
            smtp.url()
        ),
    )
    .unwrap();
    let spindle = up(UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string()));
    assert!(spindle.log_contains("GridFS"), "{}", spindle.stderr());
    let client = Client::new(&spindle);
    let email = format!("{}@example.com", unique("real"));
    let token = client.account(&email).await;
    let (job_id, mp3_fid) = convert_one(&client, &token, &video).await;

    let received = smtp
        .wait_for_messages_async(1, Duration::from_secs(60))
        .await;
    let ours: Vec<_> = received
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == &email))
        .collect();
    assert_eq!(ours.len(), 1, "one email to {email}");
    assert!(ours[0].body().contains(&mp3_fid), "{}", ours[0].text());

    // A redelivered video message: no second MP3, no second email.
    let broker =
        spindle_platform::capabilities::queue::Broker::connect(Some(&amqp), dir.path(), &["video"])
            .await
            .unwrap();
    let job = client.finished_job(&token, &job_id).await;
    let body = serde_json::json!({
        "v": 1, "job_id": job_id, "video_fid": job["video_fid"], "mp3_fid": null, "username": email
    });
    broker
        .publish("video", body.to_string().as_bytes())
        .await
        .unwrap();
    assert!(
        spindle.log_contains("already converted"),
        "the redelivery was seen: {}",
        spindle.stderr()
    );
    let blobs = spindle_platform::capabilities::blobs::BlobStore::connect(
        Some(&servers.gridfs),
        dir.path(),
    )
    .await
    .unwrap();
    let mp3s = blobs.find("mp3s", "job_id", &job_id).await.unwrap();
    assert_eq!(mp3s.len(), 1, "one MP3 for the job");
    std::thread::sleep(Duration::from_secs(2));
    let again = smtp
        .messages()
        .into_iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == &email))
        .count();
    assert_eq!(again, 1, "the redelivery sent no second email");
}

impl Client {
    /// Uploads `video` again and again (while the backends recover) until
    /// one is accepted, for at most `patience`; returns the 202 body.
    async fn upload_once_accepted(&self, token: &str, video: &[u8], patience: Duration) -> Value {
        let started = Instant::now();
        loop {
            let part = reqwest::multipart::Part::bytes(video.to_vec()).file_name("f.mp4");
            let resp = self
                .upload_parts(token, reqwest::multipart::Form::new().part("file", part))
                .await;
            if resp.status() == 202 {
                return resp.json::<Value>().await.unwrap();
            }
            assert!(
                started.elapsed() < patience,
                "no upload accepted within {patience:?}: {}",
                resp.status()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Logs an existing account in; returns the JWT.
    async fn login(&self, email: &str) -> String {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{email}:correct horse battery"));
        let resp = self
            .http
            .post(format!("{}/login", self.url))
            .header("authorization", format!("Basic {basic}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "login");
        resp.text().await.unwrap()
    }
}

/// The descriptions (`*.json`) of a bucket of the file blob store.
fn stored_files(state: &Path, bucket: &str) -> Vec<(String, Value)> {
    let dir = state.join("blobs").join(bucket);
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name.strip_suffix(".json")?.to_string();
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    Some((
                        id,
                        serde_json::from_str(&text).expect("a whole description"),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `spindle up` on embedded defaults is SIGKILLed at random moments while
/// uploads and conversions run, eight times; then it runs to the end.
/// Every upload that got 202 ends `done` with exactly one whole MP3 and one
/// email; no blob is half-written or orphaned; nothing is left in the
/// queues or their dead letters.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = std::fs::read(support::make_video(dir.path(), "k.mp4", 2)).unwrap();
    let state = dir.path().join("state");
    let email = format!("{}@example.com", unique("killed"));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("random kill moments from seed {seed}");
    let mut rng = seed;
    let mut next_ms = |lo: u64, hi: u64| {
        // xorshift: enough to spread the kills, and the seed reproduces them.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        lo + u64::from(rng) % (hi - lo)
    };
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let rounds = 8;
    let mut last_kill = Instant::now();
    for round in 0..rounds {
        let mut opts = UpOptions::new(&manifest);
        opts.state_dir = Some(state.clone());
        let spindle = up(opts);
        let client = Client::new(&spindle);
        let token = if round == 0 {
            client.account(&email).await
        } else {
            client.login(&email).await
        };
        let uploading = tokio::spawn({
            let (http, url, video, accepted) = (
                client.http.clone(),
                client.url.clone(),
                video.clone(),
                accepted.clone(),
            );
            async move {
                loop {
                    let part = reqwest::multipart::Part::bytes(video.clone()).file_name("k.mp4");
                    let sent = http
                        .post(format!("{url}/upload"))
                        .bearer_auth(&token)
                        .multipart(reqwest::multipart::Form::new().part("file", part))
                        .send()
                        .await;
                    let Ok(resp) = sent else { return };
                    match resp.status().as_u16() {
                        202 => {
                            let Ok(body) = resp.json::<Value>().await else {
                                return;
                            };
                            let job = body["job_id"].as_str().unwrap().to_string();
                            accepted.lock().unwrap().push(job);
                        }
                        // Too many jobs in flight: let the worker catch up.
                        429 => tokio::time::sleep(Duration::from_millis(300)).await,
                        status => panic!("upload answered {status}"),
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(next_ms(300, 2500))).await;
        let killed = Command::new("kill")
            .args(["-KILL", &spindle.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        last_kill = Instant::now();
        uploading.await.unwrap();
        drop(spindle);
    }
    let accepted = accepted.lock().unwrap().clone();
    eprintln!("{rounds} SIGKILLs; {} uploads accepted", accepted.len());
    assert!(
        accepted.len() >= rounds,
        "uploads went through between kills"
    );

    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(state.clone());
    let spindle = up(opts);
    let client = Client::new(&spindle);
    let token = client.login(&email).await;
    for job_id in &accepted {
        let job = client.finished_job(&token, job_id).await;
        assert_eq!(job["status"], "done", "{job}");
    }
    // A kill between notify's claim and its send delays that email until
    // the claim's 60 s lease runs out, plus a redelivery backoff.
    let mails = wait_for_outbox(&spindle, accepted.len(), Duration::from_secs(150));
    let mp3s = stored_files(&state, "mp3s");
    for job_id in &accepted {
        let made: Vec<_> = mp3s
            .iter()
            .filter(|(_, d)| d["metadata"]["job_id"] == job_id.as_str())
            .collect();
        assert_eq!(made.len(), 1, "job {job_id}: one MP3, not {}", made.len());
        let mailed = mails.iter().filter(|m| m.contains(job_id.as_str())).count();
        assert_eq!(mailed, 1, "job {job_id}: one email");
    }
    let admin = support::client();
    for queue in ["video", "mp3"] {
        let dead: Vec<Value> = admin
            .get(format!("{}/queues/{queue}/dead-letters", spindle.admin))
            .bearer_auth(spindle.admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(dead.is_empty(), "{queue}: {dead:?}");
    }
    // What the kills left is cleaned up at the next start, once its
    // writer is surely gone (data waits a minute for its description).
    drop(spindle);
    tokio::time::sleep(Duration::from_secs(61).saturating_sub(last_kill.elapsed())).await;
    drop(
        spindle_platform::capabilities::blobs::BlobStore::connect(None, &state)
            .await
            .unwrap(),
    );
    // Whole files only: every description's length is its data's, and no
    // data is left without a description.
    for bucket in ["videos", "mp3s"] {
        let described = stored_files(&state, bucket);
        for (id, d) in &described {
            let data = state.join("blobs").join(bucket).join(format!("{id}.data"));
            let size = std::fs::metadata(&data)
                .map(|m| m.len())
                .unwrap_or(u64::MAX);
            assert_eq!(Some(size), d["length"].as_u64(), "{bucket}/{id}");
        }
        for entry in std::fs::read_dir(state.join("blobs").join(bucket)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            // Hidden names are writes cut short by a kill: never described,
            // so never visible, and removed at a start an hour later.
            if name.starts_with('.') {
                eprintln!("{bucket}: an unfinished write was left: {name}");
                continue;
            }
            let known = name
                .strip_suffix(".data")
                .or_else(|| name.strip_suffix(".json"));
            assert!(
                known.is_some_and(|id| described.iter().any(|(d, _)| d == id)),
                "{bucket}: {name} is orphaned or half-written"
            );
        }
    }
}

/// A `spindle-convert` process, killed when dropped.
struct ConvertWorker(std::process::Child);

impl ConvertWorker {
    fn start(binary: &Path, manifest: &Path, rc: &Path, state: &Path) -> ConvertWorker {
        let child = Command::new(binary)
            .arg("--manifest")
            .arg(manifest)
            .arg("--runtime-config-file")
            .arg(rc)
            .arg("--state-dir")
            .arg(state)
            .env("SPINDLE_LOG", "info")
            .spawn()
            .expect("starting spindle-convert");
        ConvertWorker(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ConvertWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fault suite: the app on MariaDB, a RabbitMQ node of the test's own,
/// the MongoDB test server and a real SMTP server, with the worker apart
/// (`spindle-convert`). Faults, one after another, with uploads around
/// them: uploads while the worker is down; the worker SIGKILLed mid-job;
/// every RabbitMQ connection closed, then the broker restarted; the host
/// SIGKILLed mid-upload; MongoDB unreachable for 20 s; SMTP unreachable
/// for 20 s. (The MongoDB and SMTP test servers keep their data in memory,
/// so a TCP gate in front of each makes them unreachable — refused and cut
/// connections — instead of stopping them.) Afterwards every accepted job
/// is `done` with exactly one MP3 and exactly one email, and no queue holds
/// anything: no message waiting, retrying or dead.
#[tokio::test(flavor = "multi_thread")]
async fn faults_lose_nothing_and_do_nothing_twice() {
    let (Ok(mysql), Ok(_)) = (
        std::env::var("SPINDLE_TEST_MYSQL_URL"),
        std::env::var("SPINDLE_TEST_AMQP_URL"),
    ) else {
        eprintln!(
            "SKIPPED: set SPINDLE_TEST_MYSQL_URL and SPINDLE_TEST_AMQP_URL to run the fault suite"
        );
        return;
    };
    let suite = Instant::now();
    let worker_binary = support::convert_binary();
    let node = tokio::task::spawn_blocking(|| rabbit_node::RabbitNode::start("faults"))
        .await
        .unwrap()
        .expect("a RabbitMQ node of the suite's own");
    let db = support::TestDatabase::create(&mysql, "faults").await;
    let mongo = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mongo_gate = support::gate::Gate::open_to(mongo.addr().to_string()).await;
    let smtp = SmtpServer::start(TlsMode::Plain);
    let smtp_gate = support::gate::Gate::open_to(smtp.addr().to_string()).await;
    let gridfs = format!("mongodb://{}", mongo_gate.addr());

    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let video = std::fs::read(support::make_video(dir.path(), "f.mp4", 2)).unwrap();
    let rc = dir.path().join("runtime.toml");
    std::fs::write(
        &rc,
        format!(
            "[mysql]\nurl = \"{}\"\n[gridfs]\nurl = \"{gridfs}\"\n[amqp]\nurl = \"{}\"\n\
             [smtp]\nurl = \"smtp://{}\"\nfrom = \"Spindle <noreply@spindle.test>\"\n\
             [convert]\nin_process = false\n",
            db.url,
            node.url(),
            smtp_gate.addr()
        ),
    )
    .unwrap();
    let state = dir.path().join("host");
    let worker_state = dir.path().join("worker");
    let start_host = || {
        let mut opts = UpOptions::new(&manifest)
            .arg("--runtime-config-file")
            .arg(rc.display().to_string());
        opts.state_dir = Some(state.clone());
        up(opts)
    };
    let mut host = start_host();
    let mut client = Client::new(&host);
    let mut accepted: Vec<(String, String)> = Vec::new(); // (token, job id)
    let mut faults: Vec<String> = Vec::new();

    // Each phase uses its own account, so the per-account limit of jobs in
    // flight never refuses an upload the suite means to count.
    let mut accounts = 0;
    let mut new_account = async |client: &Client| {
        accounts += 1;
        let email = format!("{}@example.com", unique(&format!("fault{accounts}")));
        (client.account(&email).await, email)
    };

    // 1. Uploads accepted while the worker is down.
    let (token, _) = new_account(&client).await;
    for _ in 0..4 {
        let job = client.upload(&token, "f.mp4", video.clone()).await;
        accepted.push((token.clone(), job["job_id"].as_str().unwrap().into()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut worker = ConvertWorker::start(&worker_binary, &manifest, &rc, &worker_state);
    let t = Instant::now();
    for (token, job) in accepted.clone() {
        assert_eq!(client.finished_job(&token, &job).await["status"], "done");
    }
    faults.push(format!(
        "worker down for 4 uploads: all done {:.1?} after it started",
        t.elapsed()
    ));

    // 2. The worker SIGKILLed mid-job, then restarted.
    let (token, _) = new_account(&client).await;
    let job = client.upload(&token, "f.mp4", video.clone()).await;
    let job_id: String = job["job_id"].as_str().unwrap().into();
    accepted.push((token.clone(), job_id.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = client.job(&token, &job_id).await.json().await.unwrap();
        if status["status"] == "processing" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill();
    let t = Instant::now();
    worker = ConvertWorker::start(&worker_binary, &manifest, &rc, &worker_state);
    assert_eq!(client.finished_job(&token, &job_id).await["status"], "done");
    faults.push(format!(
        "worker SIGKILLed mid-job: the job done {:.1?} after the restart",
        t.elapsed()
    ));

    // 3. Every RabbitMQ connection closed, then the broker restarted, with
    // jobs in the queues.
    let (token, _) = new_account(&client).await;
    for _ in 0..3 {
        let job = client.upload(&token, "f.mp4", video.clone()).await;
        accepted.push((token.clone(), job["job_id"].as_str().unwrap().into()));
    }
    node.close_all_connections().unwrap();
    let t = Instant::now();
    let job = client
        .upload_once_accepted(&token, &video, Duration::from_secs(60))
        .await;
    accepted.push((token.clone(), job["job_id"].as_str().unwrap().into()));
    faults.push(format!(
        "RabbitMQ connections closed: uploads accepted again after {:.1?}",
        t.elapsed()
    ));
    let node = std::sync::Arc::new(node);
    let restarting = node.clone();
    tokio::task::spawn_blocking(move || {
        restarting.stop_app().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        restarting.start_app().unwrap();
    })
    .await
    .unwrap();
    let t = Instant::now();
    let probe = client
        .upload_once_accepted(&token, &video, Duration::from_secs(90))
        .await;
    let probe_id: String = probe["job_id"].as_str().unwrap().into();
    accepted.push((token.clone(), probe_id.clone()));
    assert_eq!(
        client.finished_job(&token, &probe_id).await["status"],
        "done"
    );
    faults.push(format!(
        "RabbitMQ restarted (3 s down): a new job done {:.1?} after it came back",
        t.elapsed()
    ));

    // 4. The host SIGKILLed while uploads and emails are under way.
    let (token, email) = new_account(&client).await;
    for _ in 0..3 {
        let job = client.upload(&token, "f.mp4", video.clone()).await;
        accepted.push((token.clone(), job["job_id"].as_str().unwrap().into()));
    }
    let killed = Command::new("kill")
        .args(["-KILL", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(host);
    let t = Instant::now();
    host = start_host();
    client = Client::new(&host);
    let token = client.login(&email).await;
    let job = client.upload(&token, "f.mp4", video.clone()).await;
    let job_id: String = job["job_id"].as_str().unwrap().into();
    accepted.push((token.clone(), job_id.clone()));
    assert_eq!(client.finished_job(&token, &job_id).await["status"], "done");
    faults.push(format!(
        "host SIGKILLed: restarted and a new job done in {:.1?}",
        t.elapsed()
    ));

    // 5. MongoDB unreachable for 20 s, with conversions under way.
    let (token, _) = new_account(&client).await;
    let mut during: Vec<String> = Vec::new();
    for _ in 0..2 {
        let job = client.upload(&token, "f.mp4", video.clone()).await;
        during.push(job["job_id"].as_str().unwrap().into());
    }
    mongo_gate.close();
    tokio::time::sleep(Duration::from_secs(20)).await;
    mongo_gate.reopen().await;
    let t = Instant::now();
    for job_id in &during {
        assert_eq!(client.finished_job(&token, job_id).await["status"], "done");
        accepted.push((token.clone(), job_id.clone()));
    }
    faults.push(format!(
        "MongoDB unreachable 20 s: its jobs done {:.1?} after it came back",
        t.elapsed()
    ));

    // 6. SMTP unreachable for 20 s while emails are due.
    let (token, _) = new_account(&client).await;
    smtp_gate.close();
    let closed = Instant::now();
    let mut mailed_later: Vec<String> = Vec::new();
    for _ in 0..2 {
        let job = client.upload(&token, "f.mp4", video.clone()).await;
        let job_id: String = job["job_id"].as_str().unwrap().into();
        assert_eq!(client.finished_job(&token, &job_id).await["status"], "done");
        accepted.push((token.clone(), job_id.clone()));
        mailed_later.push(job_id);
    }
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(closed.elapsed())).await;
    smtp_gate.reopen().await;
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !mailed_later.iter().all(|job| {
        smtp.messages()
            .iter()
            .any(|m| m.body().contains(job.as_str()))
    }) {
        assert!(
            Instant::now() < deadline,
            "the delayed emails never went out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    faults.push(format!(
        "SMTP unreachable 20 s: the waiting emails sent {:.1?} after it came back",
        t.elapsed()
    ));

    // Every accepted job: done, one MP3, one email; nothing left anywhere.
    let blobs =
        spindle_platform::capabilities::blobs::BlobStore::connect(Some(&gridfs), dir.path())
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (token, job_id) in &accepted {
        assert_eq!(
            client.finished_job(token, job_id).await["status"],
            "done",
            "{job_id}"
        );
        assert_eq!(
            blobs.find("mp3s", "job_id", job_id).await.unwrap().len(),
            1,
            "{job_id}: one MP3"
        );
        loop {
            let emails = smtp
                .messages()
                .iter()
                .filter(|m| m.body().contains(job_id.as_str()))
                .count();
            if emails == 1 {
                break;
            }
            assert!(
                emails == 0 && Instant::now() < deadline,
                "{job_id}: {emails} emails"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Give a stray redelivery time to show itself, then look at the queues.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (_, job_id) in &accepted {
        let emails = smtp
            .messages()
            .iter()
            .filter(|m| m.body().contains(job_id.as_str()))
            .count();
        assert_eq!(emails, 1, "{job_id}: exactly one email");
    }
    let queues = node
        .ctl(&["list_queues", "name", "messages", "messages_unacknowledged"])
        .unwrap();
    for line in queues
        .lines()
        .filter(|l| l.starts_with("video") || l.starts_with("mp3"))
    {
        let counts: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(counts, ["0", "0"], "nothing left in {line}");
    }
    worker.kill();
    eprintln!(
        "fault suite: {} jobs accepted, {} faults, {:.0?} in all",
        accepted.len(),
        faults.len(),
        suite.elapsed()
    );
    for fault in &faults {
        eprintln!("  {fault}");
    }
}

//! The notify function (functions/notify) in a real `spindle up`: an `mp3`
//! message about a stored MP3 becomes exactly one email, a redelivery of the
//! same job sends none, and messages that can never succeed are
//! dead-lettered without mail. On the embedded queue, blobs and outbox; and
//! on RabbitMQ (`SPINDLE_TEST_AMQP_URL`) with a real SMTP server.
//!
//! The testbed component stores blobs (`POST /blob/mp3s`) and publishes
//! (`POST /publish/QUEUE`); notify consumes the queue.

use crate::support;

use serde_json::json;
use smtp_server::{Received, SmtpServer, TlsMode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Spindle, unique, up_with_config, write_manifest};

const PUBLIC_URL: &str = "https://mp3.example.test:8443";
const USER: &str = "user@example.com";

/// The testbed stores and publishes; notify handles `queue` with the grants
/// it has in the repo's spin.toml.
fn manifest(queue: &str) -> String {
    let wasm = support::build_components();
    format!(
        r#"spin_manifest_version = 2
[application]
name = "notify-test"
[variables]
public_url = {{ default = "{PUBLIC_URL}/" }}
[[trigger.http]]
route = "/..."
component = "testbed"
[[trigger.amqp]]
queue = "{queue}"
component = "notify"
concurrency = 2
max_attempts = 2
retry_delay_ms = 200
[component.testbed]
source = "{testbed}"
blob_buckets = ["mp3s"]
publish_queues = ["{queue}"]
[component.notify]
source = "{notify}"
blob_buckets = ["mp3s"]
send_mail = true
[component.notify.variables]
public_url = "{{{{ public_url }}}}"
"#,
        testbed = wasm.join("testbed.wasm").display(),
        notify = wasm.join("notify.wasm").display(),
    )
}

/// Stores an MP3-ish blob owned by `owner` in `mp3s` and returns its fid.
async fn store_mp3(s: &Spindle, owner: &str) -> String {
    let mut body = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    body.extend(std::iter::repeat_n(0xFFu8, 4096));
    let r = support::client()
        .post(format!("{}/blob/mp3s?owner={owner}", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let fid = r.text().await.unwrap();
    assert_eq!(fid.len(), 24, "{fid}");
    fid
}

async fn publish(s: &Spindle, queue: &str, body: &str) {
    let r = support::client()
        .post(format!("{}/publish/{queue}", s.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
}

fn mp3_message(job_id: &str, mp3_fid: &str, username: &str) -> String {
    json!({
        "v": 1,
        "job_id": job_id,
        "video_fid": "65a0000000000000000000aa",
        "mp3_fid": mp3_fid,
        "username": username,
    })
    .to_string()
}

/// The `.eml` files in the outbox, as messages.
fn outbox(state_dir: &Path) -> Vec<Received> {
    let dir: PathBuf = state_dir.join("outbox");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| Received {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: std::fs::read(p).unwrap(),
            authenticated_as: None,
            tls: false,
        })
        .collect()
}

/// The email for `job_id` about `fid`, as notify composes it.
fn assert_ready_email(m: &Received, job_id: &str, fid: &str) {
    assert_eq!(m.header("To").as_deref(), Some(USER), "{}", m.text());
    assert_eq!(m.header("Subject").as_deref(), Some("Your MP3 is ready"));
    assert_eq!(
        m.header("Message-ID"),
        Some(format!("<mp3-ready.{job_id}@spindle.local>"))
    );
    // Short ASCII lines: plain 7-bit text, readable as it is in the outbox.
    assert_eq!(
        m.header("Content-Transfer-Encoding").as_deref(),
        Some("7bit"),
        "{}",
        m.text()
    );
    let body = m.body().replace("\r\n", "\n");
    assert!(body.contains(job_id), "{body}");
    assert!(body.contains(&format!("MP3 id:  {fid}")), "{body}");
    // The manifest's public_url ends in `/`; the link has no `//`.
    assert!(
        body.contains(&format!("\n  {PUBLIC_URL}/download?fid={fid}\n")),
        "{body}"
    );
    assert!(body.contains("Authorization: Bearer"), "{body}");
}

/// The blob's metadata as the embedded store keeps it
/// (`<state>/blobs/<bucket>/<id>.json`).
fn mp3_metadata(s: &Spindle, fid: &str) -> serde_json::Value {
    let path = s.state_dir.join("blobs/mp3s").join(format!("{fid}.json"));
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stored: serde_json::Value = serde_json::from_slice(&text).unwrap();
    stored["metadata"].clone()
}

/// Polls `check` every 100 ms for up to 30 s.
async fn wait_until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the host's log (notify writes one line per message) has `needle`.
async fn wait_for_log(s: &Spindle, needle: &str) {
    wait_until(&format!("{needle:?} in the log"), async || {
        s.stderr().contains(needle).then_some(())
    })
    .await;
}

/// The dead letters of `queue`, from the admin listener.
async fn dead_letters(s: &Spindle, queue: &str) -> Vec<serde_json::Value> {
    let r = support::client()
        .get(format!("{}/queues/{queue}/dead-letters", s.admin))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Vec<serde_json::Value>>().await.unwrap()
}

/// Waits for the dead letter whose body is `body` and returns its reason.
async fn dead_letter_reason(s: &Spindle, queue: &str, body: &str) -> String {
    wait_until(&format!("a dead letter for {body}"), async || {
        dead_letters(s, queue)
            .await
            .into_iter()
            .find(|d| d["body"] == body)
            .map(|d| d["reason"].as_str().unwrap_or_default().to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_emails_once_per_job_on_embedded_backends() {
    let queue = "mp3";
    let (_m, manifest) = write_manifest(&manifest(queue));
    let (s, _rc) = up_with_config(&manifest, "");

    let fid = store_mp3(&s, USER).await;
    let job_id = unique("job");
    let body = mp3_message(&job_id, &fid, USER);
    publish(&s, queue, &body).await;

    let mails = wait_until("one email in the outbox", async || {
        let mails = outbox(&s.state_dir);
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert_eq!(mails.len(), 1);
    assert_ready_email(&mails[0], &job_id, &fid);
    // Recorded once the send succeeded; the log line comes after.
    wait_for_log(&s, &format!("job {job_id}: emailed {USER}")).await;
    let message_id = format!("<mp3-ready.{job_id}@spindle.local>");
    assert_eq!(mp3_metadata(&s, &fid)["notified"], message_id.as_str());
    assert_eq!(mp3_metadata(&s, &fid)["owner"], USER, "others kept");

    // The same job again (a new queue message-id, as a redelivery may have):
    // handled, acknowledged, and no second email.
    publish(&s, queue, &body).await;
    wait_for_log(&s, &format!("job {job_id}: already notified")).await;
    assert_eq!(outbox(&s.state_dir).len(), 1);
    assert_eq!(mp3_metadata(&s, &fid)["notified"], message_id.as_str());

    // Messages that can never succeed are dead-lettered at once, with a
    // reason an operator can act on, and send nothing.
    let malformed = "{\"v\":1,\"job_id\":";
    publish(&s, queue, malformed).await;
    let reason = dead_letter_reason(&s, queue, malformed).await;
    assert!(reason.contains("not valid JSON"), "{reason}");

    let no_mp3 =
        json!({"v":1,"job_id":"j-null","video_fid":"x","mp3_fid":null,"username":USER}).to_string();
    publish(&s, queue, &no_mp3).await;
    let reason = dead_letter_reason(&s, queue, &no_mp3).await;
    assert!(reason.contains("mp3_fid"), "{reason}");

    let v2 = json!({"v":2,"job_id":"j-v2","mp3_fid":fid,"username":USER}).to_string();
    publish(&s, queue, &v2).await;
    let reason = dead_letter_reason(&s, queue, &v2).await;
    assert!(reason.contains("version 2"), "{reason}");

    let gone = mp3_message("j-gone", "65a0000000000000000000ff", USER);
    publish(&s, queue, &gone).await;
    let reason = dead_letter_reason(&s, queue, &gone).await;
    assert!(reason.contains("no longer exists"), "{reason}");

    let other = store_mp3(&s, "not-an-address").await;
    let bad_to = mp3_message("j-bad-to", &other, "not-an-address");
    publish(&s, queue, &bad_to).await;
    let reason = dead_letter_reason(&s, queue, &bad_to).await;
    assert!(reason.contains("cannot be sent to"), "{reason}");
    assert!(mp3_metadata(&s, &other).get("notified").is_none());

    // An MP3 of another account: no email about it to this user.
    let theirs = store_mp3(&s, "someone-else@example.com").await;
    let not_theirs = mp3_message("j-not-theirs", &theirs, USER);
    publish(&s, queue, &not_theirs).await;
    let reason = dead_letter_reason(&s, queue, &not_theirs).await;
    assert!(reason.contains("belongs to another account"), "{reason}");
    assert!(mp3_metadata(&s, &theirs).get("notified").is_none());

    // Rejected, not retried: one attempt each.
    for d in dead_letters(&s, queue).await {
        assert_eq!(d["attempt"], 1, "{d}");
    }
    assert_eq!(outbox(&s.state_dir).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_on_rabbitmq_mails_over_smtp_once() {
    let Ok(amqp) = std::env::var("SPINDLE_TEST_AMQP_URL") else {
        eprintln!("SPINDLE_TEST_AMQP_URL is not set: the RabbitMQ notify test did not run");
        return;
    };
    let smtp = SmtpServer::start(TlsMode::Plain);
    // A queue of its own on the shared broker, so parallel runs do not take
    // each other's messages.
    let queue = unique("mp3");
    let (_m, manifest) = write_manifest(&manifest(&queue));
    let (s, _rc) = up_with_config(
        &manifest,
        &format!(
            "[amqp]\nurl = \"{amqp}\"\n[smtp]\nurl = \"{}\"\n",
            smtp.url()
        ),
    );
    assert!(s.log_contains("RabbitMQ"), "{}", s.stderr());

    let fid = store_mp3(&s, USER).await;
    let job_id = unique("job");
    let body = mp3_message(&job_id, &fid, USER);
    publish(&s, &queue, &body).await;
    let received = smtp.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, [USER]);
    assert_ready_email(&received[0], &job_id, &fid);
    wait_for_log(&s, &format!("job {job_id}: emailed {USER}")).await;

    publish(&s, &queue, &body).await;
    wait_for_log(&s, &format!("job {job_id}: already notified")).await;
    assert_eq!(smtp.messages().len(), 1);

    let malformed = "not json";
    publish(&s, &queue, malformed).await;
    let reason = dead_letter_reason(&s, &queue, malformed).await;
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(smtp.messages().len(), 1);
}

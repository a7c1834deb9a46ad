//! `spindle:queue`, `[[trigger.amqp]]` and `spindle:mail` through real
//! components: on the embedded queue and outbox, and on RabbitMQ
//! (`SPINDLE_TEST_AMQP_URL`) with a real SMTP server started by the test.

use crate::support;

use smtp_server::{SmtpServer, TlsMode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, unique, up, up_with_config, write_manifest};

/// The testbed publishes to `queue` and (with the trigger) handles it;
/// `quiet` (the same code) is granted nothing.
fn manifest(queue: &str) -> String {
    manifest_with(queue, true)
}

fn manifest_with(queue: &str, trigger: bool) -> String {
    let wasm = support::build_components().join("testbed.wasm");
    let text = format!(
        r#"spin_manifest_version = 2
[application]
name = "queues"
[[trigger.http]]
route = "/..."
component = "testbed"
[[trigger.http]]
route = "/quiet/..."
component = "quiet"
[[trigger.amqp]]
queue = "{queue}"
component = "testbed"
concurrency = 2
max_attempts = 2
retry_delay_ms = 200
[component.testbed]
source = "{wasm}"
publish_queues = ["{queue}"]
send_mail = true
[component.quiet]
source = "{wasm}"
"#,
        wasm = wasm.display()
    );
    if trigger {
        return text;
    }
    let (head, rest) = text.split_once("[[trigger.amqp]]").unwrap();
    let (_, components) = rest.split_once("[component.testbed]").unwrap();
    format!("{head}[component.testbed]{components}")
}

async fn publish(s: &Spindle, queue: &str, body: &str) -> reqwest::Response {
    support::client()
        .post(format!("{}/publish/{queue}", s.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn outbox(state_dir: &Path) -> Vec<String> {
    let dir: PathBuf = state_dir.join("outbox");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Grants hold for queues and mail alike.
async fn permissions(s: &Spindle) {
    let r = publish(s, "not-granted", "x").await;
    assert_eq!(r.status(), 403);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("publish_queues"),
        "{msg}"
    );
    let r = support::client()
        .post(format!("{}/quiet/mail", s.url))
        .body("someone@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("send_mail"),
        "{msg}"
    );
}

/// Retries carry the attempt number and stop at max_attempts; traps retry
/// too, and the host keeps serving.
async fn failures_retry_then_stop(s: &Spindle, queue: &str) {
    assert_eq!(publish(s, queue, "retry").await.status(), 202);
    assert_eq!(publish(s, queue, "trap").await.status(), 202);
    assert!(
        s.log_contains("asked to retry (attempt 1)"),
        "{}",
        s.stderr()
    );
    assert!(
        s.log_contains("asked to retry (attempt 2)"),
        "{}",
        s.stderr()
    );
    assert!(s.log_contains("trapped"), "{}", s.stderr());
    // max_attempts = 2: no third attempt after the retry delay has passed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !s.stderr().contains("asked to retry (attempt 3)"),
        "{}",
        s.stderr()
    );
    let r = support::client()
        .get(format!("{}/hello", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_trigger_and_mail_on_embedded_backends() {
    let queue = "jobs";
    let (_m, manifest) = write_manifest(&manifest(queue));
    let (s, _rc) = up_with_config(&manifest, "");
    assert!(s.log_contains("embedded queue"), "{}", s.stderr());

    // Published through the component, consumed by the trigger, mailed.
    for i in 0..3 {
        assert_eq!(
            publish(&s, queue, &format!("hello-{i}")).await.status(),
            202
        );
    }
    wait_until("three emails in the outbox", || {
        outbox(&s.state_dir).len() == 3
    })
    .await;
    let mails = outbox(&s.state_dir).join("\n");
    for i in 0..3 {
        assert!(mails.contains(&format!("Subject: hello-{i}")), "{mails}");
    }
    assert!(mails.contains("To: probe@example.com"), "{mails}");

    permissions(&s).await;
    failures_retry_then_stop(&s, queue).await;
    // The failed messages sent no mail.
    assert_eq!(outbox(&s.state_dir).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_messages_survive_a_restart_of_the_embedded_queue() {
    let queue = "jobs";
    let (_m, manifest) = write_manifest(&manifest(queue));
    let state = tempfile::tempdir().unwrap();
    // A host with no trigger publishes; nothing consumes yet.
    let publish_only = manifest_with(queue, false);
    let (_p, publish_manifest) = write_manifest(&publish_only);
    {
        let mut opts = UpOptions::new(&publish_manifest);
        opts.state_dir = Some(state.path().to_path_buf());
        let s = up(opts);
        for i in 0..2 {
            assert_eq!(publish(&s, queue, &format!("kept-{i}")).await.status(), 202);
        }
    }
    // A new host on the same state directory consumes what was published.
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(state.path().to_path_buf());
    let s = up(opts);
    wait_until("both kept messages mailed", || {
        outbox(&s.state_dir).len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_trigger_on_rabbitmq_and_mail_over_smtp() {
    let Ok(amqp) = std::env::var("SPINDLE_TEST_AMQP_URL") else {
        eprintln!("SPINDLE_TEST_AMQP_URL is not set: the RabbitMQ trigger test did not run");
        return;
    };
    let smtp = SmtpServer::start(TlsMode::Plain);
    let queue = unique("jobs");
    let (_m, manifest) = write_manifest(&manifest(&queue));
    let (s, _rc) = up_with_config(
        &manifest,
        &format!(
            "[amqp]\nurl = \"{amqp}\"\n[smtp]\nurl = \"{}\"\n",
            smtp.url()
        ),
    );
    assert!(s.log_contains("RabbitMQ"), "{}", s.stderr());

    for i in 0..3 {
        assert_eq!(
            publish(&s, &queue, &format!("hello-{i}")).await.status(),
            202
        );
    }
    let received = smtp.wait_for_messages(3, Duration::from_secs(30));
    assert_eq!(received.len(), 3);
    let mut subjects: Vec<_> = received
        .iter()
        .filter_map(|m| m.header("Subject"))
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["hello-0", "hello-1", "hello-2"]);
    for m in &received {
        assert_eq!(m.rcpt_to, ["probe@example.com"]);
    }

    // A direct send through the capability arrives with its recipient.
    let r = support::client()
        .post(format!("{}/mail", s.url))
        .body("direct@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.text().await.unwrap();
    let received = smtp.wait_for_messages(4, Duration::from_secs(30));
    let direct = received
        .iter()
        .find(|m| m.rcpt_to == ["direct@example.com"])
        .expect("the direct mail arrived");
    assert_eq!(direct.header("Message-ID").as_deref(), Some(id.as_str()));

    permissions(&s).await;
    failures_retry_then_stop(&s, &queue).await;

    // An invalid recipient is the component's error, not the host's.
    let r = support::client()
        .post(format!("{}/mail", s.url))
        .body("not an address")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_starts_before_rabbitmq_and_consumes_once_it_answers() {
    let Ok(amqp) = std::env::var("SPINDLE_TEST_AMQP_URL") else {
        eprintln!("SKIPPED: set SPINDLE_TEST_AMQP_URL to run this test on RabbitMQ");
        return;
    };
    let broker: url::Url = amqp.parse().unwrap();
    let target = format!(
        "{}:{}",
        broker.host_str().unwrap(),
        broker.port().unwrap_or(5672)
    );
    // A port where nothing answers yet; the broker "comes up" there later.
    let port = support::free_port();
    let mut late = broker.clone();
    late.set_host(Some("127.0.0.1")).unwrap();
    late.set_port(Some(port)).unwrap();
    let queue = unique("late");
    let (_dir, manifest) = write_manifest(&manifest(&queue));
    let (s, _rc) = up_with_config(&manifest, &format!("[amqp]\nurl = \"{late}\"\n"));
    let client = support::client();

    let alive = client
        .get(format!("{}/healthz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200);
    let ready = client
        .get(format!("{}/readyz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("queue broker"));

    let _rabbitmq = support::gate::Gate::open_at(port, target).await;
    support::until_ready(&s.admin).await;
    let resp = client
        .post(format!("{}/publish/{queue}", s.url))
        .body("after the broker came up")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox(&s.state_dir).is_empty() {
        assert!(Instant::now() < deadline, "the consumer never subscribed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(outbox(&s.state_dir)[0].contains("after the broker came up"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_server_that_is_down_degrades_notify_but_leaves_the_host_ready() {
    // Nothing listens on port 1: only notify, a queue handler, sends mail.
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let (s, _rc) = up_with_config(
        &manifest,
        "[smtp]\nurl = \"smtp://127.0.0.1:1\"\nfrom = \"Spindle <noreply@spindle.test>\"\n",
    );
    let r = support::client()
        .get(format!("{}/readyz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    let mail = body["degraded"]["spindle:mail"]
        .as_str()
        .unwrap_or_default();
    assert!(mail.contains("mail server"), "{body}");
    // The routes work meanwhile.
    let r = support::client()
        .post(format!("{}/signup", s.url))
        .json(&serde_json::json!({"email": "ready@example.com", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// The value of the sample `name{queue="QUEUE"}` on `/metrics`.
async fn queue_sample(s: &Spindle, name: &str, queue: &str) -> Option<f64> {
    let text = support::client()
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{queue=\"{queue}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_metrics_count_every_delivery_and_outcome() {
    let queue = "counted";
    let (_m, manifest) = write_manifest(&manifest(queue));
    let (s, _rc) = up_with_config(&manifest, "");
    let families = [
        "spindle_queue_messages_consumed_total",
        "spindle_queue_messages_acked_total",
        "spindle_queue_messages_retried_total",
        "spindle_queue_messages_dead_lettered_total",
        "spindle_queue_messages_in_flight",
    ];
    // Every series is there from start-up, before any message.
    for name in families {
        assert_eq!(queue_sample(&s, name, queue).await, Some(0.0), "{name}");
    }
    for i in 0..3 {
        assert_eq!(publish(&s, queue, &format!("ok-{i}")).await.status(), 202);
    }
    // Two attempts each (max_attempts = 2): one retry, then a dead letter.
    assert_eq!(publish(&s, queue, "retry").await.status(), 202);
    assert_eq!(publish(&s, queue, "trap").await.status(), 202);
    let expected = [7.0, 3.0, 2.0, 2.0, 0.0];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = Vec::new();
        for name in families {
            got.push(queue_sample(&s, name, queue).await.unwrap_or(-1.0));
        }
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumed, acked, retried, dead-lettered, in flight: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

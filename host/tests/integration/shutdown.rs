//! Stopping a host the way Kubernetes does (SIGTERM): it turns unready,
//! stops accepting, lets in-flight requests and queue invocations finish,
//! returns unstarted messages to the queue, and exits. On the embedded
//! queue always, on RabbitMQ when `SPINDLE_TEST_AMQP_URL` is set. Also: JSON
//! log lines for a log collector.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, unique, up, write_manifest};

/// The testbed answers HTTP and handles `queue` one message at a time.
fn manifest(queue: &str) -> String {
    let wasm = support::build_components().join("testbed.wasm");
    format!(
        r#"spin_manifest_version = 2
[application]
name = "shutdown"
[[trigger.http]]
route = "/..."
component = "testbed"
[[trigger.amqp]]
queue = "{queue}"
component = "testbed"
concurrency = 1
[component.testbed]
source = "{wasm}"
publish_queues = ["{queue}"]
send_mail = true
"#,
        wasm = wasm.display()
    )
}

async fn publish(s: &Spindle, queue: &str, body: &str) {
    let resp = support::client()
        .post(format!("{}/publish/{queue}", s.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
}

fn outbox_subjects(state_dir: &Path) -> Vec<String> {
    let mut subjects: Vec<String> = std::fs::read_dir(state_dir.join("outbox"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                })
                .collect()
        })
        .unwrap_or_default();
    subjects.sort();
    subjects
}

/// Starts a slow request and a slow queue invocation, sends SIGTERM, and
/// checks the drain; returns once the host has exited.
async fn drain_on_sigterm(mut s: Spindle, queue: &str) {
    let client = support::client();
    publish(&s, queue, "sleep:3000").await;
    publish(&s, queue, "after the restart").await;
    let slow = tokio::spawn({
        let url = format!("{}/sleep?ms=3000", s.url);
        let client = client.clone();
        async move { client.get(url).send().await }
    });
    // Let the request and the first message start.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let signalled = Instant::now();
    s.terminate();

    // Unready at once, while the admin listener still answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = client
            .get(format!("{}/readyz", s.admin))
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            let body = resp.text().await.unwrap();
            assert!(body.contains("shutting down"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No new connections are accepted.
    let refused = reqwest::Client::new()
        .get(format!("{}/hello", s.url))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );

    // The in-flight request completes normally.
    let resp = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slept");
    let status = s
        .wait_exit(Duration::from_secs(30))
        .expect("the host exits after draining");
    assert!(status.success(), "clean exit: {status}; {}", s.stderr());
    eprintln!("drained and exited {:?} after SIGTERM", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_requests_and_invocations_on_the_embedded_queue() {
    let queue = "jobs";
    let (dir, manifest) = write_manifest(&manifest(queue));
    let state = dir.path().join("state");
    let opts = || {
        let mut o = UpOptions::new(&manifest);
        o.state_dir = Some(state.clone());
        o
    };
    drain_on_sigterm(up(opts()), queue).await;
    // The running invocation finished; the unstarted message was kept.
    assert_eq!(outbox_subjects(&state), ["sleep:3000"]);

    let again = up(opts());
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_subjects(&state).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the kept message was not delivered after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outbox_subjects(&state), ["after the restart", "sleep:3000"]);
    drop(again);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_requests_and_invocations_on_rabbitmq() {
    let Ok(amqp) = std::env::var("SPINDLE_TEST_AMQP_URL") else {
        eprintln!("SKIPPED: set SPINDLE_TEST_AMQP_URL to run the drain test on RabbitMQ");
        return;
    };
    let queue = unique("drain");
    let (dir, manifest) = write_manifest(&manifest(&queue));
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, format!("[amqp]\nurl = \"{amqp}\"\n")).unwrap();
    let state = dir.path().join("state");
    let mut opts = UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string());
    opts.state_dir = Some(state.clone());
    drain_on_sigterm(up(opts), &queue).await;
    assert_eq!(outbox_subjects(&state), ["sleep:3000"]);

    // The unstarted message is back on the queue, unacked and not dead.
    let broker = spindle_platform::capabilities::queue::Broker::connect(
        Some(&amqp),
        dir.path(),
        &[queue.as_str()],
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler: spindle_platform::capabilities::queue::Handler = std::sync::Arc::new(move |d| {
        let _ = tx.send(d);
        Box::pin(async { spindle_platform::capabilities::queue::Outcome::Ack })
    });
    let consumer = broker
        .consume(&queue, Default::default(), handler)
        .await
        .unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the unstarted message is still queued")
        .unwrap();
    assert_eq!(back.body, b"after the restart");
    consumer.stop().await;
}

#[test]
fn logs_can_be_json_lines() {
    let (_dir, manifest) = write_manifest(&manifest("jobs"));
    let s = up(UpOptions::new(&manifest).env("SPINDLE_LOG_FORMAT", "json"));
    assert!(s.log_contains("\"level\""), "{}", s.stderr());
    let lines: Vec<String> = s.stderr().lines().map(str::to_string).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}

//! Behavioural tests, written once and run on both backends (`embedded::*`
//! and `rabbitmq::*`). The RabbitMQ ones run when `SPINDLE_TEST_AMQP_URL` is
//! set and say so when it is not. Backend-specific tests are in
//! `tests_embedded.rs` and `tests_rabbitmq.rs`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;

use super::test_support::{Backend, Seen, handler, unique_queue};
use super::{ConsumeOptions, Outcome, QueueError};

/// Generates `embedded::NAME` and `rabbitmq::NAME` for each shared test.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::embedded()).await;
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::Backend::rabbitmq(stringify!($name)) else {
                        return;
                    };
                    super::$name(&backend).await;
                }
            )*
        }
    };
}

on_both_backends!(
    publish_consume_ack,
    retry_then_dead_letter,
    concurrency_is_bounded,
    stop_returns_unacked_messages,
    survives_restart_mid_handling,
);

#[test]
fn outcomes_settle_as_documented() {
    use super::Settle;
    assert_eq!(Settle::decide(Outcome::Ack, 1, 3), Settle::Ack);
    assert_eq!(
        Settle::decide(Outcome::Retry("x".into()), 2, 3),
        Settle::Retry {
            next_attempt: 3,
            reason: "x".into()
        }
    );
    assert!(matches!(
        Settle::decide(Outcome::Retry("x".into()), 3, 3),
        Settle::Dead { reason } if reason == "gave up after 3 attempts: x"
    ));
    assert_eq!(
        Settle::decide(Outcome::DeadLetter("bad".into()), 1, 3),
        Settle::Dead {
            reason: "bad".into()
        }
    );
}

fn quick(concurrency: usize, prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        concurrency,
        max_attempts: 3,
        retry_delay: Duration::from_millis(200),
    }
}

async fn publish_consume_ack(backend: &Backend) {
    let queue = unique_queue("ack");
    let broker = backend.connect(&[&queue]).await;
    broker.ping().await.expect("ping");
    for i in 0..3 {
        broker
            .publish(&queue, format!("m{i}").as_bytes())
            .await
            .expect("publish");
    }
    let undeclared = broker.publish("no-such-queue", b"x").await;
    assert!(
        matches!(undeclared, Err(QueueError::UnknownQueue { .. })),
        "{undeclared:?}"
    );

    let seen = Seen::default();
    let s = seen.clone();
    let consumer = broker
        .consume(
            &queue,
            quick(2, 4),
            handler(move |d| {
                s.push(d);
                async { Outcome::Ack }
            }),
        )
        .await
        .expect("consume");
    let got = seen.wait_until("3 messages", |d| d.len() >= 3).await;
    consumer.stop().await;
    let bodies: HashSet<Vec<u8>> = got.iter().map(|d| d.body.clone()).collect();
    let expected: HashSet<Vec<u8>> = (0..3).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(bodies, expected);
    assert!(got.iter().all(|d| d.attempt == 1 && d.queue == queue));
    let ids: HashSet<&str> = got.iter().map(|d| d.message_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "message ids are unique");

    // Acked means gone: a new consumer gets nothing.
    let again = Seen::default();
    let a = again.clone();
    let consumer = broker
        .consume(
            &queue,
            quick(2, 4),
            handler(move |d| {
                a.push(d);
                async { Outcome::Ack }
            }),
        )
        .await
        .expect("consume again");
    tokio::time::sleep(Duration::from_millis(700)).await;
    consumer.stop().await;
    assert!(again.snapshot().is_empty(), "acked messages came back");
    assert!(
        broker
            .dead_letters(&queue, 10)
            .await
            .expect("dead")
            .is_empty()
    );
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// `retry` fails every time, `poison` is refused at once, `flaky` fails
/// once, `panics` panics once.
async fn retry_then_dead_letter(backend: &Backend) {
    let queue = unique_queue("retry");
    let broker = backend.connect(&[&queue]).await;
    let seen = Seen::default();
    let s = seen.clone();
    let consumer = broker
        .consume(
            &queue,
            quick(2, 4),
            handler(move |d| {
                s.push(d.clone());
                async move {
                    match (d.body.as_slice(), d.attempt) {
                        (b"poison", _) => Outcome::DeadLetter("malformed".into()),
                        (b"flaky", 1) => Outcome::Retry("flaky failed".into()),
                        (b"panics", 1) => panic!("handler bug"),
                        (b"retry", n) => Outcome::Retry(format!("boom {n}")),
                        _ => Outcome::Ack,
                    }
                }
            }),
        )
        .await
        .expect("consume");
    for body in ["retry", "poison", "flaky", "panics"] {
        broker
            .publish(&queue, body.as_bytes())
            .await
            .expect("publish");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = broker.dead_letters(&queue, 10).await.expect("dead letters");
        if dead.len() >= 2 || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    seen.wait_until("flaky and panics retried", |d| {
        ["flaky", "panics"]
            .iter()
            .all(|b| d.iter().any(|d| d.body == b.as_bytes() && d.attempt == 2))
    })
    .await;
    // Time for a loop to show itself, had the dead letters not stopped it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    consumer.stop().await;

    let attempts = |body: &str| -> Vec<u32> {
        let got = seen.snapshot();
        let of_body: Vec<_> = got.iter().filter(|d| d.body == body.as_bytes()).collect();
        let ids: HashSet<&str> = of_body.iter().map(|d| d.message_id.as_str()).collect();
        assert_eq!(ids.len(), 1, "{body}: one message id across retries");
        of_body.iter().map(|d| d.attempt).collect()
    };
    assert_eq!(attempts("retry"), vec![1, 2, 3]);
    assert_eq!(attempts("poison"), vec![1]);
    assert_eq!(attempts("flaky"), vec![1, 2]);
    assert_eq!(attempts("panics"), vec![1, 2]);

    assert_eq!(dead.len(), 2, "dead letters: {dead:?}");
    let retry = dead
        .iter()
        .find(|d| d.body == b"retry")
        .expect("retry dead");
    assert_eq!(retry.attempt, 3);
    assert!(retry.reason.contains("boom 3"), "{}", retry.reason);
    assert!(
        retry.reason.contains("after 3 attempts"),
        "{}",
        retry.reason
    );
    let poison = dead
        .iter()
        .find(|d| d.body == b"poison")
        .expect("poison dead");
    assert_eq!((poison.attempt, poison.reason.as_str()), (1, "malformed"));
    // Inspecting leaves them in place.
    assert_eq!(
        broker.dead_letters(&queue, 10).await.expect("again").len(),
        2
    );
    broker.delete_queue(&queue).await.expect("cleanup");
}

async fn concurrency_is_bounded(backend: &Backend) {
    // (concurrency, prefetch, expected peak): the smaller one bounds.
    for (concurrency, prefetch, peak) in [(3, 10, 3), (5, 2, 2)] {
        let queue = unique_queue("conc");
        let broker = backend.connect(&[&queue]).await;
        for i in 0..12 {
            broker
                .publish(&queue, format!("{i}").as_bytes())
                .await
                .expect("publish");
        }
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let seen = Seen::default();
        let (n, m, s) = (now.clone(), max.clone(), seen.clone());
        let consumer = broker
            .consume(
                &queue,
                quick(concurrency, prefetch),
                handler(move |d| {
                    let (n, m, s) = (n.clone(), m.clone(), s.clone());
                    async move {
                        let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(running, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        n.fetch_sub(1, Ordering::SeqCst);
                        s.push(d);
                        Outcome::Ack
                    }
                }),
            )
            .await
            .expect("consume");
        seen.wait_until("12 messages", |d| d.len() >= 12).await;
        consumer.stop().await;
        assert_eq!(
            max.load(Ordering::SeqCst),
            peak,
            "concurrency {concurrency}, prefetch {prefetch}"
        );
        broker.delete_queue(&queue).await.expect("cleanup");
    }
}

async fn stop_returns_unacked_messages(backend: &Backend) {
    let queue = unique_queue("stop");
    let broker = backend.connect(&[&queue]).await;
    for i in 0..4 {
        broker
            .publish(&queue, format!("m{i}").as_bytes())
            .await
            .expect("publish");
    }
    let started = Seen::default();
    let finished = Seen::default();
    let release = Arc::new(Notify::new());
    let (st, fi, re) = (started.clone(), finished.clone(), release.clone());
    // One handler at a time, but the broker may push all four ahead.
    let consumer = broker
        .consume(
            &queue,
            quick(1, 4),
            handler(move |d| {
                st.push(d.clone());
                let (fi, re) = (fi.clone(), re.clone());
                async move {
                    re.notified().await;
                    fi.push(d);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("consume");
    started
        .wait_until("a handler started", |d| !d.is_empty())
        .await;
    let stopping = tokio::spawn(consumer.stop());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !stopping.is_finished(),
        "stop must wait for the running handler"
    );
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stop finished")
        .expect("stop task");
    assert_eq!(
        started.snapshot().len(),
        1,
        "nothing new started after stop"
    );
    let first = finished.snapshot();
    assert_eq!(first.len(), 1, "the running handler finished and acked");

    let rest = Seen::default();
    let r = rest.clone();
    let consumer = broker
        .consume(
            &queue,
            quick(2, 4),
            handler(move |d| {
                r.push(d);
                async { Outcome::Ack }
            }),
        )
        .await
        .expect("consume again");
    let rest = rest.wait_until("the other 3", |d| d.len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.stop().await;
    let mut bodies: Vec<Vec<u8>> = rest.iter().map(|d| d.body.clone()).collect();
    bodies.push(first[0].body.clone());
    bodies.sort();
    let expected: Vec<Vec<u8>> = (0..4).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(bodies, expected, "each message handled once, none lost");
    assert!(rest.iter().all(|d| d.attempt == 1));
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// A message whose handler never finishes (the process dies, or the
/// connection drops, mid-way) is delivered again, and publishing still works.
async fn survives_restart_mid_handling(backend: &Backend) {
    let queue = unique_queue("restart");
    let broker = backend.connect(&[&queue]).await;
    broker.publish(&queue, b"first").await.expect("publish");
    let seen = Seen::default();
    let hung = Seen::default();
    let hang_once = Arc::new(AtomicBool::new(true));
    let release = Arc::new(Notify::new());
    let (s, h, once, re) = (
        seen.clone(),
        hung.clone(),
        hang_once.clone(),
        release.clone(),
    );
    let handle: super::Handler = Arc::new(move |d| {
        if once.swap(false, Ordering::SeqCst) {
            h.push(d);
            let re = re.clone();
            // Never settles until the test ends (a process that died).
            return async move {
                re.notified().await;
                Outcome::Ack
            }
            .boxed();
        }
        s.push(d);
        async { Outcome::Ack }.boxed()
    });
    let consumer = broker
        .consume(&queue, quick(2, 4), handle.clone())
        .await
        .expect("consume");
    hung.wait_until("the first delivery", |d| !d.is_empty())
        .await;

    let (broker, consumer) = backend
        .interrupt(broker, consumer, &queue, quick(2, 4), handle)
        .await;
    broker
        .publish(&queue, b"second")
        .await
        .expect("publish after");
    let got = seen
        .wait_until("both messages", |d| {
            d.iter().any(|d| d.body == b"first") && d.iter().any(|d| d.body == b"second")
        })
        .await;
    let first = got.iter().find(|d| d.body == b"first").expect("first");
    assert_eq!(first.attempt, 1, "a crash is not a failed attempt");
    assert_eq!(first.message_id, hung.snapshot()[0].message_id);
    release.notify_waiters();
    consumer.stop().await;
    broker.delete_queue(&queue).await.expect("cleanup");
}

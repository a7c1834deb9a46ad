//! The queue backends' promises (see `capabilities/queue/mod.rs`), each
//! written once and run on every backend: `queue::embedded::NAME` on the
//! embedded queue, `queue::rabbitmq::NAME` on RabbitMQ when
//! `SPINDLE_TEST_AMQP_URL` is set (saying so when it is not). The
//! backend-only tests are in `embedded.rs` and `rabbitmq.rs`, next to the
//! shared ones they run with.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use spindle_platform::capabilities::queue::{
    Broker, ConsumeOptions, DeadLetter, DeadLetterHook, DeadLetterLimits, Delivery, Handler,
    Outcome, QueueError,
};
use tokio::sync::Notify;

use backend::{Backend, Seen, handler, unique_queue};

/// One test per shared behaviour, on the backend `$backend` makes for a
/// test name (`None`: it cannot run here, and it said so).
macro_rules! every_behaviour {
    ($backend:expr) => {
        every_behaviour!(@ $backend;
            publish_consume_ack,
            retry_then_dead_letter,
            concurrency_is_bounded,
            stop_returns_unacked_messages,
            survives_restart_mid_handling,
            crash_loops_are_dead_lettered,
            retries_back_off_and_deferrals_do_not_count,
            a_failing_hook_postpones_the_dead_letter,
            replay_resets_the_count,
            dead_letters_are_bounded,
        );
    };
    (@ $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = ($backend)(stringify!($name)) else {
                    return;
                };
                super::$name(&backend).await;
            }
        )*
    };
}

mod backend;
mod embedded;
mod rabbitmq;

fn quick(concurrency: usize, prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        concurrency,
        max_attempts: 3,
        retry_delay: Duration::from_millis(200),
        retry_delay_max: Duration::from_millis(400),
        ..ConsumeOptions::default()
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
    // Embedded: unstarted messages were never handed out. RabbitMQ pushed
    // them ahead (prefetch) and counts that delivery when they come back.
    let most = match backend {
        Backend::Embedded(_) => 1,
        Backend::RabbitMq(_) => 2,
    };
    assert!(rest.iter().all(|d| d.attempt <= most), "{rest:?}");
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
    let handle: Handler = Arc::new(move |d| {
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
    assert_eq!(first.attempt, 2, "the delivery that never answered counts");
    assert_eq!(first.message_id, hung.snapshot()[0].message_id);
    release.notify_waiters();
    consumer.stop().await;
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// A hook that records what it was called with and fails the first
/// `failures` calls.
type HookCalls = Arc<std::sync::Mutex<Vec<(u32, String)>>>;

fn recording_hook(failures: usize) -> (DeadLetterHook, HookCalls) {
    let calls: HookCalls = Arc::default();
    let c = calls.clone();
    let hook = DeadLetterHook(Arc::new(move |d: Delivery, reason: String| {
        let c = c.clone();
        async move {
            let mut calls = c.lock().expect("lock");
            calls.push((d.attempt, reason));
            if calls.len() <= failures {
                Err("the job store is down".to_string())
            } else {
                Ok(())
            }
        }
        .boxed()
    }));
    (hook, calls)
}

async fn wait_for_dead(broker: &Broker, queue: &str, n: usize) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let dead = broker.dead_letters(queue, 100).await.expect("dead letters");
        if dead.len() >= n {
            return dead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {n} dead letters, have {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message whose handler never answers (it crashes its process every
/// time) is dead-lettered after `max_attempts` deliveries, through the
/// hook, without running a third time.
async fn crash_loops_are_dead_lettered(backend: &Backend) {
    let queue = unique_queue("crashloop");
    let mut broker = backend.connect(&[&queue]).await;
    broker
        .publish(&queue, b"kills its handler")
        .await
        .expect("publish");
    let hung = Seen::default();
    let h = hung.clone();
    let handle: Handler = Arc::new(move |d| {
        h.push(d);
        // Never answers: the process "dies" under it.
        std::future::pending::<Outcome>().boxed()
    });
    let (hook, calls) = recording_hook(0);
    // Hung handlers keep their slots (on RabbitMQ they outlive the
    // connection), so leave room for each delivery.
    let opts = ConsumeOptions {
        max_attempts: 2,
        on_dead_letter: Some(hook),
        ..quick(3, 3)
    };
    let mut consumer = broker
        .consume(&queue, opts.clone(), handle.clone())
        .await
        .expect("consume");
    for n in 1..=2 {
        hung.wait_until("the next delivery", |d| d.len() >= n).await;
        (broker, consumer) = backend
            .interrupt(broker, consumer, &queue, opts.clone(), handle.clone())
            .await;
    }
    let dead = wait_for_dead(&broker, &queue, 1).await;
    consumer.abort().await;
    let attempts: Vec<u32> = hung.snapshot().iter().map(|d| d.attempt).collect();
    assert_eq!(
        attempts,
        [1, 2],
        "each delivery counted; none after the limit"
    );
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("gave up after 2 deliveries"),
        "{}",
        dead[0].reason
    );
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "the hook ran once: {calls:?}");
    assert_eq!(calls[0].0, 3, "for the delivery past the limit");
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// Retries wait longer each time (at least the lower half of each step);
/// a deferral comes back without using an attempt.
async fn retries_back_off_and_deferrals_do_not_count(backend: &Backend) {
    let queue = unique_queue("backoff");
    let broker = backend.connect(&[&queue]).await;
    let seen: Arc<std::sync::Mutex<Vec<(u32, tokio::time::Instant)>>> = Arc::default();
    let s = seen.clone();
    let opts = ConsumeOptions {
        max_attempts: 4,
        retry_delay: Duration::from_millis(200),
        retry_delay_max: Duration::from_millis(800),
        ..quick(1, 1)
    };
    let consumer = broker
        .consume(
            &queue,
            opts,
            handler(move |d| {
                let mut seen = s.lock().expect("lock");
                seen.push((d.attempt, tokio::time::Instant::now()));
                let outcome = match seen.len() {
                    1 => Outcome::Defer("someone else has it".into()),
                    _ => Outcome::Retry("still failing".into()),
                };
                async move { outcome }
            }),
        )
        .await
        .expect("consume");
    broker.publish(&queue, b"flaky").await.expect("publish");
    let dead = wait_for_dead(&broker, &queue, 1).await;
    consumer.stop().await;
    let seen = seen.lock().expect("lock").clone();
    let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 1, 2, 3, 4], "the deferral did not count");
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    // Steps: the deferral 200, then 200, 400, 800 (the cap); each wait is
    // at least the lower half of its step.
    for (gap, step_ms) in gaps.iter().zip([200u64, 200, 400, 800]) {
        assert!(
            *gap >= Duration::from_millis(step_ms / 2),
            "waited {gap:?} for a step of {step_ms} ms; all gaps {gaps:?}"
        );
    }
    assert!(
        dead[0].reason.contains("gave up after 4 attempts"),
        "{}",
        dead[0].reason
    );
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// When the hook fails the message is not dead-lettered but delivered
/// again; once the hook succeeds it is.
async fn a_failing_hook_postpones_the_dead_letter(backend: &Backend) {
    let queue = unique_queue("hook");
    let broker = backend.connect(&[&queue]).await;
    let (hook, calls) = recording_hook(1);
    let seen = Seen::default();
    let s = seen.clone();
    let consumer = broker
        .consume(
            &queue,
            ConsumeOptions {
                on_dead_letter: Some(hook),
                ..quick(1, 1)
            },
            handler(move |d| {
                s.push(d);
                async { Outcome::DeadLetter("malformed".into()) }
            }),
        )
        .await
        .expect("consume");
    broker.publish(&queue, b"bad").await.expect("publish");
    let dead = wait_for_dead(&broker, &queue, 1).await;
    consumer.stop().await;
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "failed once, then succeeded: {calls:?}");
    let attempts: Vec<u32> = seen.snapshot().iter().map(|d| d.attempt).collect();
    assert_eq!(attempts, [1, 2], "delivered again after the failed hook");
    assert_eq!((dead.len(), dead[0].reason.as_str()), (1, "malformed"));
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// Replayed dead letters come back as attempt 1, marked replayed.
async fn replay_resets_the_count(backend: &Backend) {
    let queue = unique_queue("replay");
    let broker = backend.connect(&[&queue]).await;
    let seen = Seen::default();
    let s = seen.clone();
    let consumer = broker
        .consume(
            &queue,
            quick(2, 2),
            handler(move |d| {
                s.push(d.clone());
                async move {
                    if d.replayed {
                        Outcome::Ack
                    } else {
                        Outcome::Retry("the fix is not deployed yet".into())
                    }
                }
            }),
        )
        .await
        .expect("consume");
    for body in ["a", "b"] {
        broker
            .publish(&queue, body.as_bytes())
            .await
            .expect("publish");
    }
    wait_for_dead(&broker, &queue, 2).await;
    let replayed = broker
        .replay_dead_letters(&queue, 10)
        .await
        .expect("replay");
    assert_eq!(replayed, 2);
    seen.wait_until("both replayed", |d| {
        d.iter().filter(|d| d.replayed).count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.stop().await;
    let again: Vec<_> = seen.snapshot().into_iter().filter(|d| d.replayed).collect();
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "count reset: {again:?}"
    );
    assert_eq!(again.len(), 2, "each replayed once");
    assert!(
        broker
            .dead_letters(&queue, 10)
            .await
            .expect("dead")
            .is_empty()
    );
    assert_eq!(
        broker
            .replay_dead_letters(&queue, 10)
            .await
            .expect("replay"),
        0
    );
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// A consumer trims its dead letters to the newest `max_count`.
async fn dead_letters_are_bounded(backend: &Backend) {
    let queue = unique_queue("bounded");
    let broker = backend.connect(&[&queue]).await;
    let reject = handler(|_| async { Outcome::DeadLetter("unwanted".into()) });
    let consumer = broker
        .consume(&queue, quick(1, 1), reject.clone())
        .await
        .expect("consume");
    for i in 0..4 {
        broker
            .publish(&queue, format!("d{i}").as_bytes())
            .await
            .expect("publish");
    }
    wait_for_dead(&broker, &queue, 4).await;
    consumer.stop().await;
    let bounded = ConsumeOptions {
        dead_letters: DeadLetterLimits {
            max_count: 1,
            ..DeadLetterLimits::default()
        },
        ..quick(1, 1)
    };
    let consumer = broker
        .consume(&queue, bounded, reject)
        .await
        .expect("consume");
    // The trim runs when the consumer starts. Not polled meanwhile: on
    // RabbitMQ a listing holds the dead letters it reads, hiding them from
    // the trim's count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    consumer.stop().await;
    let kept = broker.dead_letters(&queue, 10).await.expect("dead");
    assert_eq!(kept.len(), 1, "{kept:?}");
    // The head goes first. On RabbitMQ, reading dead letters (as the wait
    // above did) requeues them, which may reorder the queue.
    if matches!(backend, Backend::Embedded(_)) {
        assert_eq!(kept[0].body, b"d3", "the newest stays");
    }
    assert!(kept[0].dead_at_ms.is_some());
    broker.delete_queue(&queue).await.expect("cleanup");
}

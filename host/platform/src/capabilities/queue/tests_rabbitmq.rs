//! RabbitMQ-only tests (when `SPINDLE_TEST_AMQP_URL` is set): the declared
//! topology, message properties, confirms, and reconnection under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};

use super::rabbitmq::{ATTEMPT_HEADER, RabbitMq, header_u32, message_properties};
use super::test_support::{Backend, Seen, force_close, handler, unique_queue};
use super::{Broker, ConsumeOptions, Outcome, QueueError};

fn rabbit(broker: &Broker) -> &Arc<RabbitMq> {
    match broker {
        Broker::RabbitMq(rabbit) => rabbit,
        Broker::Embedded(_) => unreachable!("a RabbitMQ backend was asked for"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_persistence_and_confirms() {
    let Some(backend) = Backend::rabbitmq("topology_persistence_and_confirms") else {
        return;
    };
    let Backend::RabbitMq(url) = &backend else {
        unreachable!()
    };
    let queue = unique_queue("topo");
    let broker = backend.connect(&[&queue]).await;
    assert!(broker.describe().starts_with("RabbitMQ amqp://"));
    assert!(
        !broker.describe().contains(":guest@"),
        "{}",
        broker.describe()
    );

    // Durable queues, and the main queue dead-letters into `spindle.dead`.
    let vhost = url.parse::<lapin::uri::AMQPUri>().expect("url").vhost;
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", &vhost])
        .args(["name", "durable", "arguments", "--formatter", "json"])
        .output()
        .await
        .expect("rabbitmqctl");
    let queues: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let find = |name: String| {
        queues
            .iter()
            .find(|q| q["name"] == name.as_str())
            .unwrap_or_else(|| panic!("queue {name} declared"))
            .clone()
    };
    for name in [
        queue.clone(),
        format!("{queue}.retry"),
        format!("{queue}.dead"),
    ] {
        assert_eq!(find(name.clone())["durable"], true, "{name} durable");
    }
    let main_args = find(queue.clone())["arguments"].to_string();
    assert!(main_args.contains("spindle.dead"), "{main_args}");
    let retry_args = find(format!("{queue}.retry"))["arguments"].to_string();
    assert!(retry_args.contains(&queue), "{retry_args}");

    // Persistent, with an id and the attempt header.
    broker.publish(&queue, b"hello").await.expect("publish");
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = conn.create_channel().await.expect("channel");
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the message is there");
    let props = &got.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2));
    assert!(props.message_id().is_some());
    assert_eq!(
        header_u32(props.headers().as_ref(), ATTEMPT_HEADER),
        Some(1)
    );
    assert_eq!(got.delivery.data, b"hello");

    // A publish nobody can receive is an error, not a silent drop.
    let nowhere = rabbit(&broker)
        .publish_confirmed(
            "",
            &unique_queue("missing"),
            "missing",
            b"x",
            message_properties("id", 1, None),
        )
        .await;
    assert!(
        matches!(nowhere, Err(QueueError::Unroutable { .. })),
        "{nowhere:?}"
    );
    let _ = conn.close(200, "done".into()).await;
    broker.delete_queue(&queue).await.expect("cleanup");
}

/// Publishes steadily while a consumer acks, force-closes the connection
/// three times from the broker's side, and checks that publishing never
/// failed, consuming resumed after each close, and every message arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_without_losing_messages() {
    let Some(backend) = Backend::rabbitmq("reconnects_without_losing_messages") else {
        return;
    };
    under_disruption(&backend, "reconnect", |name| async move {
        assert_eq!(
            force_close(&name).await,
            1,
            "the close found our connection"
        );
    })
    .await;
}

/// The broker restarts (`rabbitmqctl stop_app` / `start_app`) three times
/// under load: no publish fails, nothing is lost. On a node of the test's
/// own, so no other test loses its broker meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart() {
    if Backend::rabbitmq("survives_a_broker_restart").is_none() {
        return;
    }
    let node = Arc::new(
        tokio::task::spawn_blocking(|| rabbit_node::RabbitNode::start("restart"))
            .await
            .expect("start task")
            .expect("a private RabbitMQ node"),
    );
    let backend = Backend::RabbitMq(node.url());
    under_disruption(&backend, "brokerrestart", |_| {
        let node = node.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                node.stop_app().expect("stop_app");
                node.start_app().expect("start_app");
            })
            .await
            .expect("restart task");
        }
    })
    .await;
}

/// Publishes steadily while a consumer acks, runs `disrupt` three times
/// (each time waiting for consuming to resume), then checks that no publish
/// failed and every published message was consumed.
async fn under_disruption<F, Fut>(backend: &Backend, label: &str, disrupt: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let queue = unique_queue(label);
    let broker = backend.connect(&[&queue]).await;
    let name = rabbit(&broker).connection_name().to_string();
    let seen = Seen::default();
    let s = seen.clone();
    let opts = ConsumeOptions {
        prefetch: 8,
        concurrency: 4,
        ..ConsumeOptions::default()
    };
    let consumer = broker
        .consume(
            &queue,
            opts,
            handler(move |d| {
                let s = s.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    s.push(d);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("consume");

    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (broker, queue, stop) = (broker.clone(), queue.clone(), stop_publishing.clone());
        async move {
            let mut published = 0usize;
            while !stop.load(Ordering::SeqCst) {
                broker
                    .publish(&queue, published.to_string().as_bytes())
                    .await
                    .map_err(|e| format!("message {published}: {e}"))?;
                published += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<usize, String>(published)
        }
    });

    seen.wait_until("30 consumed", |d| d.len() >= 30).await;
    let rounds = 3;
    for round in 0..rounds {
        disrupt(name.clone()).await;
        let before = seen.snapshot().len();
        seen.wait_until(
            &format!("consuming resumed after disruption {round}"),
            |d| d.len() >= before + 30,
        )
        .await;
    }
    stop_publishing.store(true, Ordering::SeqCst);
    let published = publisher
        .await
        .expect("publisher task")
        .expect("every publish confirmed despite the disruptions");
    let all = seen
        .wait_until("every published message", |d| {
            let distinct: std::collections::HashSet<&[u8]> =
                d.iter().map(|d| d.body.as_slice()).collect();
            distinct.len() >= published
        })
        .await;
    consumer.stop().await;

    let mut counts: HashMap<usize, usize> = HashMap::new();
    for d in &all {
        let n: usize = String::from_utf8_lossy(&d.body).parse().expect("number");
        *counts.entry(n).or_default() += 1;
    }
    let missing: Vec<usize> = (0..published).filter(|n| !counts.contains_key(n)).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{label}: {published} published, {rounds} disruptions, {} consumed \
         ({duplicates} redelivered), {} missing",
        counts.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert_eq!(counts.len(), published, "nothing unexpected consumed");
    broker.delete_queue(&queue).await.expect("cleanup");
}

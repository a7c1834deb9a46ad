//! The two queue backends behind one face, a recorder of deliveries, and
//! forcing a RabbitMQ connection closed with `rabbitmqctl`.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use spindle_platform::capabilities::queue::{
    Broker, ConsumeOptions, Consumer, Delivery, Handler, Outcome,
};

/// How long a test waits for something it expects.
const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) enum Backend {
    Embedded(tempfile::TempDir),
    RabbitMq(String),
}

impl Backend {
    /// The embedded queue in a directory of its own; runs everywhere.
    pub(crate) fn embedded() -> Backend {
        init_tracing();
        Backend::Embedded(tempfile::tempdir().expect("temp dir"))
    }

    /// `None` (after saying so) when `SPINDLE_TEST_AMQP_URL` is not set.
    pub(crate) fn rabbitmq(test: &str) -> Option<Backend> {
        init_tracing();
        match std::env::var("SPINDLE_TEST_AMQP_URL") {
            Ok(url) if !url.is_empty() => Some(Backend::RabbitMq(url)),
            _ => {
                eprintln!(
                    "SPINDLE_TEST_AMQP_URL is not set: the RabbitMQ variant of `{test}` did not run"
                );
                None
            }
        }
    }

    pub(crate) async fn connect(&self, queues: &[&str]) -> Broker {
        let connected = match self {
            Backend::Embedded(dir) => Broker::connect(None, dir.path(), queues).await,
            Backend::RabbitMq(url) => {
                Broker::connect(Some(url), Path::new("/nonexistent"), queues).await
            }
        };
        connected.expect("connect")
    }

    /// Takes the ground from under a consumer whose handler is mid-way:
    /// on disk, the process "dies" (the consumer is killed, the broker
    /// dropped) and a new one starts on the same directory; on RabbitMQ,
    /// the broker force-closes the connection and the consumer recovers.
    pub(crate) async fn interrupt(
        &self,
        broker: Broker,
        consumer: Consumer,
        queue: &str,
        opts: ConsumeOptions,
        handler: Handler,
    ) -> (Broker, Consumer) {
        match self {
            Backend::Embedded(_) => {
                consumer.abort().await;
                drop(broker);
                let broker = self.connect(&[queue]).await;
                let consumer = broker
                    .consume(queue, opts, handler)
                    .await
                    .expect("consume after restart");
                (broker, consumer)
            }
            Backend::RabbitMq(_) => {
                let name = broker
                    .connection_name()
                    .expect("a RabbitMQ broker names its connection");
                let closed = force_close(name).await;
                assert_eq!(closed, 1, "one connection to force-close");
                (broker, consumer)
            }
        }
    }
}

/// Closes, from the broker's side, every connection whose client
/// properties carry `connection_name`; returns how many it closed.
pub(crate) async fn force_close(connection_name: &str) -> usize {
    let rabbitmqctl = |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let out = tokio::process::Command::new("rabbitmqctl")
                .args(&args)
                .output()
                .await
                .expect(
                    "running rabbitmqctl (the reconnection tests need it, \
                     as root, on the broker's machine)",
                );
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    };
    // The JSON formatter prints pids in a form close_connection rejects, so
    // read the plain listing: one "pid<TAB>client properties" line each.
    let listing = rabbitmqctl(vec![
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await;
    let listing = String::from_utf8_lossy(&listing);
    let ours: Vec<String> = listing
        .lines()
        .filter(|line| line.contains(connection_name))
        .filter_map(|line| line.split('\t').next().map(String::from))
        .collect();
    for pid in &ours {
        rabbitmqctl(vec!["close_connection", pid, "spindle test: forced close"]).await;
    }
    tracing::info!(
        connection_name,
        closed = ours.len(),
        "forced connections closed"
    );
    ours.len()
}

/// A queue name no other test run uses.
pub(crate) fn unique_queue(name: &str) -> String {
    format!(
        "spindle-test-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub(crate) fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |d| f(d).boxed())
}

/// Deliveries a handler saw, in order.
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<Mutex<Vec<Delivery>>>);

impl Seen {
    pub(crate) fn push(&self, delivery: Delivery) {
        self.0.lock().expect("lock").push(delivery);
    }

    pub(crate) fn snapshot(&self) -> Vec<Delivery> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for what was seen, or panics after a while.
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let seen = self.snapshot();
            if done(&seen) {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; seen: {:?}",
                seen.iter()
                    .map(|d| (String::from_utf8_lossy(&d.body).into_owned(), d.attempt))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("spindle_platform=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

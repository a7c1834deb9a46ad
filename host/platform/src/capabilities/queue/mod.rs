//! Queues: publishing with broker confirms and consuming with manual acks,
//! on RabbitMQ (`lapin`) or an embedded durable queue on local disk.
//!
//! One API serves both the queue capability (components publish) and the
//! `[[trigger.amqp]]` trigger (consume → invoke a component → ack, retry or
//! dead-letter). [`Broker::connect`] picks the backend: RabbitMQ when the
//! runtime config has `[amqp] url`, else a SQLite file in
//! `<state-dir>/queue/`. Both backends keep the same promises, and the same
//! behavioural tests (`tests.rs`) run against each:
//!
//! - **Durable, at-least-once.** [`Broker::publish`] returns only once the
//!   message is safe (RabbitMQ publisher confirm / SQLite commit with
//!   `synchronous=FULL`). A message leaves its queue only when its handler
//!   finished; a handler that never finishes (crash, lost connection) means
//!   the message is delivered again. Handlers must therefore be idempotent.
//! - **Bounded retries.** A handler answers [`Outcome::Retry`]; the message
//!   comes back after `retry_delay` with [`Delivery::attempt`] one higher.
//!   When the failed attempt was number `max_attempts`, or the handler
//!   answered [`Outcome::DeadLetter`], the message moves to the queue's
//!   dead-letter queue (`<queue>.dead`) with the reason, and stops looping.
//!   A crash while handling does not count as an attempt on either backend:
//!   attempts count handler answers (a guest trap is an answer: `Retry`).
//! - **Bounded work.** At most `min(prefetch, concurrency)` handlers run at
//!   once per consumer; on RabbitMQ `prefetch` also bounds what the broker
//!   pushes ahead (`basic.qos`).
//!
//! The retry/dead-letter design is described in `rabbitmq.rs`; the embedded
//! store in `embedded_store.rs`; broadcasts to every host (deploy events)
//! in `broadcast.rs`.

mod broadcast;
pub mod component;
mod consumer;
mod embedded;
mod embedded_store;
mod rabbitmq;
mod rabbitmq_consumer;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_embedded;
#[cfg(test)]
mod tests_rabbitmq;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use broadcast::{BROADCAST_DEPLOYS, Signal, Subscription};
pub use consumer::Consumer;

/// One message handed to a [`Handler`].
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue it came from.
    pub queue: String,
    pub body: Vec<u8>,
    /// 1 for the first delivery; one more after each [`Outcome::Retry`].
    pub attempt: u32,
    /// Stable across retries and redeliveries, so handlers can deduplicate.
    pub message_id: String,
}

/// What a handler made of a [`Delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the message is removed from the queue.
    Ack,
    /// Failed, maybe transiently: try again after `retry_delay`, or
    /// dead-letter it if this was attempt `max_attempts`.
    Retry(String),
    /// Failed for good (e.g. a malformed message): dead-letter it now.
    DeadLetter(String),
}

/// How a consumer takes messages.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Messages the broker may hand over before they are acked.
    pub prefetch: u16,
    /// Handlers running at once (effective bound: `min(prefetch, concurrency)`).
    pub concurrency: usize,
    /// Attempts before a message that keeps failing is dead-lettered.
    pub max_attempts: u32,
    /// How long a retried message waits before it is delivered again.
    pub retry_delay: Duration,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 8,
            concurrency: 4,
            max_attempts: 5,
            retry_delay: Duration::from_secs(5),
        }
    }
}

impl ConsumeOptions {
    fn validate(&self) -> Result<(), QueueError> {
        if self.prefetch == 0 || self.concurrency == 0 || self.max_attempts == 0 {
            return Err(QueueError::InvalidOptions(format!(
                "prefetch, concurrency and max_attempts must be at least 1 (got {self:?})"
            )));
        }
        Ok(())
    }

    /// Handlers that may run at once: a handler needs a delivery, and the
    /// broker hands out at most `prefetch` of them.
    fn slots(&self) -> usize {
        self.concurrency.min(usize::from(self.prefetch))
    }
}

/// Called once per delivery; the message is settled by what it returns.
pub type Handler = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// A message in a dead-letter queue, as [`Broker::dead_letters`] shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub message_id: String,
    /// The attempt that failed last.
    pub attempt: u32,
    /// Why it was dead-lettered (the handler's message).
    pub reason: String,
}

/// Errors from either backend, each saying what was being done.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot connect to RabbitMQ at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("RabbitMQ at {target}: {context}: {source}")]
    Amqp {
        target: String,
        context: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error(
        "RabbitMQ did not confirm the message for queue `{queue}` within {waited:?} \
         (last error: {last_error})"
    )]
    Unavailable {
        queue: String,
        waited: Duration,
        last_error: String,
    },
    #[error("RabbitMQ refused (nacked) the message for queue `{queue}`")]
    Nacked { queue: String },
    #[error("RabbitMQ has no queue `{queue}` to route the message to")]
    Unroutable { queue: String },
    #[error("queue `{queue}` is not declared (declared: {declared})")]
    UnknownQueue { queue: String, declared: String },
    #[error("embedded queue in {dir}: {context}: {source}")]
    Store {
        dir: String,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("embedded queue in {dir}: {context}: {source}")]
    Io {
        dir: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid consume options: {0}")]
    InvalidOptions(String),
}

impl QueueError {
    /// Whether the queue's storage is full (the embedded queue's disk):
    /// nothing was stored, and retrying only helps once there is room.
    pub fn is_storage_full(&self) -> bool {
        match self {
            QueueError::Store { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            QueueError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// A connected queue backend. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Broker {
    RabbitMq(Arc<rabbitmq::RabbitMq>),
    Embedded(Arc<embedded::Embedded>),
}

impl Broker {
    /// Connects to RabbitMQ at `amqp_url`, or opens the embedded queue in
    /// `<state_dir>/queue/` when there is none, and declares `queues` (each
    /// with its dead-letter queue). Publishing to any other queue fails.
    pub async fn connect(
        amqp_url: Option<&str>,
        state_dir: &Path,
        queues: &[&str],
    ) -> Result<Self, QueueError> {
        let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        match amqp_url {
            Some(url) => Ok(Broker::RabbitMq(Arc::new(
                rabbitmq::RabbitMq::connect(url, queues).await?,
            ))),
            None => Ok(Broker::Embedded(Arc::new(
                embedded::Embedded::open(&state_dir.join("queue"), queues).await?,
            ))),
        }
    }

    /// Publishes a persistent message; returns once the broker confirmed it
    /// (RabbitMQ) or it is on disk (embedded). On RabbitMQ a lost connection
    /// is retried for a while, so a confirmed publish may rarely be stored
    /// twice (at-least-once).
    pub async fn publish(&self, queue: &str, body: &[u8]) -> Result<(), QueueError> {
        match self {
            Broker::RabbitMq(b) => b.publish(queue, body).await,
            Broker::Embedded(b) => b.publish(queue, body).await,
        }
    }

    /// Starts consuming `queue`; each delivery goes to `handler`, and what it
    /// returns settles the message. Runs until [`Consumer::stop`].
    pub async fn consume(
        &self,
        queue: &str,
        opts: ConsumeOptions,
        handler: Handler,
    ) -> Result<Consumer, QueueError> {
        opts.validate()?;
        match self {
            Broker::RabbitMq(b) => b.consume(queue, opts, handler).await,
            Broker::Embedded(b) => b.consume(queue, opts, handler).await,
        }
    }

    /// Sends `body` to every subscriber of `topic` (every host); see
    /// `broadcast.rs`.
    pub async fn broadcast(&self, topic: &str, body: &[u8]) -> Result<(), QueueError> {
        match self {
            Broker::RabbitMq(b) => broadcast::publish(b, topic, body).await,
            Broker::Embedded(_) => Ok(()),
        }
    }

    /// Receives what is broadcast on `topic` from now on.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, QueueError> {
        match self {
            Broker::RabbitMq(b) => broadcast::subscribe(b.clone(), topic).await,
            Broker::Embedded(_) => Ok(Subscription::none()),
        }
    }

    /// Readiness: the broker answers (reconnecting first if needed).
    pub async fn ping(&self) -> Result<(), QueueError> {
        match self {
            Broker::RabbitMq(b) => b.ping().await,
            Broker::Embedded(b) => b.ping().await,
        }
    }

    /// Up to `limit` messages of `queue`'s dead-letter queue, oldest first,
    /// left in place.
    pub async fn dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        match self {
            Broker::RabbitMq(b) => b.dead_letters(queue, limit).await,
            Broker::Embedded(b) => b.dead_letters(queue, limit).await,
        }
    }

    /// For logs: where the queues are, without the password.
    pub fn describe(&self) -> String {
        match self {
            Broker::RabbitMq(b) => format!("RabbitMQ {}", b.target()),
            Broker::Embedded(b) => format!("embedded queue in {}", b.dir().display()),
        }
    }

    /// Removes `queue`, its retry and dead-letter queues and their messages.
    #[cfg(test)]
    pub(crate) async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        match self {
            Broker::RabbitMq(b) => b.delete_queue(queue).await,
            Broker::Embedded(b) => b.delete_queue(queue).await,
        }
    }
}

/// What to do with a message once its handler answered.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Deliver again as attempt `next_attempt` after the retry delay.
    Retry {
        next_attempt: u32,
        reason: String,
    },
    Dead {
        reason: String,
    },
}

impl Settle {
    fn decide(outcome: Outcome, attempt: u32, max_attempts: u32) -> Settle {
        match outcome {
            Outcome::Ack => Settle::Ack,
            Outcome::Retry(reason) if attempt >= max_attempts => Settle::Dead {
                reason: format!("gave up after {attempt} attempts: {reason}"),
            },
            Outcome::Retry(reason) => Settle::Retry {
                next_attempt: attempt + 1,
                reason,
            },
            Outcome::DeadLetter(reason) => Settle::Dead { reason },
        }
    }
}

/// A new message id: unique, and short enough for AMQP's `message-id`.
fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn dead_queue_name(queue: &str) -> String {
    format!("{queue}.dead")
}

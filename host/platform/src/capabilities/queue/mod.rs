//! Queues: publishing with broker confirms and consuming with manual acks,
//! on RabbitMQ (`lapin`) or an embedded durable queue on local disk.
//!
//! One API serves both the queue capability (components publish) and the
//! `[[trigger.amqp]]` trigger (consume → invoke a component → ack, retry or
//! dead-letter). [`Broker::connect`] picks the backend: RabbitMQ when the
//! runtime config has `[amqp] url`, else a SQLite file in
//! `<state-dir>/queue/`. Both backends keep the same promises, and the same
//! behavioural tests (`host/platform/tests/conformance/queue/`) run against
//! each:
//!
//! - **Durable, at-least-once.** [`Broker::publish`] returns only once the
//!   message is safe (RabbitMQ publisher confirm / SQLite commit with
//!   `synchronous=FULL`). A message leaves its queue only when its handler
//!   finished; a handler that never finishes (crash, lost connection) means
//!   the message is delivered again. Handlers must therefore be idempotent.
//! - **Every delivery counts.** [`Delivery::attempt`] is the number of this
//!   delivery, however the earlier ones ended: an answer, a crash, an OOM
//!   kill or a lost connection. The embedded store counts when it hands the
//!   message out; RabbitMQ marks a message that comes back unanswered
//!   `redelivered`, and the consumer then republishes it with the count one
//!   higher (through the retry delay) before anything runs it, so a message
//!   that kills its handler is dead-lettered after `max_attempts` like one
//!   that fails politely.
//! - **Retries back off.** A handler answers [`Outcome::Retry`]; the message
//!   comes back after `retry_delay · 2^(attempt-1)`, capped at
//!   `retry_delay_max`, with jitter (a random point in the upper half), so a
//!   backend blip does not exhaust the attempts and a crowd of failures does
//!   not return at one instant. [`Outcome::Defer`] puts a message back after
//!   `retry_delay` without counting the attempt (the job is someone else's
//!   right now).
//! - **Dead letters are final and bounded.** When the failed attempt was
//!   number `max_attempts`, or the handler answered [`Outcome::DeadLetter`],
//!   the message moves to `<queue>.dead` with the reason. The consumer's
//!   [`DeadLetterHook`] runs first (the convert worker marks the job
//!   `failed` there), and if it fails the move waits for the next delivery,
//!   so what a job says and where its message is never disagree. Each
//!   consumer trims its dead-letter queue to `dead_letters.max_count` and
//!   `dead_letters.max_age`; [`Broker::replay_dead_letters`] puts them back
//!   with the count reset and [`Delivery::replayed`] set.
//! - **Bounded work.** At most `min(prefetch, concurrency)` handlers run at
//!   once per consumer; on RabbitMQ `prefetch` also bounds what the broker
//!   pushes ahead (`basic.qos`).
//!
//! The retry/dead-letter design is described in `rabbitmq.rs`; the embedded
//! store in `embedded_store.rs`; what both consumers share in `consumer.rs`;
//! broadcasts to every host (deploy events) in `broadcast.rs`.

mod broadcast;
mod capability;
pub mod component;
mod consumer;
mod embedded;
mod embedded_store;
mod rabbitmq;
mod rabbitmq_consumer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::metrics::QueueMetrics;

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
    /// Put back from the dead letters by an operator: a handler that would
    /// skip a job it already gave up on should try it again.
    pub replayed: bool,
}

/// What a handler made of a [`Delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the message is removed from the queue.
    Ack,
    /// Failed, maybe transiently: try again after `retry_delay`, or
    /// dead-letter it if this was attempt `max_attempts`.
    Retry(String),
    /// Not now, and not a failure (e.g. another delivery of the same job is
    /// being handled): deliver again after `retry_delay`, without counting
    /// this attempt.
    Defer(String),
    /// Failed for good (e.g. a malformed message): dead-letter it now.
    DeadLetter(String),
}

/// Runs before a message is moved to the dead letters, with the reason; an
/// error postpones the move to the message's next delivery. For consumers
/// whose messages stand for state elsewhere (a job that must end `failed`).
#[derive(Clone)]
pub struct DeadLetterHook(pub Arc<DeadLetterFn>);

/// What a [`DeadLetterHook`] calls: the delivery and why it is given up.
pub type DeadLetterFn =
    dyn Fn(Delivery, String) -> BoxFuture<'static, Result<(), String>> + Send + Sync;

impl std::fmt::Debug for DeadLetterHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetterHook")
    }
}

/// How many dead letters a queue keeps: the oldest go first past either bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    pub max_count: u64,
    pub max_age: Duration,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            max_count: 10_000,
            max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// How a consumer takes messages.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Messages the broker may hand over before they are acked.
    pub prefetch: u16,
    /// Handlers running at once (effective bound: `min(prefetch, concurrency)`).
    pub concurrency: usize,
    /// Deliveries before a message that keeps failing is dead-lettered.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with every attempt.
    pub retry_delay: Duration,
    /// The longest wait between two attempts.
    pub retry_delay_max: Duration,
    /// The bounds of this queue's dead-letter queue.
    pub dead_letters: DeadLetterLimits,
    pub on_dead_letter: Option<DeadLetterHook>,
    /// Where deliveries and their outcomes are counted.
    pub metrics: Option<QueueMetrics>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 8,
            concurrency: 4,
            max_attempts: 5,
            retry_delay: Duration::from_secs(5),
            retry_delay_max: Duration::from_secs(300),
            dead_letters: DeadLetterLimits::default(),
            on_dead_letter: None,
            metrics: None,
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
        if self.retry_delay.is_zero() || self.retry_delay_max < self.retry_delay {
            return Err(QueueError::InvalidOptions(format!(
                "retry_delay must be above 0 and at most retry_delay_max (got {:?} and {:?})",
                self.retry_delay, self.retry_delay_max
            )));
        }
        if self.dead_letters.max_count == 0 || self.dead_letters.max_age.is_zero() {
            return Err(QueueError::InvalidOptions(
                "dead letters must be kept: their count and age bounds must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// Handlers that may run at once: a handler needs a delivery, and the
    /// broker hands out at most `prefetch` of them.
    fn slots(&self) -> usize {
        self.concurrency.min(usize::from(self.prefetch))
    }

    /// The backoff step after failed attempt `attempt` (no jitter): the
    /// RabbitMQ backend keeps one retry queue per step.
    fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.retry_delay
            .saturating_mul(1u32 << doublings)
            .min(self.retry_delay_max)
    }
}

/// How often a consumer trims its dead-letter queue to its bounds.
const DEAD_LETTER_TRIM_EVERY: Duration = Duration::from_secs(60);

/// A random point in the upper half of `step`: far enough to back off,
/// spread enough that failures from one moment do not return together.
fn jitter(step: Duration) -> Duration {
    let half = step / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Called once per delivery; the message is settled by what it returns.
pub type Handler = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// A native queue handler (the convert worker) and what it needs done
/// before one of its messages is dead-lettered.
#[derive(Clone)]
pub struct Worker {
    pub handler: Handler,
    pub on_dead_letter: Option<DeadLetterHook>,
}

/// A message in a dead-letter queue, as [`Broker::dead_letters`] shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub message_id: String,
    /// The attempt that failed last.
    pub attempt: u32,
    /// Why it was dead-lettered (the handler's message).
    pub reason: String,
    /// When, in Unix milliseconds (unknown for what the broker itself
    /// dead-lettered).
    pub dead_at_ms: Option<u64>,
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
            Broker::RabbitMq(b) => rabbitmq_consumer::start(b.clone(), queue, opts, handler).await,
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

    /// Moves up to `limit` of `queue`'s dead letters, oldest first, back to
    /// the queue, with the attempt count reset and [`Delivery::replayed`]
    /// set; returns how many moved. At-least-once: a crash mid-way can leave
    /// a replayed message in both places.
    pub async fn replay_dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<usize, QueueError> {
        match self {
            Broker::RabbitMq(b) => b.replay_dead_letters(queue, limit).await,
            Broker::Embedded(b) => b.replay_dead_letters(queue, limit).await,
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

    /// The name this broker's RabbitMQ connection carries in its client
    /// properties (`spindle-<pid>-<random>`), as `rabbitmqctl
    /// list_connections` shows it, so an operator or a test can find that
    /// connection (or force it closed); `None` for the embedded queue.
    pub fn connection_name(&self) -> Option<&str> {
        match self {
            Broker::RabbitMq(b) => Some(b.connection_name()),
            Broker::Embedded(_) => None,
        }
    }

    /// Removes `queue`, its retry and dead-letter queues and their messages
    /// (on RabbitMQ: the retry step queues this process declared). For tests
    /// and tools that make throwaway queues; the platform never deletes one.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
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
    /// Deliver again after `delay` (a jittered point of the backoff
    /// `step`), as delivery number `next_attempt`.
    Retry {
        next_attempt: u32,
        step: Duration,
        delay: Duration,
        reason: String,
    },
    Dead {
        reason: String,
    },
}

impl Settle {
    fn decide(outcome: Outcome, attempt: u32, opts: &ConsumeOptions) -> Settle {
        match outcome {
            Outcome::Ack => Settle::Ack,
            Outcome::Retry(reason) if attempt >= opts.max_attempts => Settle::Dead {
                reason: format!("gave up after {attempt} attempts: {reason}"),
            },
            Outcome::Retry(reason) => Settle::retry(attempt + 1, opts.backoff(attempt), reason),
            Outcome::Defer(reason) => Settle::retry(attempt, opts.retry_delay, reason),
            Outcome::DeadLetter(reason) => Settle::Dead { reason },
        }
    }

    fn retry(next_attempt: u32, step: Duration, reason: String) -> Settle {
        Settle::Retry {
            next_attempt,
            step,
            delay: jitter(step),
            reason,
        }
    }

    /// A delivery past the limit: the earlier ones never answered (the
    /// handler crashed, was killed or lost its connection).
    fn over_limit(attempt: u32, max_attempts: u32) -> Option<Settle> {
        (attempt > max_attempts).then(|| Settle::Dead {
            reason: format!(
                "gave up after {max_attempts} deliveries: the last ones ended without an answer \
                 (the handler crashed, was killed or lost its connection)"
            ),
        })
    }
}

/// A new message id: unique, and short enough for AMQP's `message-id`.
fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn dead_queue_name(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The settling rules and the backoff, which are private; what the backends
/// make of them is in `host/platform/tests/conformance/queue/`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_settle_as_documented() {
        let opts = ConsumeOptions {
            prefetch: 1,
            concurrency: 1,
            max_attempts: 3,
            retry_delay: Duration::from_millis(200),
            retry_delay_max: Duration::from_millis(400),
            ..ConsumeOptions::default()
        };
        assert_eq!(Settle::decide(Outcome::Ack, 1, &opts), Settle::Ack);
        let Settle::Retry {
            next_attempt,
            step,
            delay,
            reason,
        } = Settle::decide(Outcome::Retry("x".into()), 2, &opts)
        else {
            panic!("a retry before the last attempt is retried");
        };
        assert_eq!(
            (next_attempt, step, reason.as_str()),
            (3, Duration::from_millis(400), "x")
        );
        assert!(
            delay >= step / 2 && delay <= step,
            "jitter in the upper half: {delay:?}"
        );
        assert!(matches!(
            Settle::decide(Outcome::Retry("x".into()), 3, &opts),
            Settle::Dead { reason } if reason == "gave up after 3 attempts: x"
        ));
        assert!(matches!(
            Settle::decide(Outcome::Defer("busy".into()), 3, &opts),
            Settle::Retry { next_attempt: 3, step, .. } if step == opts.retry_delay
        ));
        assert_eq!(
            Settle::decide(Outcome::DeadLetter("bad".into()), 1, &opts),
            Settle::Dead {
                reason: "bad".into()
            }
        );
        assert!(Settle::over_limit(3, 3).is_none());
        assert!(matches!(
            Settle::over_limit(4, 3),
            Some(Settle::Dead { reason }) if reason.contains("gave up after 3 deliveries")
        ));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let opts = ConsumeOptions {
            retry_delay: Duration::from_secs(5),
            retry_delay_max: Duration::from_secs(30),
            ..ConsumeOptions::default()
        };
        let steps: Vec<u64> = (1..=6).map(|a| opts.backoff(a).as_secs()).collect();
        assert_eq!(steps, [5, 10, 20, 30, 30, 30]);
        assert_eq!(
            opts.backoff(u32::MAX),
            Duration::from_secs(30),
            "no overflow"
        );
    }
}

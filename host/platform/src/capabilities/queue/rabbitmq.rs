//! The RabbitMQ backend (`lapin`): connection, topology, confirmed publishing.
//! The consumer loop is in `rabbitmq_consumer.rs`, which builds on this
//! module (never the other way round).
//!
//! ## Topology (declared on every (re)connect; declarations are idempotent)
//!
//! For each queue `Q`: durable queues `Q`, `Q.retry` and `Q.dead`; one
//! durable direct exchange `spindle.dead` with `Q.dead` bound under key `Q`.
//! `Q` names `spindle.dead` as its dead-letter exchange, so anything the
//! broker itself dead-letters from `Q` (a reject, a TTL or length limit set
//! by an operator) lands in `Q.dead` too.
//!
//! ## Retries and dead letters: republish, then ack
//!
//! A failed attempt is published (persistent, confirmed) to a retry queue
//! `Q.retry.<step>ms` with the header `x-spindle-attempt` = next attempt and
//! a per-message `expiration` (the jittered delay, at most `<step>`). Each
//! backoff step has its own retry queue, declared when first used, with no
//! consumer: it dead-letters expired messages back to `Q` through the
//! default exchange. Per-message TTLs expire only at the head of a queue;
//! within one step a message waits at most `<step>`, and a long step never
//! holds up a short one. Only after the broker confirmed that copy is the
//! original acked. A message that failed its last attempt, or whose handler
//! said [`Outcome::DeadLetter`], is published to `spindle.dead` (→ `Q.dead`)
//! with `x-spindle-error` and `x-spindle-dead-at`, then acked.
//!
//! ## Counting every delivery on classic queues
//!
//! A delivery that never answered (the process crashed or was OOM-killed,
//! its connection dropped, or the consumer stopped before starting it)
//! comes back with the `redelivered` flag and the same attempt header. The
//! consumer does not run such a message: it republishes it with the count
//! one higher through the retry queue of that attempt's step, then acks it.
//! So the count is stored in the broker before the handler can crash again,
//! and past `max_attempts` the message is dead-lettered without running.
//! (Quorum queues count deliveries themselves, but an existing classic
//! queue cannot change type in place; this works on both.)
//!
//! Why this, rather than `nack(requeue=false)` and counting `x-death`:
//! - the attempt count is our own header, so it does not depend on how a
//!   RabbitMQ version maintains `x-death` (changed in 3.13/4.x), and it
//!   behaves exactly like the embedded backend's `attempt` column;
//! - the delay is held by the broker, not by a sleeping handler that would
//!   occupy a prefetch slot, and it survives a restart of the host;
//! - the dead letter carries the handler's reason for whoever inspects it;
//! - confirm-before-ack means a crash in between gives a duplicate, never a
//!   loss (at-least-once, as everywhere else).
//!
//! `Q.retry` (one queue, from before backoff steps) is still declared, so
//! messages waiting there when a host is upgraded still come back.
//!
//! ## Reconnection
//!
//! One connection per [`RabbitMq`], shared by the publisher channel (confirm
//! mode) and each consumer's channel, and replaced when it dies: publishing
//! retries with backoff until `PUBLISH_PATIENCE` passes, and consumers
//! resubscribe (see `rabbitmq_consumer.rs`). Unacked deliveries of a dead
//! connection are requeued by the broker, so nothing is lost; a publish
//! whose confirm was lost with the connection is sent again, which can
//! duplicate it. This is our own loop rather than lapin's experimental
//! `enable_auto_recover`, to keep what happens on a drop explicit and tested.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{DeadLetter, DeadLetterLimits, QueueError, dead_queue_name, new_message_id};
use crate::clock::now_ms;
use crate::urls::redact_url;

/// The exchange every `Q.dead` is bound to.
pub(super) const DEAD_EXCHANGE: &str = "spindle.dead";
/// The attempt a message is on (1-based), kept across retries.
pub(super) const ATTEMPT_HEADER: &str = "x-spindle-attempt";
/// Why a message was retried or dead-lettered.
pub(super) const ERROR_HEADER: &str = "x-spindle-error";
/// When a message was dead-lettered, in Unix milliseconds.
pub(super) const DEAD_AT_HEADER: &str = "x-spindle-dead-at";
/// Set on a message an operator replayed from the dead letters.
pub(super) const REPLAYED_HEADER: &str = "x-spindle-replayed";
/// How long a publish keeps trying through reconnections before it fails.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP persistent delivery mode.
pub(super) const PERSISTENT: u8 = 2;

pub(super) fn retry_queue_name(queue: &str) -> String {
    format!("{queue}.retry")
}

/// The retry queue of one backoff step.
pub(super) fn retry_step_queue(queue: &str, step: Duration) -> String {
    format!("{queue}.retry.{}ms", step.as_millis())
}

pub struct RabbitMq {
    url: String,
    /// The URL without its password, for logs and errors.
    target: String,
    /// Sent as `connection_name`, so operators (and tests) can find it.
    connection_name: String,
    queues: Vec<String>,
    live: Mutex<Option<Live>>,
    /// Retry step queues declared by this process, for `delete_queue`.
    steps: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// The current connection and its confirm-mode publishing channel.
struct Live {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl RabbitMq {
    pub(super) async fn connect(url: &str, queues: Vec<String>) -> Result<RabbitMq, QueueError> {
        let target = redact_url(url);
        for queue in &queues {
            // A retry step queue has the longest name; AMQP allows 255 bytes.
            let longest = retry_step_queue(queue, Duration::MAX);
            if ShortString::try_new(longest).is_err() || queue.is_empty() {
                return Err(QueueError::UnknownQueue {
                    queue: queue.clone(),
                    declared: "queue names must be 1 to 200 bytes long".into(),
                });
            }
        }
        let broker = RabbitMq {
            url: url.to_string(),
            connection_name: format!("spindle-{}-{}", std::process::id(), &new_message_id()[..8]),
            target,
            queues,
            live: Mutex::new(None),
            steps: Default::default(),
        };
        // A broker that is not up yet (a cluster starting in any order) is
        // not fatal: publishing fails until it is, consumers subscribe once
        // it answers, and readiness reports it meanwhile.
        match broker.live().await {
            Ok(_) => {
                tracing::info!(target = %broker.target, queues = ?broker.queues, "connected to RabbitMQ");
            }
            Err(e @ QueueError::Connect { .. }) => {
                tracing::warn!(
                    target = %broker.target,
                    "RabbitMQ is not reachable yet; publishing fails and consumers wait until it is: {e}"
                );
            }
            Err(e) => return Err(e),
        }
        Ok(broker)
    }

    pub(super) fn target(&self) -> &str {
        &self.target
    }

    pub(super) fn connection_name(&self) -> &str {
        &self.connection_name
    }

    pub(super) fn amqp_err(&self, context: &str) -> impl FnOnce(lapin::Error) -> QueueError {
        let target = self.target.clone();
        let context = context.to_string();
        move |source| QueueError::Amqp {
            target,
            context,
            source: Box::new(source),
        }
    }

    pub(super) fn check_declared(&self, queue: &str) -> Result<(), QueueError> {
        if self.queues.iter().any(|q| q == queue) {
            return Ok(());
        }
        Err(QueueError::UnknownQueue {
            queue: queue.to_string(),
            declared: self.queues.join(", "),
        })
    }

    /// The live connection and publisher channel, reconnecting (and
    /// redeclaring the topology) when the connection died.
    async fn live(&self) -> Result<(Arc<Connection>, Channel), QueueError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_mut()
            && l.connection.status().connected()
        {
            if !l.publisher.status().connected() {
                // A channel-level error closed only the channel.
                l.publisher = self.publisher_channel(&l.connection).await?;
            }
            return Ok((l.connection.clone(), l.publisher.clone()));
        }
        if live.take().is_some() {
            tracing::warn!(target = %self.target, "the RabbitMQ connection was lost; reconnecting");
        }
        let connection = Arc::new(self.open_connection().await?);
        self.declare_topology(&connection).await?;
        let publisher = self.publisher_channel(&connection).await?;
        *live = Some(Live {
            connection: connection.clone(),
            publisher: publisher.clone(),
        });
        Ok((connection, publisher))
    }

    async fn open_connection(&self) -> Result<Connection, QueueError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(self.connection_name.as_str()));
        let connecting = Connection::connect(&self.url, props);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(source)) => Err(QueueError::Connect {
                target: self.target.clone(),
                source: Box::new(source),
            }),
            Err(_) => Err(QueueError::Connect {
                target: self.target.clone(),
                source: Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            }),
        }
    }

    async fn publisher_channel(&self, connection: &Connection) -> Result<Channel, QueueError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(self.amqp_err("cannot open the publishing channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(self.amqp_err("cannot enable publisher confirms"))?;
        Ok(channel)
    }

    async fn declare_topology(&self, connection: &Connection) -> Result<(), QueueError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(self.amqp_err("cannot open a channel to declare queues"))?;
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                DEAD_EXCHANGE.into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(self.amqp_err("cannot declare the dead-letter exchange"))?;
        for queue in &self.queues {
            self.declare(&channel, queue, dead_letter_args(DEAD_EXCHANGE, queue))
                .await?;
            self.declare(
                &channel,
                &retry_queue_name(queue),
                dead_letter_args("", queue),
            )
            .await?;
            let dead = dead_queue_name(queue);
            self.declare(&channel, &dead, FieldTable::default()).await?;
            channel
                .queue_bind(
                    dead.as_str().into(),
                    DEAD_EXCHANGE.into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(self.amqp_err(&format!("cannot bind `{dead}`")))?;
        }
        // Best effort: the channel is not needed any more.
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// Declares a durable queue (idempotent); returns its message count.
    async fn declare(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<u32, QueueError> {
        let context = format!(
            "cannot declare queue `{name}` (if it exists with other arguments, \
             delete it so spindle can declare it)"
        );
        channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
            .await
            .map(|q| q.message_count())
            .map_err(self.amqp_err(&context))
    }

    /// Declares the retry queue of `queue`'s backoff `step` and returns its
    /// name; declared on every use, so one deleted by an operator comes back.
    pub(super) async fn declare_retry_step(
        &self,
        queue: &str,
        step: Duration,
    ) -> Result<String, QueueError> {
        let name = retry_step_queue(queue, step);
        let (_, channel) = self.live().await?;
        self.declare(&channel, &name, dead_letter_args("", queue))
            .await?;
        self.steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        Ok(name)
    }

    pub(super) async fn publish(&self, queue: &str, body: &[u8]) -> Result<(), QueueError> {
        self.check_declared(queue)?;
        let props = message_properties(&new_message_id(), 1, None);
        self.publish_confirmed("", queue, queue, body, props)
            .await?;
        tracing::debug!(queue, "published to RabbitMQ");
        Ok(())
    }

    /// Publishes and waits for the broker's confirm, retrying through lost
    /// connections for up to `PUBLISH_PATIENCE`. `queue` names the logical
    /// queue for errors.
    pub(super) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), QueueError> {
        let deadline = Instant::now() + PUBLISH_PATIENCE;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let (_, channel) = self.live().await?;
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        options,
                        body,
                        props.clone(),
                    )
                    .await
                    .map_err(self.amqp_err("publish failed"))?
                    .await
                    .map_err(self.amqp_err("publish was not confirmed"))?;
                Ok::<_, QueueError>(confirm)
            };
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                    return Err(QueueError::Unroutable {
                        queue: queue.to_string(),
                    });
                }
                Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
                    return Err(QueueError::Nacked {
                        queue: queue.to_string(),
                    });
                }
                Ok(Err(e)) if !retryable(&e) => return Err(e),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            if Instant::now() + backoff >= deadline {
                return Err(QueueError::Unavailable {
                    queue: queue.to_string(),
                    waited: PUBLISH_PATIENCE,
                    last_error: error,
                });
            }
            tracing::warn!(queue, "publish failed, retrying in {backoff:?}: {error}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A channel for a consumer, on the live connection.
    pub(super) async fn consumer_channel(&self) -> Result<Channel, QueueError> {
        let (connection, _) = self.live().await?;
        connection
            .create_channel()
            .await
            .map_err(self.amqp_err("cannot open a consumer channel"))
    }

    pub(super) async fn ping(&self) -> Result<(), QueueError> {
        self.live().await.map(drop)
    }

    /// Reads up to `limit` dead letters without consuming them: they are
    /// fetched unacked on a private channel, whose close requeues them.
    pub(super) async fn dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.check_declared(queue)?;
        let dead = dead_queue_name(queue);
        let channel = self.consumer_channel().await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(self.amqp_err(&format!("cannot read `{dead}`")))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let headers = delivery.properties.headers().as_ref();
            out.push(DeadLetter {
                message_id: message_id_of(&delivery.properties),
                attempt: header_u32(headers, ATTEMPT_HEADER).unwrap_or(1),
                reason: header_string(headers, ERROR_HEADER)
                    .unwrap_or_else(|| "dead-lettered by the broker".to_string()),
                dead_at_ms: header_u64(headers, DEAD_AT_HEADER),
                body: delivery.data,
            });
        }
        let _ = channel.close(200, "dead letters read".into()).await;
        Ok(out)
    }

    /// Moves dead letters back to `queue`: each is republished (confirmed)
    /// as attempt 1 with the replayed header, then acked in `Q.dead`.
    pub(super) async fn replay_dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<usize, QueueError> {
        self.check_declared(queue)?;
        let dead = dead_queue_name(queue);
        let channel = self.consumer_channel().await?;
        let mut moved = 0;
        while moved < limit {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(self.amqp_err(&format!("cannot read `{dead}`")))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let mut props = message_properties(&message_id_of(&delivery.properties), 1, None);
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert(REPLAYED_HEADER.into(), AMQPValue::Boolean(true));
            props = props.with_headers(headers);
            self.publish_confirmed("", queue, queue, &delivery.data, props)
                .await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(
                    self.amqp_err(&format!("cannot remove a replayed message from `{dead}`")),
                )?;
            moved += 1;
        }
        let _ = channel.close(200, "dead letters replayed".into()).await;
        Ok(moved)
    }

    /// Drops the dead letters of `queue` past `limits`, oldest first: over
    /// the count, or dead-lettered longer ago than the age (messages the
    /// broker dead-lettered itself carry no time and only go over the count).
    pub(super) async fn trim_dead_letters(
        &self,
        queue: &str,
        limits: DeadLetterLimits,
    ) -> Result<usize, QueueError> {
        let dead = dead_queue_name(queue);
        let channel = self.consumer_channel().await?;
        let mut count = u64::from(self.declare(&channel, &dead, FieldTable::default()).await?);
        let oldest_kept =
            now_ms().saturating_sub(u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX));
        let mut dropped = 0;
        while count > 0 {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(self.amqp_err(&format!("cannot read `{dead}`")))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let dead_at = header_u64(delivery.properties.headers().as_ref(), DEAD_AT_HEADER);
            let expired = dead_at.is_some_and(|at| at < oldest_kept);
            if count <= limits.max_count && !expired {
                // The oldest is within bounds, so all are: put it back.
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = delivery.acker.nack(requeue).await;
                break;
            }
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(self.amqp_err(&format!("cannot drop a message from `{dead}`")))?;
            count -= 1;
            dropped += 1;
        }
        let _ = channel.close(200, "dead letters trimmed".into()).await;
        Ok(dropped)
    }

    pub(super) async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        let channel = self.consumer_channel().await?;
        let steps: Vec<String> = self
            .steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.starts_with(&format!("{queue}.retry.")))
            .cloned()
            .collect();
        let names = [
            queue.to_string(),
            retry_queue_name(queue),
            dead_queue_name(queue),
        ];
        for name in names.into_iter().chain(steps) {
            channel
                .queue_delete(
                    name.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .map_err(self.amqp_err(&format!("cannot delete `{name}`")))?;
        }
        let _ = channel.close(200, "queues deleted".into()).await;
        Ok(())
    }
}

/// Whether a publish may succeed on a fresh connection: connection-level
/// trouble yes; a channel-level refusal (e.g. a missing exchange) no.
fn retryable(error: &QueueError) -> bool {
    match error {
        QueueError::Connect { .. } => true,
        QueueError::Amqp { source, .. } => {
            source.can_be_recovered() && !source.is_amqp_soft_error()
        }
        _ => false,
    }
}

fn dead_letter_args(exchange: &str, routing_key: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(routing_key.into()),
    );
    args
}

/// Persistent, with our message id and attempt (and the last error).
pub(super) fn message_properties(
    message_id: &str,
    attempt: u32,
    error: Option<&str>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
    if let Some(error) = error {
        headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(error.into()));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Ok(id) = ShortString::try_new(message_id) {
        props = props.with_message_id(id);
    }
    props
}

/// The message id, or a fresh one for messages published without one.
pub(super) fn message_id_of(props: &BasicProperties) -> String {
    props
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_else(new_message_id)
}

/// An integer header in any of AMQP's integer types.
pub(super) fn header_u32(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
    header_u64(headers, key).and_then(|n| u32::try_from(n).ok())
}

fn header_u64(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    let value = headers?.inner().get(key)?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// Whether a boolean header is present and true.
pub(super) fn header_true(headers: Option<&FieldTable>, key: &str) -> bool {
    matches!(
        headers.and_then(|h| h.inner().get(key)),
        Some(AMQPValue::Boolean(true))
    )
}

fn header_string(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

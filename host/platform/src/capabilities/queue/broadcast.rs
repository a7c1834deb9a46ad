//! Broadcasts: a message to every running host at once (e.g. "component X
//! was redeployed"), as opposed to queues, where each message goes to one
//! consumer. Best effort and not durable: a host that was away misses the
//! message, and learns that it may have through [`Signal::Resubscribed`], so
//! broadcasts should be hints about state kept elsewhere.
//!
//! - **RabbitMQ**: a durable fanout exchange per topic (`spindle.deploys`);
//!   each subscriber binds an exclusive, auto-delete, server-named queue to
//!   it, so the broker drops the queue with the subscriber's connection.
//!   The subscription reconnects with the consumers' backoff
//!   ([`crate::backoff`]) and reports [`Signal::Resubscribed`] after
//!   each reconnection. Publishing is confirmed; "no subscriber bound" is
//!   not an error.
//! - **Embedded**: the queue directory is locked to one process, so there is
//!   no other host to tell: broadcasting does nothing and a subscription
//!   ends at once.

use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use tokio::sync::mpsc;

use super::QueueError;
use super::rabbitmq::RabbitMq;
use crate::backoff;

/// The topic hot redeploys are announced on (also the exchange's name).
pub const BROADCAST_DEPLOYS: &str = "spindle.deploys";

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Message(Vec<u8>),
    /// The subscription was lost and is back: messages sent in between
    /// were missed.
    Resubscribed,
}

/// Receives a topic's broadcasts until dropped.
pub struct Subscription {
    rx: mpsc::Receiver<Signal>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Subscription {
    /// The next signal; `None` when there will be none (embedded backend).
    pub async fn next(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }

    pub(super) fn none() -> Self {
        let (_, rx) = mpsc::channel(1);
        Subscription { rx, task: None }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn declare_exchange(
    broker: &RabbitMq,
    channel: &lapin::Channel,
    topic: &str,
) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            topic.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker.amqp_err(&format!("cannot declare the fanout exchange `{topic}`")))
}

pub(super) async fn publish(broker: &RabbitMq, topic: &str, body: &[u8]) -> Result<(), QueueError> {
    let channel = broker.consumer_channel().await?;
    declare_exchange(broker, &channel, topic).await?;
    let _ = channel.close(200, "exchange declared".into()).await;
    let props = BasicProperties::default().with_message_id(super::new_message_id().as_str().into());
    match broker
        .publish_confirmed(topic, "", topic, body, props)
        .await
    {
        // Nobody subscribed right now: nobody to tell.
        Ok(()) | Err(QueueError::Unroutable { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn bind(
    broker: &RabbitMq,
    topic: &str,
) -> Result<(lapin::Channel, lapin::Consumer), QueueError> {
    let channel = broker.consumer_channel().await?;
    declare_exchange(broker, &channel, topic).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker.amqp_err(&format!("cannot declare a queue for `{topic}`")))?;
    channel
        .queue_bind(
            queue.name().clone(),
            topic.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker.amqp_err(&format!("cannot bind to `{topic}`")))?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker.amqp_err(&format!("cannot consume `{topic}`")))?;
    Ok((channel, consumer))
}

/// Binds once (so a broker problem other than being unreachable fails
/// here), then follows the topic in the background, binding once the
/// broker answers and rebinding when the connection dies.
pub(super) async fn subscribe(
    broker: Arc<RabbitMq>,
    topic: &str,
) -> Result<Subscription, QueueError> {
    let first = match bind(&broker, topic).await {
        Ok(bound) => Some(bound),
        Err(e @ QueueError::Connect { .. }) => {
            tracing::warn!(%topic, "not subscribed yet, RabbitMQ is not reachable: {e}");
            None
        }
        Err(e) => return Err(e),
    };
    let (tx, rx) = mpsc::channel(64);
    let topic = topic.to_string();
    let task = tokio::spawn(async move {
        let mut current = first;
        loop {
            let (_channel, mut consumer) = match current.take() {
                Some(bound) => bound,
                None => {
                    let bound = backoff::until_ok(
                        || bind(&broker, &topic),
                        |e, wait| {
                            tracing::warn!(%topic, "cannot resubscribe, retrying in {wait:?}: {e}");
                        },
                    )
                    .await;
                    tracing::info!(%topic, "broadcast subscription restored");
                    if tx.send(Signal::Resubscribed).await.is_err() {
                        return;
                    }
                    bound
                }
            };
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(delivery) => {
                        if tx.send(Signal::Message(delivery.data)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%topic, "the broadcast subscription lost its connection: {e}");
                        break;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(Subscription {
        rx,
        task: Some(task),
    })
}

//! The RabbitMQ consumer loop: manual acks, `basic.qos` prefetch, at most
//! `min(prefetch, concurrency)` handlers at once, and resubscription when
//! the connection or channel dies (the broker requeues what was unacked).
//! Redeliveries are counted, and retries and dead letters published, as
//! `rabbitmq.rs` describes; a side task trims the dead letters.

use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::consumer::{Consumer, StopSignal, process};
use super::rabbitmq::{
    ATTEMPT_HEADER, DEAD_AT_HEADER, DEAD_EXCHANGE, ERROR_HEADER, PERSISTENT, REPLAYED_HEADER,
    RabbitMq, header_true, header_u32, message_id_of,
};
use super::{
    ConsumeOptions, DEAD_LETTER_TRIM_EVERY, Delivery, Handler, QueueError, Settle, new_message_id,
};
use crate::backoff::{self, MAX_BACKOFF};
use crate::clock::now_ms;

struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

/// How a subscription ended.
enum Ended {
    Stopped,
    Lost,
}

/// Everything a handler task needs.
#[derive(Clone)]
struct Ctx {
    broker: Arc<RabbitMq>,
    queue: String,
    opts: ConsumeOptions,
    handler: Handler,
}

/// Subscribes once (so a bad queue fails here), then runs the consumer in
/// the background. A broker that cannot be reached yet is not an error:
/// the consumer subscribes once it answers.
pub(super) async fn start(
    broker: Arc<RabbitMq>,
    queue: &str,
    opts: ConsumeOptions,
    handler: Handler,
) -> Result<Consumer, QueueError> {
    broker.check_declared(queue)?;
    let first = match subscribe(&broker, queue, &opts).await {
        Ok(sub) => {
            tracing::info!(queue, ?opts, "consuming from RabbitMQ");
            Some(sub)
        }
        Err(e @ QueueError::Connect { .. }) => {
            tracing::warn!(queue, "not consuming yet, RabbitMQ is not reachable: {e}");
            None
        }
        Err(e) => return Err(e),
    };
    let ctx = Ctx {
        broker,
        queue: queue.to_string(),
        opts,
        handler,
    };
    Ok(Consumer::spawn(queue, move |stop| run(ctx, first, stop)))
}

async fn subscribe(
    broker: &RabbitMq,
    queue: &str,
    opts: &ConsumeOptions,
) -> Result<Subscription, QueueError> {
    let channel = broker.consumer_channel().await?;
    channel
        .basic_qos(opts.prefetch, BasicQosOptions::default())
        .await
        .map_err(broker.amqp_err("cannot set the prefetch"))?;
    let tag = format!("spindle-{queue}-{}", &new_message_id()[..8]);
    let tag_short = ShortString::try_new(tag.as_str()).unwrap_or_default();
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag_short,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker.amqp_err(&format!("cannot consume from `{queue}`")))?;
    Ok(Subscription {
        channel,
        tag: consumer.tag().to_string(),
        consumer,
    })
}

async fn run(ctx: Ctx, first: Option<Subscription>, mut stop: StopSignal) {
    let trimming = tokio::spawn(trim_dead_letters(ctx.clone(), stop.clone()));
    consume(&ctx, first, &mut stop).await;
    let _ = trimming.await;
}

/// Keeps the queue's dead letters within their bounds until stopped.
async fn trim_dead_letters(ctx: Ctx, mut stop: StopSignal) {
    loop {
        let limits = ctx.opts.dead_letters;
        match ctx.broker.trim_dead_letters(&ctx.queue, limits).await {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::warn!(queue = %ctx.queue, dropped, ?limits, "dropped dead letters past the queue's bounds");
            }
            Err(e) => tracing::warn!(queue = %ctx.queue, "cannot trim the dead letters: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(DEAD_LETTER_TRIM_EVERY) => {}
            () = stop.wait() => return,
        }
    }
}

async fn consume(ctx: &Ctx, first: Option<Subscription>, stop: &mut StopSignal) {
    let slots = Arc::new(Semaphore::new(ctx.opts.slots()));
    let mut running = JoinSet::new();
    let mut next = first;
    loop {
        let mut sub = match next.take() {
            Some(sub) => sub,
            None => {
                let resubscribed = backoff::until_ok(
                    || subscribe(&ctx.broker, &ctx.queue, &ctx.opts),
                    |e, wait| {
                        tracing::warn!(queue = %ctx.queue, "cannot resubscribe, retrying in {wait:?}: {e}");
                    },
                );
                tokio::select! {
                    sub = resubscribed => {
                        tracing::info!(queue = %ctx.queue, "consumer resubscribed");
                        sub
                    }
                    () = stop.wait() => break,
                }
            }
        };
        match pump(ctx, &mut sub, &slots, &mut running, stop).await {
            Ended::Lost => continue,
            Ended::Stopped => {
                // No new deliveries; let running handlers settle theirs on
                // this channel; then closing it returns what was prefetched.
                if let Err(e) = sub
                    .channel
                    .basic_cancel(sub.tag.as_str().into(), BasicCancelOptions::default())
                    .await
                {
                    tracing::debug!(queue = %ctx.queue, "cancelling the consumer: {e}");
                }
                while running.join_next().await.is_some() {}
                let _ = sub.channel.close(200, "consumer stopped".into()).await;
                return;
            }
        }
    }
    while running.join_next().await.is_some() {}
}

/// Hands deliveries to handlers, one per free slot, until stopped or the
/// subscription dies.
async fn pump(
    ctx: &Ctx,
    sub: &mut Subscription,
    slots: &Arc<Semaphore>,
    running: &mut JoinSet<()>,
    stop: &mut StopSignal,
) -> Ended {
    loop {
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            () = stop.wait() => return Ended::Stopped,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ended::Stopped, // the semaphore is never closed
            },
        };
        let delivery = tokio::select! {
            biased;
            () = stop.wait() => return Ended::Stopped,
            delivery = sub.consumer.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => {
                running.spawn(handle(ctx.clone(), delivery, permit));
            }
            Some(Err(e)) => {
                tracing::warn!(queue = %ctx.queue, "the consumer lost its connection: {e}");
                return Ended::Lost;
            }
            None => {
                tracing::warn!(queue = %ctx.queue, "the consumer was cancelled by the broker");
                return Ended::Lost;
            }
        }
    }
}

async fn handle(ctx: Ctx, delivery: lapin::message::Delivery, permit: OwnedSemaphorePermit) {
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
    let stored_attempt = header_u32(headers, ATTEMPT_HEADER).unwrap_or(1).max(1);
    // A redelivery is the next delivery of the stored count.
    let attempt = stored_attempt.saturating_add(u32::from(delivery.redelivered));
    let message_id = message_id_of(props);
    let queue = ctx.queue.as_str();
    let counting = delivery.redelivered && attempt <= ctx.opts.max_attempts;
    let settle = if counting {
        // Stored before anything runs it, so a handler that crashes the
        // process cannot keep the count where it was.
        if let Some(m) = &ctx.opts.metrics {
            m.retried.inc();
        }
        tracing::warn!(queue, %message_id, attempt, "delivered before without an answer; counting it and delivering again");
        Settle::retry(
            attempt,
            ctx.opts.backoff(stored_attempt),
            "an earlier delivery ended without an answer".into(),
        )
    } else {
        let delivered = Delivery {
            queue: queue.to_string(),
            body: delivery.data.clone(),
            attempt,
            message_id: message_id.clone(),
            replayed: header_true(headers, REPLAYED_HEADER),
        };
        process(&ctx.handler, &ctx.opts, delivered).await
    };
    let moved = match &settle {
        Settle::Ack => Ok(()),
        Settle::Retry {
            next_attempt,
            step,
            delay,
            reason,
        } => {
            let delay_ms = delay.as_millis().max(1).to_string();
            let props = republished(props, &message_id, *next_attempt, reason, None)
                .with_expiration(delay_ms.as_str().into());
            match ctx.broker.declare_retry_step(queue, *step).await {
                Ok(retry_queue) => {
                    (ctx.broker)
                        .publish_confirmed("", &retry_queue, queue, &delivery.data, props)
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Settle::Dead { reason } => {
            let props = republished(props, &message_id, attempt, reason, Some(now_ms()));
            (ctx.broker)
                .publish_confirmed(DEAD_EXCHANGE, queue, queue, &delivery.data, props)
                .await
        }
    };
    match moved {
        Ok(()) => match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                queue, %message_id,
                "cannot ack: the channel is gone; the broker will deliver it again"
            ),
            Err(e) => tracing::warn!(
                queue, %message_id,
                "cannot ack ({e}); the broker will deliver it again"
            ),
        },
        Err(e) => {
            tracing::error!(queue, %message_id, ?settle, "cannot move the message, returning it to the queue: {e}");
            // Wait a little so a broken retry path does not spin.
            tokio::time::sleep(ctx.opts.retry_delay.min(MAX_BACKOFF)).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = delivery.acker.nack(requeue).await {
                tracing::warn!(queue, %message_id, "cannot nack: {e}");
            }
        }
    }
    drop(permit);
}

/// Properties for a copy of `original` sent to the retry or dead-letter
/// queue: persistent, same id, the attempt and error set (and the time of
/// death for a dead letter), other headers and the usual descriptive fields
/// kept. No expiration is carried over.
fn republished(
    original: &BasicProperties,
    message_id: &str,
    attempt: u32,
    error: &str,
    dead_at_ms: Option<u64>,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from(error)),
    );
    if let Some(at) = dead_at_ms {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        headers.insert(DEAD_AT_HEADER.into(), AMQPValue::LongLongInt(at));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Ok(id) = ShortString::try_new(message_id) {
        props = props.with_message_id(id);
    }
    if let Some(v) = original.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        props = props.with_content_encoding(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        props = props.with_timestamp(*v);
    }
    props
}

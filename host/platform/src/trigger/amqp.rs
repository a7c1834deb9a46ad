//! The queue trigger (`[[trigger.amqp]]`): each message on a queue invokes
//! the running version of its component ([`crate::invoke::queue`]), whose
//! answer acks, retries or dead-letters the message. Triggers naming a
//! native worker run its handler instead.

use crate::capabilities::queue::{
    Broker, ConsumeOptions, Consumer, DeadLetterLimits, Handler, Outcome, Worker,
};
use crate::components::ComponentSet;
use crate::invoke::InvokeError;
use crate::lifecycle::Lifecycle;
use crate::manifest::{AmqpTarget, AmqpTrigger};
use crate::metrics::Metrics;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::sync::Arc;

/// Starts one consumer per `[[trigger.amqp]]`; stop them to drain.
/// Triggers naming a native worker get their handler from `workers`; one
/// missing there runs in another process (e.g. its own Deployment) and is
/// skipped here.
pub async fn start(
    triggers: &[AmqpTrigger],
    components: &Arc<ComponentSet>,
    lifecycle: &Arc<Lifecycle>,
    broker: &Broker,
    metrics: &Metrics,
    workers: &HashMap<String, Worker>,
) -> Result<Vec<Consumer>> {
    let mut consumers = Vec::new();
    for trigger in triggers {
        let (handler, on_dead_letter, target): (Handler, _, String) = match trigger.target() {
            AmqpTarget::Component(id) => {
                if components.queue(id).is_none() {
                    bail!("component `{id}` has no queue handler");
                }
                (
                    component_handler(components, lifecycle, id),
                    None,
                    format!("component `{id}`"),
                )
            }
            AmqpTarget::Worker(name) => match workers.get(name) {
                Some(worker) => (
                    worker.handler.clone(),
                    worker.on_dead_letter.clone(),
                    format!("worker `{name}`"),
                ),
                None => {
                    tracing::info!(
                        queue = %trigger.queue,
                        "worker `{name}` is not run by this process; it consumes the queue elsewhere"
                    );
                    continue;
                }
            },
        };
        let mut options = consume_options(trigger);
        options.metrics = Some(metrics.queue(&trigger.queue));
        options.on_dead_letter = on_dead_letter;
        let consumer = broker
            .consume(&trigger.queue, options, handler)
            .await
            .with_context(|| {
                format!(
                    "starting [[trigger.amqp]] for queue `{}` → {target}",
                    trigger.queue
                )
            })?;
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Invokes the running version of component `id` per delivery, so a
/// redeploy takes effect at the next message while running ones finish on
/// theirs; none runs before the deploy records are read, so a deployed
/// version is never preceded by the manifest's.
fn component_handler(
    components: &Arc<ComponentSet>,
    lifecycle: &Arc<Lifecycle>,
    id: &str,
) -> Handler {
    let (components, lifecycle) = (components.clone(), lifecycle.clone());
    let id: Arc<str> = id.into();
    Arc::new(move |delivery| {
        let (components, lifecycle, id) = (components.clone(), lifecycle.clone(), id.clone());
        Box::pin(async move {
            lifecycle.started().await;
            match components.queue(&id) {
                Some(component) => component.invoke(delivery).await,
                None => Outcome::Retry(
                    InvokeError::Trap {
                        component: id.to_string(),
                        reason: "it has no queue handler".into(),
                    }
                    .to_string(),
                ),
            }
        })
    })
}

/// How the consumer of `trigger` takes messages (no hook, no metrics).
pub fn consume_options(trigger: &AmqpTrigger) -> ConsumeOptions {
    use std::time::Duration;
    ConsumeOptions {
        prefetch: trigger.concurrency,
        concurrency: usize::from(trigger.concurrency),
        max_attempts: trigger.max_attempts,
        retry_delay: Duration::from_millis(trigger.retry_delay_ms),
        retry_delay_max: Duration::from_millis(trigger.retry_delay_max_ms),
        dead_letters: DeadLetterLimits {
            max_count: trigger.dead_letter_max_count,
            max_age: Duration::from_secs(trigger.dead_letter_max_age_days.saturating_mul(86_400)),
        },
        on_dead_letter: None,
        metrics: None,
    }
}

//! The queue trigger (`[[trigger.amqp]]`): each message on a queue invokes
//! the component's `spindle:queue/handler` export in a fresh instance (see
//! [`crate::runtime::invoke`]); its answer acks, retries or dead-letters the
//! message. Triggers naming a native worker run its handler instead.

use crate::capabilities::queue::component::{Failure, HANDLER_EXPORT, Message, QueueHandlerPre};
use crate::capabilities::queue::{Broker, Consumer, Delivery, Handler, Outcome, Worker};
use crate::components::ComponentSet;
use crate::lifecycle::Lifecycle;
use crate::manifest::{AmqpTarget, AmqpTrigger};
use crate::metrics::Metrics;
use crate::runtime::component::LinkedComponent;
use crate::runtime::instance::InstanceState;
use crate::runtime::invoke::{InvokeError, Invoker};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::Engine;

/// The queue handler a linked component exports, if any.
pub fn handler_pre(
    engine: &Engine,
    id: &str,
    linked: &LinkedComponent,
) -> Result<Option<QueueHandlerPre<InstanceState>>> {
    if !linked
        .exports(engine)
        .iter()
        .any(|name| name == HANDLER_EXPORT)
    {
        return Ok(None);
    }
    QueueHandlerPre::new(linked.pre.clone())
        .map(Some)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component `{id}`: its {HANDLER_EXPORT} export does not match"))
}

/// Runs one queue-triggered component.
pub struct QueueComponent {
    invoker: Arc<Invoker>,
    pre: QueueHandlerPre<InstanceState>,
}

impl QueueComponent {
    pub fn new(invoker: Arc<Invoker>, pre: QueueHandlerPre<InstanceState>) -> Self {
        QueueComponent { invoker, pre }
    }

    /// Handles one delivery; a trap or a timeout counts as a retry.
    pub async fn invoke(&self, delivery: Delivery) -> Outcome {
        let timeout = self.invoker.limits().request_timeout();
        let mut store = self.invoker.store();
        let invocation = store.data().invocation();
        let message = Message {
            queue: delivery.queue,
            body: delivery.body,
            attempt: delivery.attempt,
            message_id: delivery.message_id,
        };
        let run = async {
            let handler = match self.pre.instantiate_async(&mut store).await {
                Ok(handler) => handler,
                Err(e) => return Err(self.invoker.instantiation(&e)),
            };
            store
                .run_concurrent(async move |accessor| {
                    handler
                        .spindle_queue_handler()
                        .call_handle(accessor, message)
                        .await
                })
                .await
                .and_then(|result| result)
                .map_err(|e| self.invoker.classify(&e, Some(&invocation)))
        };
        let outcome = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(Ok(()))) => Outcome::Ack,
            Ok(Ok(Err(Failure::Retry(reason)))) => Outcome::Retry(reason),
            Ok(Ok(Err(Failure::Reject(reason)))) => Outcome::DeadLetter(reason),
            Ok(Err(e)) => Outcome::Retry(e.to_string()),
            Err(_) => Outcome::Retry(self.invoker.timeout().to_string()),
        };
        if outcome != Outcome::Ack {
            tracing::info!(component = %self.invoker.id(), ?outcome, "message not acknowledged");
        }
        outcome
    }
}

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
        let mut options = trigger.consume_options();
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

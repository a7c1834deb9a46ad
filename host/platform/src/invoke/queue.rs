//! Invoking a queue-triggered component: its `spindle:queue/handler`
//! export in a fresh instance per delivery.

use super::Invoker;
use crate::capabilities::queue::component::{Failure, HANDLER_EXPORT, Message, QueueHandlerPre};
use crate::capabilities::queue::{Delivery, Outcome};
use crate::runtime::component::LinkedComponent;
use crate::runtime::instance::InstanceState;
use anyhow::{Context, Result};
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
        let mut store = match self.invoker.store() {
            Ok(store) => store,
            Err(e) => return Outcome::Retry(self.invoker.instantiation(&e).to_string()),
        };
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

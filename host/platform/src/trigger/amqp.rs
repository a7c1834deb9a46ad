//! The queue trigger (`[[trigger.amqp]]`): each message on a queue invokes
//! the component's `spindle:queue/handler` export in a fresh instance; its
//! answer acks, retries or dead-letters the message.

use crate::capabilities::queue::component::{Failure, Message, QueueHandlerPre};
use crate::capabilities::queue::{Delivery, Outcome};
use crate::runtime::admission::Gate;
use crate::runtime::instance::{Grants, InstanceState};
use crate::runtime_config::Limits;
use std::sync::Arc;
use wasmtime::{Engine, Store};

/// Runs one queue-triggered component.
pub struct QueueComponent {
    id: Arc<str>,
    engine: Engine,
    pre: QueueHandlerPre<InstanceState>,
    grants: Grants,
    limits: Limits,
    gate: Arc<Gate>,
}

impl QueueComponent {
    pub fn new(
        id: &str,
        engine: Engine,
        pre: QueueHandlerPre<InstanceState>,
        grants: Grants,
        limits: Limits,
        gate: Arc<Gate>,
    ) -> Self {
        QueueComponent {
            id: id.into(),
            engine,
            pre,
            grants,
            limits,
            gate,
        }
    }

    /// Handles one delivery; a trap or a timeout counts as a retry.
    pub async fn invoke(&self, delivery: Delivery) -> Outcome {
        let timeout = self.limits.request_timeout();
        let mut store = Store::new(
            &self.engine,
            InstanceState::new(&self.grants, &self.gate, timeout),
        );
        InstanceState::configure(&mut store);
        let invocation = store.data().invocation();
        let message = Message {
            queue: delivery.queue,
            body: delivery.body,
            attempt: delivery.attempt,
            message_id: delivery.message_id,
        };
        let run = async {
            let handler = self.pre.instantiate_async(&mut store).await?;
            store
                .run_concurrent(async move |accessor| {
                    handler
                        .spindle_queue_handler()
                        .call_handle(accessor, message)
                        .await
                })
                .await?
        };
        let outcome = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(Ok(()))) => Outcome::Ack,
            Ok(Ok(Err(Failure::Retry(reason)))) => Outcome::Retry(reason),
            Ok(Ok(Err(Failure::Reject(reason)))) => Outcome::DeadLetter(reason),
            Ok(Err(_)) if invocation.timed_out() => Outcome::Retry(format!(
                "component `{}` did not finish within {timeout:?}",
                self.id
            )),
            Ok(Err(_)) if invocation.memory_exceeded() => Outcome::Retry(format!(
                "component `{}` exceeded its memory limit of {} MiB",
                self.id,
                self.gate.memory_limit_mb()
            )),
            Ok(Err(_)) if invocation.budget_exhausted() => Outcome::Retry(format!(
                "the host's memory for components ({} MiB) was in use",
                self.gate.budget_mb()
            )),
            Ok(Err(e)) => {
                tracing::warn!(component = %self.id, "queue handler failed: {e:#}");
                Outcome::Retry(format!(
                    "component `{}` trapped: {}",
                    self.id,
                    e.root_cause()
                ))
            }
            Err(_) => Outcome::Retry(format!(
                "component `{}` did not finish within {timeout:?}",
                self.id
            )),
        };
        if outcome != Outcome::Ack {
            tracing::info!(component = %self.id, ?outcome, "message not acknowledged");
        }
        outcome
    }
}

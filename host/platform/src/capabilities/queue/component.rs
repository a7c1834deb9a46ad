//! The component side of queues: the `spindle:queue/publisher` import,
//! limited to the queues a component is granted, and the `handler` export
//! that `[[trigger.amqp]]` invokes.

use super::Broker;
use std::sync::Arc;
use wasmtime::component::{Accessor, HasData};

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/capabilities/queue/wit",
        world: "spindle:queue/queue-handler",
        imports: { default: trappable },
        exports: { default: async | store },
    });
}

pub use bindings::QueueHandlerPre;
pub use bindings::exports::spindle::queue::handler::{Failure, Message};
pub(super) use bindings::spindle::queue::publisher::{self as wit, Error};

/// The export name a queue-triggered component must have.
pub const HANDLER_EXPORT: &str = "spindle:queue/handler@0.1.0";

/// What one component may publish to.
#[derive(Clone)]
pub struct PublishState {
    component: Arc<str>,
    broker: Broker,
    queues: Arc<Vec<String>>,
}

impl PublishState {
    pub fn new(component: &str, broker: Broker, queues: &[String]) -> Self {
        PublishState {
            component: component.into(),
            broker,
            queues: Arc::new(queues.to_vec()),
        }
    }

    fn granted(&self, queue: &str) -> Result<Broker, Error> {
        if self.queues.iter().any(|q| q == queue) {
            return Ok(self.broker.clone());
        }
        tracing::warn!(component = %self.component, queue, "publish refused: queue not granted");
        Err(Error::PermissionDenied(format!(
            "component `{}` may not publish to queue `{queue}`; add \"{queue}\" to its publish_queues in spin.toml",
            self.component
        )))
    }
}

/// The `HasData` marker for `spindle:queue/publisher`.
pub struct Publisher;

impl HasData for Publisher {
    type Data<'a> = &'a PublishState;
}

impl wit::Host for &PublishState {}

impl<T> wit::HostWithStore<T> for Publisher {
    async fn publish(
        store: &Accessor<T, Self>,
        queue: String,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let broker = match store.with(|mut view| view.get().granted(&queue)) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(broker.publish(&queue, &body).await.map_err(|e| {
            if e.is_storage_full() {
                Error::StorageFull(e.to_string())
            } else {
                Error::Unavailable(e.to_string())
            }
        }))
    }
}

//! `spindle:queue` as a capability: `publish_queues` grants queues to
//! publish to; `[amqp] url` selects RabbitMQ, the embedded queue otherwise.
//! The broker also carries `[[trigger.amqp]]` and the deploy broadcast.

use super::Broker;
use super::component::{PublishState, Publisher, wit};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use crate::manifest::is_reserved;
use crate::runtime_config::UrlConfig;
use std::sync::Arc;
use wasmtime::component::Linker;

impl Capability for Publisher {
    const NAME: &'static str = "spindle:queue";
    const GRANT_KEYS: &'static [&'static str] = &["publish_queues"];
    const CONFIG_SECTION: Option<&'static str> = Some("amqp");
    const BACKEND_NAME: &'static str = "the queue broker";

    /// The queues granted.
    type Grant = Arc<Vec<String>>;
    type Backend = Broker;
    type State = PublishState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let queues: Vec<String> = entry.get("publish_queues")?;
        if let Some(queue) = queues.iter().find(|q| is_reserved(q)) {
            return Err(GrantError::reserved("publish_queues", queue));
        }
        Ok(Arc::new(queues))
    }

    /// Declares every queue a trigger consumes, a component may publish
    /// to, or a native worker publishes to.
    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let amqp: Option<UrlConfig> = env.section::<Self, _>()?;
        let published = env
            .manifest
            .components
            .values()
            .filter_map(|c| c.grants.get("publish_queues"))
            .filter_map(|v| v.as_array())
            .flatten()
            .filter_map(|v| v.as_str());
        let mut queues: Vec<&str> = env
            .manifest
            .amqp_triggers
            .iter()
            .map(|t| t.queue.as_str())
            .chain(published)
            .chain(env.extra_queues.iter().copied())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        Ok(Broker::connect(
            amqp.as_ref().map(|a| a.url.as_str()),
            env.state_dir,
            &queues,
        )
        .await?)
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        Some(backend.describe())
    }

    async fn ready(backend: &Self::Backend) -> anyhow::Result<()> {
        Ok(backend.ping().await?)
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn state<T: HasState<Publisher>>(t: &mut T) -> &PublishState {
            t.view().state
        }
        wit::add_to_linker::<T, Publisher>(linker, state::<T>)
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        PublishState::new(id, backend.clone(), grant)
    }

    fn is_granted(grant: &Self::Grant) -> bool {
        !grant.is_empty()
    }

    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str> {
        (import.starts_with("spindle:queue/publisher") && grant.is_empty())
            .then_some("publish_queues = [\"QUEUE\"]")
    }
}

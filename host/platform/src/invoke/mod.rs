//! The one invocation path every trigger uses: a fresh store per
//! invocation with the component's capability states, its deadline and its
//! memory limit ([`Invoker::store`]), and one classification of why an
//! invocation ended without an answer ([`Invoker::classify`]). The HTTP
//! trigger turns an [`InvokeError`] into a status code, the queue trigger
//! into a retry.

pub mod body;
pub mod http;
pub mod queue;

use crate::capabilities::InstanceStates;
use crate::runtime::admission::{Gate, Overloaded};
use crate::runtime::instance::{InstanceState, Invocation};
use crate::runtime_config::Limits;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Engine, Store};

/// Why an invocation produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("component `{component}` did not respond within {timeout:?}")]
    Timeout {
        component: String,
        timeout: Duration,
    },
    #[error("component `{component}` exceeded its memory limit of {limit_mb} MiB")]
    Memory { component: String, limit_mb: u64 },
    #[error("component `{component}` could not be instantiated: {reason}")]
    Instantiation { component: String, reason: String },
    #[error("component `{component}` failed: {reason}")]
    Trap { component: String, reason: String },
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    /// The request body arrived below the minimum rate (HTTP only).
    #[error("{0}")]
    BodyTooSlow(String),
    /// The host has not finished starting (it waits for a backend).
    #[error("the host is starting and does not serve yet: {0}; retry shortly")]
    Starting(String),
}

/// What every invocation of one version of one component shares.
pub struct Invoker {
    id: Arc<str>,
    engine: Engine,
    states: InstanceStates,
    limits: Limits,
    gate: Arc<Gate>,
}

impl Invoker {
    pub fn new(
        id: &str,
        engine: Engine,
        states: InstanceStates,
        limits: Limits,
        gate: Arc<Gate>,
    ) -> Self {
        Invoker {
            id: id.into(),
            engine,
            states,
            limits,
            gate,
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admission: the component's cap and the host's memory budget.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// A fresh store for one invocation: the component's capability
    /// states, the request timeout, the memory limiter and the epoch
    /// callback that enforces the deadline.
    pub fn store(&self) -> anyhow::Result<Store<InstanceState>> {
        let mut store = Store::new(
            &self.engine,
            InstanceState::new(&self.states, &self.gate, self.limits.request_timeout())?,
        );
        InstanceState::configure(&mut store);
        Ok(store)
    }

    /// Why `e` ended the invocation, judged first by what the invocation
    /// ran into (its deadline, its memory limit, the host's budget).
    pub fn classify(&self, e: &wasmtime::Error, invocation: Option<&Invocation>) -> InvokeError {
        if let Some(limit) = self.limit_hit(invocation) {
            return limit;
        }
        let component = self.id.to_string();
        tracing::warn!(component = %self.id, "invocation failed: {e:#}");
        let trapped = e.is::<wasmtime_wasi_http::handler::TrapOrPanicError>()
            || e.chain().any(|cause| cause.is::<wasmtime::Trap>());
        let reason = if trapped {
            "it trapped; the host log has the guest's message".to_string()
        } else {
            e.root_cause().to_string()
        };
        InvokeError::Trap { component, reason }
    }

    /// The limit the invocation ran into, if it ran into one: its
    /// deadline, its memory limit or the host's memory budget.
    pub fn limit_hit(&self, invocation: Option<&Invocation>) -> Option<InvokeError> {
        let invocation = invocation?;
        if invocation.timed_out() {
            return Some(self.timeout());
        }
        if invocation.memory_exceeded() {
            return Some(InvokeError::Memory {
                component: self.id.to_string(),
                limit_mb: self.gate.memory_limit_mb(),
            });
        }
        invocation.budget_exhausted().then(|| {
            InvokeError::Overloaded(Overloaded::Memory {
                budget_mb: self.gate.budget_mb(),
                waited: self.limits.queue_timeout(),
            })
        })
    }

    /// The invocation ran past its deadline.
    pub fn timeout(&self) -> InvokeError {
        InvokeError::Timeout {
            component: self.id.to_string(),
            timeout: self.limits.request_timeout(),
        }
    }

    /// Instantiating failed (e.g. the pool had no slot).
    pub fn instantiation(&self, e: &dyn std::fmt::Display) -> InvokeError {
        InvokeError::Instantiation {
            component: self.id.to_string(),
            reason: format!("{e:#}"),
        }
    }
}

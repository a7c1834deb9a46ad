//! Triggers: what invokes components.

pub mod amqp;
pub mod http;

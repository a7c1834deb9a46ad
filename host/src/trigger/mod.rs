//! Triggers: what invokes components.

pub mod http;

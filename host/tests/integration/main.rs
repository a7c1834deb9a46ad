//! The host's integration tests, in one binary: each module starts real
//! `spindle up` processes on free ports (built components, embedded
//! defaults or the servers of `SPINDLE_TEST_*`) and talks to them over
//! HTTP, a module per subject; `instance` assembles the application in
//! this process instead, to test grants and limits at the instance level. One binary compiles `support` once and
//! builds the test components once per run; no test here changes process
//! state another could see (environment, signal handlers, the working
//! directory): each sets such things on the processes it starts.
//!
//! `cargo test -p spindle --test integration hostile::` runs one module.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod support;

mod app;
mod auth;
mod deploy;
mod hostile;
mod instance;
mod k8s;
mod notify;
mod queues_and_mail;
mod runtime;
mod shutdown;
mod spin_manifest;
mod spin_sdks;
mod watch;
mod web;

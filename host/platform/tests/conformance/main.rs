//! Conformance tests of the capability backends, through the platform's
//! public API: each behaviour is written once and run on every backend
//! (the embedded one always; a real server when its variable is set, saying
//! so when it is not).
//!
//! | module | backends |
//! |---|---|
//! | `blobs::files`, `blobs::gridfs`, `blobs::mongod` | files on disk; GridFS on the `mongo-wire` test server; a real `mongod` (`SPINDLE_TEST_MONGODB_URL`) |
//! | `queue::embedded`, `queue::rabbitmq` | the embedded queue; RabbitMQ (`SPINDLE_TEST_AMQP_URL`; the broker-restart test on a `rabbit-node` of its own) |
//! | `key_value::embedded`, `key_value::redis`, `key_value::config`, `key_value::linking` | the SQLite store; Redis (`SPINDLE_TEST_REDIS_URL`); labels, grants and the runtime config; components made from the WIT link against the host |
//! | `mail` | SMTP against the `smtp-server` test server (plain, STARTTLS, implicit TLS, AUTH); the outbox |
//! | `sqlite::file`, `sqlite::memory` (and `config`, `seed`, `limits`) | `spin:sqlite` on a database file; in memory |
//!
//! `cargo test -p spindle-platform --test conformance queue::rabbitmq`
//! runs one backend's tests. Tests of private internals (a settling rule,
//! the GridFS orphan sweep, URL redaction) stay next to the code, in
//! `#[cfg(test)]` modules under `src/`.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod blobs;
mod key_value;
mod layers;
mod mail;
mod queue;
mod sqlite;

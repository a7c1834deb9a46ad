//! `mongo-wire`: a small in-memory MongoDB server speaking the wire protocol,
//! for tests only.
//!
//! No `mongod` can be installed where Spindle's tests run, but blob storage
//! goes through MongoDB GridFS with the official `mongodb` driver. This crate
//! answers that driver well enough for GridFS and simple metadata work
//! (CRUD, cursors, indexes incl. unique ones, `count_documents`, a small
//! aggregation pipeline). It keeps everything in memory and must never be
//! linked into the product: use it as a dev-dependency only.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let server = mongo_wire::start("127.0.0.1:0".parse().unwrap()).await?;
//! let url = server.url(); // "mongodb://127.0.0.1:PORT"
//! // ... connect with mongodb::Client::with_uri_str(&url) ...
//! drop(server); // stops it
//! # Ok(()) }
//! ```
//!
//! For non-async callers, [`start_in_background`] runs the server on its own
//! thread and runtime. The `mongo-wire` binary serves standalone on a port.
//!
//! Simplifications versus a real `mongod` are listed in the module docs of
//! `query`, `update`, `aggregate`, `commands` and `auth`; notably there is
//! no TLS, compression, transactions, persistence, or replication, and
//! commands run one at a time under a single lock.
//!
//! With [`Options::auth`] the server enforces access control like `mongod
//! --auth`: users (`createUser`/`dropUser`), SCRAM-SHA-256 logins (also
//! speculative ones in `hello`) and MongoDB's built-in roles per database.

mod aggregate;
mod auth;
mod commands;
mod error;
mod query;
mod scram;
mod server;
mod store;
mod update;
mod wire;

pub use server::{
    Options, ServerHandle, start, start_in_background, start_in_background_with, start_with,
};

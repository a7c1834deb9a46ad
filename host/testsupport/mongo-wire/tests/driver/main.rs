//! Tests through the official `mongodb` driver against an in-process
//! `mongo-wire` server (one test binary, so the driver links once).

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod auth;
mod binary;
mod crud;
mod gridfs;
mod raw;

use mongo_wire::ServerHandle;
use mongodb::Client;

/// A fresh server on a free port and a driver client for it. Server
/// selection fails fast so a broken handshake does not hang for 30 s.
pub async fn setup() -> (ServerHandle, Client) {
    let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = Client::with_uri_str(format!("{}/?serverSelectionTimeoutMS=5000", server.url()))
        .await
        .unwrap();
    (server, client)
}

/// The server error code inside a driver error, wherever the driver put it.
pub fn error_code(err: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e.write_errors.as_ref()?.first().map(|e| e.code),
        _ => None,
    }
}

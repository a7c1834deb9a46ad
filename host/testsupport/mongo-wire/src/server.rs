//! Listening, connections, and the handle that stops the server.
//!
//! Each connection is one tokio task that reads a request, runs it (see
//! [`crate::commands`]) and writes the reply, strictly in turn — drivers
//! never pipeline on one connection. A malformed message is logged and closes
//! only that connection. Stopping is signalled through a `watch` channel whose
//! sender lives in [`ServerHandle`], so dropping the handle stops the accept
//! loop and every connection.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};

use bson::{Bson, Document, doc};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::auth::{Session, Users};
use crate::commands::{self, Connection, Shared};
use crate::error::CommandError;
use crate::wire::{self, Request};

/// Commands that older clients may still send as legacy OP_QUERY.
const OP_QUERY_COMMANDS: &[&str] = &["hello", "isMaster", "ismaster"];

#[derive(Debug)]
struct Server {
    shared: Shared,
    next_connection_id: AtomicI64,
    next_request_id: AtomicI32,
}

/// How to start a server. The default has no access control, like a
/// `mongod` without `--auth`.
#[derive(Clone, Default)]
pub struct Options {
    root: Option<(String, String)>,
}

impl Options {
    /// Access control on (`--auth`), with one user to begin with: `user` with
    /// the role `root` on `admin`, as the official image makes from
    /// `MONGO_INITDB_ROOT_USERNAME`/`_PASSWORD`. It can create the others
    /// with `createUser`.
    pub fn auth(user: impl Into<String>, password: impl Into<String>) -> Options {
        Options {
            root: Some((user.into(), password.into())),
        }
    }

    fn shared(&self) -> io::Result<Shared> {
        Ok(match &self.root {
            None => Shared::default(),
            Some((user, password)) => Shared::with_auth(
                Users::with_root(user, password)
                    .map_err(|e| io::Error::other(format!("creating the root user: {e}")))?,
            ),
        })
    }
}

/// A running server. Dropping it (or calling [`ServerHandle::shutdown`])
/// stops it; for [`start_in_background`] that also waits for its thread.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop_signal: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address actually bound (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for drivers, e.g. `mongodb://127.0.0.1:27017`.
    /// A wildcard bind address is shown as the loopback address of its family.
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("mongodb://{addr}")
    }

    /// Stops the server (same as dropping the handle).
    pub fn shutdown(self) {}

    fn stop(&mut self) {
        let _ = self.stop_signal.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("mongo-wire server thread panicked");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` and serves on the current tokio runtime until the returned
/// handle is dropped. Use port 0 to get a free port (see [`ServerHandle::addr`]).
pub async fn start(addr: SocketAddr) -> io::Result<ServerHandle> {
    start_with(addr, Options::default()).await
}

/// [`start`] with [`Options`] (e.g. access control).
pub async fn start_with(addr: SocketAddr, options: Options) -> io::Result<ServerHandle> {
    let shared = options.shared()?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve(listener, shared, stopped));
    tracing::info!(%addr, "mongo-wire listening");
    Ok(ServerHandle {
        addr,
        stop_signal: stop,
        thread: None,
    })
}

/// Like [`start`], but on a dedicated thread with its own single-threaded
/// tokio runtime, for callers that are not async (or whose runtime may block,
/// e.g. while waiting for child processes). Dropping the handle stops the
/// server and joins the thread.
pub fn start_in_background(addr: SocketAddr) -> io::Result<ServerHandle> {
    start_in_background_with(addr, Options::default())
}

/// [`start_in_background`] with [`Options`] (e.g. access control).
pub fn start_in_background_with(addr: SocketAddr, options: Options) -> io::Result<ServerHandle> {
    let shared = options.shared()?;
    let (ready_tx, ready_rx) =
        std::sync::mpsc::channel::<io::Result<(SocketAddr, watch::Sender<bool>)>>();
    let thread = std::thread::Builder::new()
        .name("mongo-wire".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            runtime.block_on(async move {
                let bound = async {
                    let listener = TcpListener::bind(addr).await?;
                    let local = listener.local_addr()?;
                    Ok::<_, io::Error>((listener, local))
                };
                match bound.await {
                    Ok((listener, local)) => {
                        let (stop, stopped) = watch::channel(false);
                        if ready_tx.send(Ok((local, stop))).is_ok() {
                            tracing::info!(addr = %local, "mongo-wire listening (background thread)");
                            serve(listener, shared, stopped).await;
                        }
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok((addr, stop))) => Ok(ServerHandle {
            addr,
            stop_signal: stop,
            thread: Some(thread),
        }),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(
                "mongo-wire server thread exited during startup",
            ))
        }
    }
}

/// Resolves when the handle asks to stop or is gone.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(listener: TcpListener, shared: Shared, mut stopped: watch::Receiver<bool>) {
    let server = Arc::new(Server {
        shared,
        next_connection_id: AtomicI64::new(0),
        next_request_id: AtomicI32::new(0),
    });
    loop {
        tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = server.next_connection_id.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(%peer, connection = id, "accepted");
                    tokio::spawn(connection(server.clone(), stream, id, stopped.clone()));
                }
                Err(err) => {
                    // E.g. too many open files: keep serving the others.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!("mongo-wire stopped");
}

async fn connection(
    server: Arc<Server>,
    stream: TcpStream,
    id: i64,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut conn = Connection {
        id,
        session: Session::default(),
    };
    loop {
        let request = tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            request = wire::read_request(&mut reader) => request,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(connection = id, error = %err, "closing connection after a bad message");
                break;
            }
        };
        let Some(reply) = handle(&server, &mut conn, request) else {
            continue;
        };
        match reply {
            Ok(bytes) => {
                if let Err(err) = writer.write_all(&bytes).await {
                    tracing::debug!(connection = id, error = %err, "write failed");
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(connection = id, error = %err, "cannot encode reply; closing connection");
                break;
            }
        }
    }
    tracing::debug!(connection = id, "closed");
}

/// Runs a request and encodes its reply; `None` when the client asked for no
/// reply (`moreToCome`).
fn handle(server: &Server, conn: &mut Connection, request: Request) -> Option<io::Result<Vec<u8>>> {
    let reply_id = server.next_request_id.fetch_add(1, Ordering::Relaxed) + 1;
    match request {
        Request::Msg {
            request_id,
            more_to_come,
            command,
        } => {
            let reply = match command.get("$db") {
                Some(Bson::String(db)) => {
                    let db = db.clone();
                    commands::run(&server.shared, conn, &db, command)
                }
                _ => CommandError::new(
                    40571,
                    "Location40571",
                    "OP_MSG requests require a $db argument",
                )
                .to_reply(),
            };
            if more_to_come {
                return None;
            }
            Some(wire::encode_msg(reply_id, request_id, &reply))
        }
        Request::Query {
            request_id,
            collection,
            query,
        } => {
            let reply = legacy_command(server, conn, &collection, query);
            Some(wire::encode_reply(reply_id, request_id, &reply))
        }
    }
}

/// OP_QUERY is only accepted for the handshake on `<db>.$cmd`, like MongoDB 6+.
fn legacy_command(
    server: &Server,
    conn: &mut Connection,
    collection: &str,
    query: Document,
) -> Document {
    let Some(db) = collection.strip_suffix(".$cmd") else {
        return doc! { "$err": "OP_QUERY is only supported for commands", "code": 352 };
    };
    // Wrapped form `{$query: {...}, $readPreference: ...}` from older drivers.
    let command = match query.get("$query") {
        Some(Bson::Document(inner)) => inner.clone(),
        _ => query,
    };
    let name = command.keys().next().cloned().unwrap_or_default();
    if OP_QUERY_COMMANDS.contains(&name.as_str()) {
        commands::run(&server.shared, conn, db, command)
    } else {
        CommandError::new(
            352,
            "UnsupportedOpQueryCommand",
            format!(
                "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."
            ),
        )
        .to_reply()
    }
}

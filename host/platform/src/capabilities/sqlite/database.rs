//! One SQLite database and the connections components open to it. As in
//! Spin, every `open` is a connection of its own (so `last-insert-rowid`
//! and `changes` are per connection); its calls run on the blocking pool
//! ([`BlockingConnection`]).

use super::{Error, QueryResult, RowResult, Value};
use crate::sqlite_blocking::{BlockingConnection, BlockingError};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Batches of rows a streamed result keeps ready ahead of the guest's reads.
const BATCHES_AHEAD: usize = 2;
/// A batch is handed over at this many rows or bytes, or once its first
/// row has waited this long (checked as rows arrive: a row found after a
/// long search waits for the next one or the end).
const BATCH_ROWS: usize = 64;
const BATCH_BYTES: usize = 64 * 1024;
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// The bounds every connection works under (`[limits]`).
#[derive(Debug, Clone)]
pub struct SqliteLimits {
    /// Bytes of rows one statement may return (one row, when streamed).
    pub max_result_bytes: usize,
    /// How long a statement waits for another connection's lock.
    pub busy_timeout: Duration,
    /// Connections one instance may hold open.
    pub connections_per_instance: usize,
}

/// Where a database keeps its data.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    File(PathBuf),
    /// Memory, for the life of the process, shared by its connections.
    Memory,
}

pub struct Database {
    label: String,
    location: Location,
    /// What connections open: the file, or the in-memory database's URI.
    target: String,
    allow_attach_file: bool,
    limits: Arc<SqliteLimits>,
    /// Keeps an in-memory database alive between connections.
    _keeper: Option<Mutex<rusqlite::Connection>>,
}

impl Database {
    /// Prepares `label`'s database (blocking: creates the file's folder,
    /// or the in-memory database).
    pub(super) fn create(
        label: &str,
        location: Location,
        allow_attach_file: bool,
        limits: Arc<SqliteLimits>,
    ) -> anyhow::Result<Self> {
        let (target, keeper) = match &location {
            Location::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!(
                            "SQLite database `{label}`: cannot create its folder {}: {e}",
                            dir.display()
                        )
                    })?;
                }
                (path.display().to_string(), None)
            }
            Location::Memory => {
                // A name starting with `/` makes the memdb database shared
                // by every connection in the process that opens it.
                let target = format!("file:/spindle-sqlite-{}?vfs=memdb", uuid::Uuid::new_v4());
                let keeper = rusqlite::Connection::open(&target).map_err(|e| {
                    anyhow::anyhow!("SQLite database `{label}`: cannot create it in memory: {e}")
                })?;
                (target, Some(Mutex::new(keeper)))
            }
        };
        Ok(Database {
            label: label.to_string(),
            location,
            target,
            allow_attach_file,
            limits,
            _keeper: keeper,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn limits(&self) -> &SqliteLimits {
        &self.limits
    }

    /// Opens a new connection.
    pub async fn connect(self: &Arc<Self>) -> Result<Connection, Error> {
        let db = self.clone();
        let conn = tokio::task::spawn_blocking(move || db.open_blocking())
            .await
            .map_err(|e| Error::Io(format!("opening the database failed: {e}")))??;
        Ok(Connection {
            db: self.clone(),
            conn: BlockingConnection::new(conn),
        })
    }

    fn open_blocking(&self) -> Result<rusqlite::Connection, Error> {
        let fail = |e: rusqlite::Error| {
            tracing::warn!(database = %self.label, target = %self.target, "cannot open SQLite database: {e}");
            Error::Io(format!("cannot open database `{}`: {e}", self.label))
        };
        let conn = rusqlite::Connection::open(&self.target).map_err(fail)?;
        conn.busy_timeout(self.limits.busy_timeout).map_err(fail)?;
        if matches!(self.location, Location::File(_)) {
            // Readers and a writer at once; a no-op once the file is in WAL.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(fail)?;
        }
        let length = i32::try_from(self.limits.max_result_bytes).unwrap_or(i32::MAX);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, length)
            .map_err(fail)?;
        if self.allow_attach_file {
            conn.authorizer(Some(authorize_with_attach));
        } else {
            conn.authorizer(Some(authorize));
        }
        Ok(conn)
    }
}

/// Pragmas whose setting reaches the whole process (every SQLite database
/// the host has open, the embedded queue's included).
const PROCESS_WIDE_PRAGMAS: &[&str] = &[
    "temp_store_directory",
    "data_store_directory",
    "soft_heap_limit",
    "hard_heap_limit",
];

/// As Spin's: no `ATTACH` of a file (a new temporary or in-memory database
/// is fine, which is also what keeps `VACUUM INTO` from writing files);
/// and none of the process-wide pragmas.
fn authorize(context: AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Attach { filename } if !matches!(filename, "" | ":memory:") => {
            Authorization::Deny
        }
        _ => authorize_with_attach(context),
    }
}

/// `allow_attach_file = true` in the database's runtime config.
fn authorize_with_attach(context: AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Pragma { pragma_name, .. }
            if PROCESS_WIDE_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

/// A streamed result: its columns, its rows in batches as they are read,
/// and how the statement ended.
pub struct RowStream {
    pub columns: Vec<String>,
    pub rows: mpsc::Receiver<Vec<RowResult>>,
    pub done: oneshot::Receiver<Result<(), Error>>,
}

/// One connection a component opened.
#[derive(Clone)]
pub struct Connection {
    db: Arc<Database>,
    conn: BlockingConnection,
}

impl Connection {
    /// Runs one statement with `parameters` bound, its rows read in full
    /// (up to the result limit).
    pub async fn execute(
        &self,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let limits = self.db.limits.clone();
        self.run(move |conn| query_all(conn, &statement, parameters, &limits))
            .await?
    }

    /// Runs one statement, handing its rows over as they are read. The
    /// first step happens before this returns, so a statement that fails
    /// at once (a syntax error, a constraint) fails here; later errors
    /// arrive through `done`. Dropping `rows` interrupts the statement.
    pub async fn execute_stream(
        &self,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<RowStream, Error> {
        let limits = self.db.limits.clone();
        let (started_tx, started_rx) = oneshot::channel();
        let (rows_tx, rows) = mpsc::channel(BATCHES_AHEAD);
        let (done_tx, done) = oneshot::channel();
        let closed = rows_tx.clone();
        let conn = self.conn.clone();
        let label = self.db.label.clone();
        tokio::spawn(async move {
            let work = conn.run(move |conn| {
                query_stream(conn, &statement, parameters, &limits, started_tx, rows_tx)
            });
            tokio::select! {
                result = work => {
                    let result = result.unwrap_or_else(|e| Err(blocking_error(e)));
                    let _ = done_tx.send(result);
                }
                // The guest dropped the stream: stop the statement (the
                // dropped `work` interrupts it) and free the connection.
                () = closed.closed() => {
                    tracing::debug!(database = %label, "streamed statement abandoned by its reader");
                }
            }
        });
        match started_rx.await {
            Ok(Ok(columns)) => Ok(RowStream {
                columns,
                rows,
                done,
            }),
            Ok(Err(e)) => Err(e),
            // The work ended before it started the statement.
            Err(_) => Err(match done.await {
                Ok(Err(e)) => e,
                _ => Error::Io("the statement did not start".into()),
            }),
        }
    }

    /// The rowid of this connection's last successful INSERT, or 0.
    pub async fn last_insert_rowid(&self) -> Result<i64, Error> {
        self.run(|conn| conn.last_insert_rowid()).await
    }

    /// Rows changed by this connection's last INSERT, UPDATE or DELETE.
    pub async fn changes(&self) -> Result<u64, Error> {
        self.run(|conn| conn.changes()).await
    }

    /// Runs every statement in `sql` (start-up seeding).
    pub(super) async fn execute_batch(&self, sql: String) -> Result<(), Error> {
        let limits = self.db.limits.clone();
        self.run(move |conn| conn.execute_batch(&sql).map_err(|e| sql_error(e, &limits)))
            .await?
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.conn.run(f).await.map_err(blocking_error)
    }
}

fn blocking_error(e: BlockingError) -> Error {
    Error::Io(format!("the database call failed: {e}"))
}

fn query_all(
    conn: &mut rusqlite::Connection,
    statement: &str,
    parameters: Vec<Value>,
    limits: &SqliteLimits,
) -> Result<QueryResult, Error> {
    let fail = |e| sql_error(e, limits);
    let mut stmt = conn.prepare_cached(statement).map_err(fail)?;
    let columns = column_names(&stmt);
    let width = columns.len();
    let mut size: usize = columns.iter().map(|c| c.len()).sum();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(parameters.into_iter().map(to_sql)))
        .map_err(fail)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(fail)? {
        let row = to_row(row, width).map_err(fail)?;
        size = size.saturating_add(row_size(&row));
        if size > limits.max_result_bytes {
            return Err(too_large(limits));
        }
        out.push(row);
    }
    Ok(QueryResult { columns, rows: out })
}

/// Sends the columns (or the first failure) once the first step is done,
/// then the rows as the receiver takes them.
fn query_stream(
    conn: &mut rusqlite::Connection,
    statement: &str,
    parameters: Vec<Value>,
    limits: &SqliteLimits,
    started: oneshot::Sender<Result<Vec<String>, Error>>,
    rows_tx: mpsc::Sender<Vec<RowResult>>,
) -> Result<(), Error> {
    let fail = |e| sql_error(e, limits);
    let mut started = Some(started);
    let mut first = |result: Result<Vec<String>, Error>| {
        if let Some(tx) = started.take() {
            let _ = tx.send(result);
        }
    };
    let mut stmt = match conn.prepare_cached(statement) {
        Ok(stmt) => stmt,
        Err(e) => {
            first(Err(fail(e)));
            return Ok(());
        }
    };
    let columns = column_names(&stmt);
    let width = columns.len();
    let mut rows = match stmt.query(rusqlite::params_from_iter(parameters.into_iter().map(to_sql))) {
        Ok(rows) => rows,
        Err(e) => {
            first(Err(fail(e)));
            return Ok(());
        }
    };
    let mut columns = Some(columns);
    let mut batch = Batch::default();
    loop {
        let next = rows
            .next()
            .map_err(fail)
            .and_then(|row| row.map(|r| to_row(r, width).map_err(fail)).transpose())
            .and_then(|row| match row {
                Some(row) if row_size(&row) > limits.max_result_bytes => Err(too_large(limits)),
                other => Ok(other),
            });
        if let Some(columns) = columns.take() {
            // The first step decides what `execute_stream` returns.
            match &next {
                Err(e) => {
                    first(Err(e.clone()));
                    return Ok(());
                }
                Ok(_) => first(Ok(columns)),
            }
        }
        // What was read before an error or the end still goes out.
        let row = match next {
            Ok(Some(row)) => row,
            Ok(None) => {
                batch.send(&rows_tx);
                return Ok(());
            }
            Err(e) => {
                batch.send(&rows_tx);
                return Err(e);
            }
        };
        if batch.push(row) && !batch.send(&rows_tx) {
            // Nobody reads any more.
            return Ok(());
        }
    }
}

/// Rows on their way to the reader.
#[derive(Default)]
struct Batch {
    rows: Vec<RowResult>,
    bytes: usize,
    since: Option<Instant>,
}

impl Batch {
    /// Adds a row; whether the batch should go now.
    fn push(&mut self, row: RowResult) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.bytes += row_size(&row);
        self.rows.push(row);
        self.rows.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES || since.elapsed() >= BATCH_WAIT
    }

    /// Hands the rows over, waiting for room; false when nobody reads.
    fn send(&mut self, tx: &mpsc::Sender<Vec<RowResult>>) -> bool {
        self.bytes = 0;
        self.since = None;
        let rows = std::mem::take(&mut self.rows);
        rows.is_empty() || tx.blocking_send(rows).is_ok()
    }
}

fn column_names(stmt: &rusqlite::Statement<'_>) -> Vec<String> {
    stmt.column_names().into_iter().map(String::from).collect()
}

fn to_row(row: &rusqlite::Row<'_>, width: usize) -> rusqlite::Result<RowResult> {
    let mut values = Vec::with_capacity(width);
    for i in 0..width {
        values.push(from_sql(row.get_ref(i)?));
    }
    Ok(RowResult { values })
}

fn to_sql(value: Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Integer(i) => V::Integer(i),
        Value::Real(r) => V::Real(r),
        Value::Text(t) => V::Text(t),
        Value::Blob(b) => V::Blob(b),
        Value::Null => V::Null,
    }
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        // SQLite does not check that TEXT is UTF-8; what is not comes back
        // with U+FFFD in place of the bad bytes.
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// What a row costs the host to hold, roughly.
fn row_size(row: &RowResult) -> usize {
    let payload: usize = row
        .values
        .iter()
        .map(|v| match v {
            Value::Text(t) => t.len(),
            Value::Blob(b) => b.len(),
            _ => 0,
        })
        .sum();
    std::mem::size_of::<RowResult>() + row.values.len() * std::mem::size_of::<Value>() + payload
}

fn too_large(limits: &SqliteLimits) -> Error {
    Error::Io(format!(
        "query result exceeds limit of {} bytes; select fewer rows or columns (or raise [limits] sqlite_max_result_mb in the runtime config)",
        limits.max_result_bytes
    ))
}

/// SQLite's own message, with what a limit adds to it.
fn sql_error(e: rusqlite::Error, limits: &SqliteLimits) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Io(format!(
            "{e} (waited {:?} for another connection; [limits] sqlite_busy_timeout_secs)",
            limits.busy_timeout
        )),
        Some(ErrorCode::TooBig) => Error::Io(format!(
            "{e} (values are limited to {} bytes; [limits] sqlite_max_result_mb)",
            limits.max_result_bytes
        )),
        // Denied statements fail with SQLITE_AUTH, denied ATTACHes with
        // "not authorized".
        Some(ErrorCode::AuthorizationForStatementDenied) => denied(&e),
        _ if e.to_string().starts_with("not authorized") => denied(&e),
        _ => Error::Io(e.to_string()),
    }
}

fn denied(e: &rusqlite::Error) -> Error {
    Error::Io(format!(
        "{e}: statements may not ATTACH files (nor VACUUM INTO one) or set process-wide pragmas"
    ))
}

/// The default database's file under the state directory.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sqlite").join("default.db")
}

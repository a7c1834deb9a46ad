//! The file backend's metadata index, `<dir>/index.db` (SQLite): rows
//! (bucket, key, value, id), so `find` reads the descriptions that may
//! match instead of every description in the bucket.
//!
//! The descriptions stay the truth and the index is kept a superset of
//! them: a row is committed (with `synchronous = FULL`, so it survives a
//! power loss) before a description holding it is written, and removed
//! only after no description holds it any more. A crash anywhere leaves
//! extra rows, never missing ones, and `find` checks every candidate
//! against its description. An index that is missing (a new store, or one
//! from before the index) or unreadable is rebuilt from the descriptions
//! when the store opens.

use super::{BlobError, ObjectId};
use rusqlite::{Connection, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// `PRAGMA user_version` once the rows were built from the descriptions.
const BUILT: i64 = 1;

/// One metadata pair of one file.
pub(super) struct Row {
    pub bucket: String,
    pub id: ObjectId,
    pub key: String,
    pub value: String,
}

#[derive(Clone)]
pub(super) struct Index {
    conn: Arc<Mutex<Connection>>,
}

impl Index {
    /// Opens the index at `path`; when it is new or unreadable, fills it
    /// with `descriptions()` (every metadata pair of every stored file).
    pub fn open(
        path: &Path,
        descriptions: impl FnOnce() -> anyhow::Result<Vec<Row>>,
    ) -> anyhow::Result<Index> {
        let mut conn = match open_checked(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the blob index is unreadable; rebuilding it from the descriptions");
                for suffix in ["", "-wal", "-shm"] {
                    let file = format!("{}{suffix}", path.display());
                    match std::fs::remove_file(&file) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(anyhow::anyhow!("removing the damaged index {file}: {e}"));
                        }
                    }
                }
                open_checked(path)?
            }
        };
        if built(&conn)? != BUILT {
            // Under SQLite's write lock, so a second process opening the
            // store at once waits and then finds the index built. Rows are
            // only added (never cleared first), so a file another process
            // creates meanwhile keeps the row it committed.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if built(&tx)? != BUILT {
                let rows = descriptions()?;
                tracing::info!(path = %path.display(), rows = rows.len(), "building the blob index");
                {
                    let mut insert = tx.prepare(
                        "INSERT OR IGNORE INTO entries (bucket, key, value, id) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for row in rows {
                        insert.execute(params![row.bucket, row.key, row.value, row.id.to_hex()])?;
                    }
                }
                tx.pragma_update(None, "user_version", BUILT)?;
            }
            tx.commit()?;
        }
        Ok(Index {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Records `pairs` for a file; call before a description holding them
    /// is written.
    pub async fn add(
        &self,
        bucket: &str,
        id: ObjectId,
        pairs: Vec<(String, String)>,
    ) -> Result<(), BlobError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let (bucket, id) = (bucket.to_string(), id.to_hex());
        self.run("adding to the blob index", move |conn| {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO entries (bucket, key, value, id) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (key, value) in &pairs {
                    insert.execute(params![bucket, key, value, id])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Forgets `pairs` of a file; call after its description stopped
    /// holding them.
    pub async fn remove(
        &self,
        bucket: &str,
        id: ObjectId,
        pairs: Vec<(String, String)>,
    ) -> Result<(), BlobError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let (bucket, id) = (bucket.to_string(), id.to_hex());
        self.run("removing from the blob index", move |conn| {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM entries WHERE bucket = ?1 AND key = ?2 AND value = ?3 AND id = ?4",
                )?;
                for (key, value) in &pairs {
                    delete.execute(params![bucket, key, value, id])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Forgets every row of a file; call after its description is deleted.
    pub async fn remove_file(&self, bucket: &str, id: ObjectId) -> Result<(), BlobError> {
        let (bucket, id) = (bucket.to_string(), id.to_hex());
        self.run("removing from the blob index", move |conn| {
            conn.prepare_cached("DELETE FROM entries WHERE bucket = ?1 AND id = ?2")?
                .execute(params![bucket, id])
                .map(drop)
        })
        .await
    }

    /// Files that may have `key` = `value` (a superset: check each).
    pub async fn candidates(
        &self,
        bucket: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<ObjectId>, BlobError> {
        let (bucket, key, value) = (bucket.to_string(), key.to_string(), value.to_string());
        self.run("querying the blob index", move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT id FROM entries WHERE bucket = ?1 AND key = ?2 AND value = ?3",
            )?;
            let ids = query
                .query_map(params![bucket, key, value], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Only this module writes ids, always as ObjectId hex.
            Ok(ids
                .iter()
                .filter_map(|id| ObjectId::parse_str(id).ok())
                .collect())
        })
        .await
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn run<R: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BlobError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic elsewhere cannot leave the connection half-used: every
            // statement ran or its transaction rolled back when dropped.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn).map_err(|e| failed(what, e))
        })
        .await
        .map_err(|e| BlobError::backend(what, e))?
    }
}

fn failed(doing: &'static str, e: rusqlite::Error) -> BlobError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        BlobError::StorageFull {
            doing,
            cause: e.to_string(),
        }
    } else {
        BlobError::backend(doing, e)
    }
}

fn built(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Opens the database and checks that it is whole.
fn open_checked(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    // Another process (a separate convert worker) may hold the write lock.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    // A commit is durable before the description it covers is written.
    conn.pragma_update(None, "synchronous", "FULL")?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    anyhow::ensure!(check == "ok", "quick_check: {check}");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS entries (
             bucket TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, id TEXT NOT NULL,
             PRIMARY KEY (bucket, key, value, id)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS entries_by_file ON entries (bucket, id);",
    )?;
    Ok(conn)
}

//! The embedded backend (`type = "spin"`): an SQLite file with Spin's own
//! table, `spin_key_value(store, key, value)`, one row per key of each
//! store label, so a file Spin wrote can be pointed at with `path`.
//!
//! The file opens on first use (a process that never touches a store, such
//! as the convert worker, creates nothing). WAL with `synchronous = FULL`:
//! a write is on disk when its call returns, and readers do not wait for
//! writers. Read-modify-write calls (increment, compare-and-swap) take the
//! write lock up front (`BEGIN IMMEDIATE`), so they stay atomic against
//! other connections and other processes using the same file.

use super::{KeyCursor, Snapshot, entry_bytes};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keys per page when listing.
const PAGE: i64 = 500;

pub struct EmbeddedDb {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl EmbeddedDb {
    /// A database at `path`, opened when first used.
    pub fn new(path: PathBuf) -> Self {
        EmbeddedDb {
            path,
            conn: Mutex::new(None),
        }
    }

    pub fn describe(&self) -> String {
        format!("SQLite file {}", self.path.display())
    }

    fn open(path: &Path) -> Result<Connection, String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot open {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(&e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail(&e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| fail(&e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                store TEXT NOT NULL,
                key   TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (store, key)
            )",
        )
        .map_err(|e| fail(&e))?;
        Ok(conn)
    }

    /// Runs `f` on the connection on the blocking pool, opening it first
    /// if needed (a failed open is retried by the next call).
    async fn with<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, String> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.conn.lock().unwrap_or_else(|p| p.into_inner());
            let conn = match &mut *guard {
                Some(conn) => conn,
                slot => slot.insert(Self::open(&db.path)?),
            };
            f(conn).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the embedded store's task failed: {e}"))?
    }

    pub async fn get(self: &Arc<Self>, label: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let (label, key) = (label.to_string(), key.to_string());
        self.with(move |c| read(c, &label, &key)).await
    }

    pub async fn exists(self: &Arc<Self>, label: &str, key: &str) -> Result<bool, String> {
        let (label, key) = (label.to_string(), key.to_string());
        self.with(move |c| {
            c.prepare_cached("SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .exists(params![label, key])
        })
        .await
    }

    /// Keys in order, `PAGE` at a time, each page starting after the last.
    pub async fn key_page(
        self: &Arc<Self>,
        label: &str,
        cursor: KeyCursor,
    ) -> Result<(Vec<String>, KeyCursor), String> {
        let after = match cursor {
            KeyCursor::Start => None,
            KeyCursor::After(key) => Some(key),
            KeyCursor::Scan(_) | KeyCursor::Done => return Ok((Vec::new(), KeyCursor::Done)),
        };
        let label = label.to_string();
        let keys = self
            .with(move |c| {
                // Two statements, so each page is a range of the index.
                let key = |row: &rusqlite::Row<'_>| row.get_ref(0).map(text);
                match &after {
                    None => c
                        .prepare_cached(
                            "SELECT key FROM spin_key_value WHERE store = ?1
                             ORDER BY key LIMIT ?2",
                        )?
                        .query_map(params![label, PAGE], key)?
                        .collect::<rusqlite::Result<Vec<String>>>(),
                    Some(after) => c
                        .prepare_cached(
                            "SELECT key FROM spin_key_value WHERE store = ?1 AND key > ?2
                             ORDER BY key LIMIT ?3",
                        )?
                        .query_map(params![label, after, PAGE], key)?
                        .collect::<rusqlite::Result<Vec<String>>>(),
                }
            })
            .await?;
        let next = match keys.last() {
            Some(last) if keys.len() as i64 == PAGE => KeyCursor::After(last.clone()),
            _ => KeyCursor::Done,
        };
        Ok((keys, next))
    }

    /// The values of `keys`, in order; stops after the value that takes
    /// the answer over `limit` (the caller then refuses it).
    pub async fn get_many(
        self: &Arc<Self>,
        label: &str,
        keys: Vec<String>,
        limit: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, String> {
        let label = label.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut values = Vec::with_capacity(keys.len());
            let mut bytes = 0;
            for key in &keys {
                let value = read(&tx, &label, key)?;
                bytes += entry_bytes(key, value.as_deref());
                values.push(value);
                if bytes > limit {
                    break;
                }
            }
            Ok(values)
        })
        .await
    }

    /// Sets every pair in one transaction.
    pub async fn set_many(
        self: &Arc<Self>,
        label: &str,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), String> {
        let label = label.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            for (key, value) in &pairs {
                write(&tx, &label, key, value)?;
            }
            tx.commit()
        })
        .await
    }

    pub async fn delete_many(self: &Arc<Self>, label: &str, keys: Vec<String>) -> Result<(), String> {
        let label = label.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")?;
                for key in &keys {
                    stmt.execute(params![label, key])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// The value is kept as decimal text, as Redis keeps it, so function
    /// code reads the same bytes on either backend.
    pub async fn increment(
        self: &Arc<Self>,
        label: &str,
        key: &str,
        delta: i64,
    ) -> Result<i64, String> {
        let (label, key) = (label.to_string(), key.to_string());
        let shown = key.clone();
        let result = self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let old = read(&tx, &label, &key)?;
                let sum = match old.as_deref().map(parse_integer) {
                    None => Some(delta),
                    Some(Some(n)) => n.checked_add(delta),
                    Some(None) => return Ok(Err("its value is not a decimal integer")),
                };
                let Some(sum) = sum else {
                    return Ok(Err("the increment would overflow a 64-bit integer"));
                };
                write(&tx, &label, &key, sum.to_string().as_bytes())?;
                tx.commit()?;
                Ok(Ok(sum))
            })
            .await?;
        result.map_err(|why| format!("cannot increment `{shown}`: {why}"))
    }

    pub async fn current(
        self: &Arc<Self>,
        label: &str,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Snapshot), String> {
        let value = self.get(label, key).await?;
        let snapshot = digest(value.as_deref());
        Ok((value, snapshot))
    }

    /// Compares and writes in one immediate transaction.
    pub async fn swap(
        self: &Arc<Self>,
        label: &str,
        key: &str,
        seen: &Snapshot,
        value: Vec<u8>,
    ) -> Result<bool, String> {
        let (label, key, seen) = (label.to_string(), key.to_string(), seen.clone());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = read(&tx, &label, &key)?;
            if digest(now.as_deref()) != seen {
                return Ok(false);
            }
            write(&tx, &label, &key, &value)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

fn read(c: &Connection, label: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
        .query_row(params![label, key], |row| row.get_ref(0).map(bytes))
        .optional()
}

fn write(c: &Connection, label: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![label, key, value])
    .map(drop)
}

/// A stored value as bytes, whether another writer stored it as a blob or
/// as text.
fn bytes(v: ValueRef<'_>) -> Vec<u8> {
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    }
}

fn text(v: ValueRef<'_>) -> String {
    String::from_utf8_lossy(&bytes(v)).into_owned()
}

fn parse_integer(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn digest(value: Option<&[u8]>) -> Snapshot {
    Snapshot(value.map(|v| Sha256::digest(v).to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn increment_refuses_what_is_not_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::new(dir.path().join("kv.db")));
        db.set_many("s", vec![("word".into(), b"ten".to_vec())])
            .await
            .unwrap();
        let e = db.increment("s", "word", 1).await.unwrap_err();
        assert!(e.contains("not a decimal integer"), "{e}");
        db.set_many("s", vec![("max".into(), i64::MAX.to_string().into_bytes())])
            .await
            .unwrap();
        let e = db.increment("s", "max", 1).await.unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        assert_eq!(db.increment("s", "max", -1).await.unwrap(), i64::MAX - 1);
    }

    #[tokio::test]
    async fn a_file_spin_wrote_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sqlite_key_value.db");
        // Spin's table, with a value as Spin writes it.
        let spin = Connection::open(&path).unwrap();
        spin.execute_batch(
            "CREATE TABLE spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL,
             value BLOB NOT NULL, PRIMARY KEY (store, key));
             INSERT INTO spin_key_value VALUES ('default', 'greeting', X'6869');",
        )
        .unwrap();
        drop(spin);
        let db = Arc::new(EmbeddedDb::new(path));
        assert_eq!(
            db.get("default", "greeting").await.unwrap(),
            Some(b"hi".to_vec())
        );
        assert_eq!(db.get("other", "greeting").await.unwrap(), None);
    }
}

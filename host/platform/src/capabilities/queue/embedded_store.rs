//! The embedded queue's storage: one SQLite file (`queue.db`, WAL,
//! `synchronous=FULL` so a commit is on disk before publish returns).
//!
//! `messages` holds every message not yet settled: `visible_at` (Unix ms)
//! delays retries, and `claimed` marks the ones a handler is working on.
//! Claims live only as long as the process that made them: only one process
//! may open the directory (see `embedded.rs`), so opening it resets every
//! claim, and the messages a dead process was handling are delivered again.
//! `attempt` counts the deliveries handed out so far: it is raised in the
//! same transaction that claims the message, before any handler runs, so a
//! delivery that crashes the process still counts. Ack deletes the row;
//! retry sets `visible_at` (a deferral also gives the count back);
//! dead-letter moves the row to `dead_letters`, with the reason; replay
//! moves it back with the count at 0 and `replayed` set.
//!
//! All calls are blocking; `embedded.rs` runs them on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{DeadLetter, DeadLetterLimits, QueueError};
use crate::clock::now_ms;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    attempt     INTEGER NOT NULL,
    visible_at  INTEGER NOT NULL,
    claimed     INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    replayed    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, claimed, visible_at, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    attempt     INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    dead_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, id);
";

/// `PRAGMA user_version` of [`SCHEMA`]. Version 0 (before delivery counting)
/// kept in `attempt` the number of the next delivery and had no `replayed`.
const SCHEMA_VERSION: i64 = 1;

/// A message taken for handling.
#[derive(Debug)]
pub(super) struct Claimed {
    pub(super) id: i64,
    pub(super) message_id: String,
    pub(super) body: Vec<u8>,
    /// This delivery's number, already stored.
    pub(super) attempt: u32,
    pub(super) replayed: bool,
}

pub(super) struct Store {
    dir: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating) `<dir>/queue.db` and releases every claim left by a
    /// previous process.
    pub(super) fn open(dir: &Path) -> Result<Store, QueueError> {
        let store_err = |context: &str| {
            let dir = dir.display().to_string();
            let context = context.to_string();
            move |source| QueueError::Store {
                dir,
                context,
                source,
            }
        };
        let conn = Connection::open(dir.join("queue.db")).map_err(store_err("cannot open"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(store_err("cannot set the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_err("cannot switch to WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(store_err("cannot set synchronous=FULL"))?;
        migrate(&conn).map_err(store_err("cannot create or upgrade the tables"))?;
        let released = conn
            .execute("UPDATE messages SET claimed = 0 WHERE claimed = 1", [])
            .map_err(store_err("cannot release old claims"))?;
        if released > 0 {
            tracing::warn!(
                dir = %dir.display(),
                released,
                "messages that were being handled when the last process stopped will be delivered again"
            );
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn with<T>(
        &self,
        context: &str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, QueueError> {
        // A poisoned lock only means another call panicked; the connection
        // itself is still consistent (SQLite rolled back), so keep using it.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).map_err(|source| QueueError::Store {
            dir: self.dir.display().to_string(),
            context: context.to_string(),
            source,
        })
    }

    pub(super) fn insert(
        &self,
        queue: &str,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), QueueError> {
        self.with("cannot store the message", |c| {
            c.execute(
                "INSERT INTO messages (queue, message_id, body, attempt, visible_at)
                 VALUES (?1, ?2, ?3, 0, ?4)",
                params![queue, message_id, body, sql_ms(now_ms())],
            )
            .map(drop)
        })
    }

    /// Takes the oldest visible, unclaimed message of `queue`, counting
    /// the delivery.
    pub(super) fn claim(&self, queue: &str) -> Result<Option<Claimed>, QueueError> {
        self.with("cannot take a message", |c| {
            let tx = c.transaction()?;
            let claimed = tx
                .query_row(
                    "SELECT id, message_id, body, attempt + 1, replayed FROM messages
                     WHERE queue = ?1 AND claimed = 0 AND visible_at <= ?2
                     ORDER BY visible_at, id LIMIT 1",
                    params![queue, sql_ms(now_ms())],
                    |row| {
                        Ok(Claimed {
                            id: row.get(0)?,
                            message_id: row.get(1)?,
                            body: row.get(2)?,
                            attempt: row.get(3)?,
                            replayed: row.get(4)?,
                        })
                    },
                )
                .optional()?;
            if let Some(m) = &claimed {
                tx.execute(
                    "UPDATE messages SET claimed = 1, attempt = ?2 WHERE id = ?1",
                    params![m.id, m.attempt],
                )?;
            }
            tx.commit()?;
            Ok(claimed)
        })
    }

    /// How long until the next unclaimed message of `queue` becomes
    /// visible; `None` when there is none.
    pub(super) fn next_visible_in(&self, queue: &str) -> Result<Option<Duration>, QueueError> {
        let next: Option<i64> = self.with("cannot look for waiting messages", |c| {
            c.query_row(
                "SELECT MIN(visible_at) FROM messages WHERE queue = ?1 AND claimed = 0",
                [queue],
                |row| row.get(0),
            )
        })?;
        Ok(next.map(|at| {
            Duration::from_millis(at.saturating_sub(sql_ms(now_ms())).max(0).unsigned_abs())
        }))
    }

    pub(super) fn ack(&self, id: i64) -> Result<(), QueueError> {
        self.with("cannot remove a handled message", |c| {
            c.execute("DELETE FROM messages WHERE id = ?1", [id])
                .map(drop)
        })
    }

    /// Releases the message until `delay` has passed; its next delivery
    /// will be number `next_attempt`.
    pub(super) fn retry(
        &self,
        id: i64,
        next_attempt: u32,
        reason: &str,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        self.with("cannot schedule a retry", |c| {
            c.execute(
                "UPDATE messages SET claimed = 0, attempt = ?2, last_error = ?3, visible_at = ?4
                 WHERE id = ?1",
                params![
                    id,
                    next_attempt.saturating_sub(1),
                    reason,
                    sql_ms(now_ms()).saturating_add(delay_ms)
                ],
            )
            .map(drop)
        })
    }

    pub(super) fn dead_letter(&self, id: i64, reason: &str) -> Result<(), QueueError> {
        self.with("cannot move a message to the dead letters", |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO dead_letters (queue, message_id, body, attempt, reason, dead_at)
                 SELECT queue, message_id, body, attempt, ?2, ?3 FROM messages WHERE id = ?1",
                params![id, reason, sql_ms(now_ms())],
            )?;
            tx.execute("DELETE FROM messages WHERE id = ?1", [id])?;
            tx.commit()
        })
    }

    pub(super) fn dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with("cannot read the dead letters", |c| {
            let mut stmt = c.prepare(
                "SELECT body, message_id, attempt, reason, dead_at FROM dead_letters
                 WHERE queue = ?1 ORDER BY id LIMIT ?2",
            )?;
            stmt.query_map(params![queue, limit], |row| {
                Ok(DeadLetter {
                    body: row.get(0)?,
                    message_id: row.get(1)?,
                    attempt: row.get(2)?,
                    reason: row.get(3)?,
                    dead_at_ms: row
                        .get::<_, i64>(4)
                        .ok()
                        .and_then(|t| u64::try_from(t).ok()),
                })
            })?
            .collect()
        })
    }

    /// Moves up to `limit` of `queue`'s dead letters, oldest first, back to
    /// the queue with the count reset and `replayed` set.
    pub(super) fn replay(&self, queue: &str, limit: usize) -> Result<usize, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with("cannot replay the dead letters", |c| {
            let tx = c.transaction()?;
            let moved = tx.execute(
                "INSERT INTO messages (queue, message_id, body, attempt, visible_at, replayed)
                 SELECT queue, message_id, body, 0, ?3, 1 FROM dead_letters
                 WHERE queue = ?1 ORDER BY id LIMIT ?2",
                params![queue, limit, sql_ms(now_ms())],
            )?;
            tx.execute(
                "DELETE FROM dead_letters WHERE id IN
                 (SELECT id FROM dead_letters WHERE queue = ?1 ORDER BY id LIMIT ?2)",
                params![queue, limit],
            )?;
            tx.commit()?;
            Ok(moved)
        })
    }

    /// Drops `queue`'s dead letters older than `max_age` and, past
    /// `max_count`, the oldest; returns how many went.
    pub(super) fn trim_dead_letters(
        &self,
        queue: &str,
        limits: DeadLetterLimits,
    ) -> Result<usize, QueueError> {
        let max_age = i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX);
        let keep = i64::try_from(limits.max_count).unwrap_or(i64::MAX);
        self.with("cannot trim the dead letters", |c| {
            let tx = c.transaction()?;
            let old = tx.execute(
                "DELETE FROM dead_letters WHERE queue = ?1 AND dead_at < ?2",
                params![queue, sql_ms(now_ms()).saturating_sub(max_age)],
            )?;
            let over = tx.execute(
                "DELETE FROM dead_letters WHERE queue = ?1 AND id NOT IN
                 (SELECT id FROM dead_letters WHERE queue = ?1 ORDER BY id DESC LIMIT ?2)",
                params![queue, keep],
            )?;
            tx.commit()?;
            Ok(old + over)
        })
    }

    pub(super) fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        self.with("cannot delete the queue", |c| {
            c.execute("DELETE FROM messages WHERE queue = ?1", [queue])?;
            c.execute("DELETE FROM dead_letters WHERE queue = ?1", [queue])
                .map(drop)
        })
    }

    pub(super) fn ping(&self) -> Result<(), QueueError> {
        self.with("does not answer", |c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
        })
    }
}

/// Creates the tables, or brings a version-0 file up to [`SCHEMA_VERSION`].
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let has_messages: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
        [],
        |row| row.get(0),
    )?;
    if has_messages && version == 0 {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE messages ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;
             UPDATE messages SET attempt = attempt - 1;
             COMMIT;",
        )?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// Milliseconds as the queue's tables store them (SQLite integers).
fn sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

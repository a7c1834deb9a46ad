//! The Redis backend (`type = "redis"`), laid out as Spin's: each key is a
//! Redis string under the key itself, with no prefix and whatever the
//! store's label, so an application moving from Spin finds its data.
//! Listing keys walks the database with `SCAN` (Spin uses it for
//! spin-sdk 7's `get-keys`, `KEYS *` elsewhere; `SCAN` never blocks the
//! server on a large keyspace).
//!
//! One multiplexed, reconnecting connection per server
//! (`ConnectionManager`), made on first use. Compare-and-swap runs as a
//! Lua script that compares a SHA-1 of the value in the server, so it is
//! atomic without a connection of its own for `WATCH`.

use super::{KeyCursor, Snapshot};
use crate::urls::redact_url;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::LazyLock;
use std::time::Duration;

/// Keys `SCAN` is asked for per page (a hint; Redis may return more or fewer).
const SCAN_COUNT: u32 = 1000;

/// The value and its SHA-1, or nil when the key is not set.
static CURRENT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local v = redis.call('GET', KEYS[1])
         if v then return {v, redis.sha1hex(v)} end
         return false",
    )
});

/// Sets KEYS[1] to ARGV[2] if its value's SHA-1 is ARGV[1] ('' for a key
/// that must not be set); 1 when it did.
static SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local v = redis.call('GET', KEYS[1])
         local now = ''
         if v then now = redis.sha1hex(v) end
         if now ~= ARGV[1] then return 0 end
         redis.call('SET', KEYS[1], ARGV[2])
         return 1",
    )
});

pub struct RedisServer {
    url: String,
    conn: ConnectionManager,
}

impl RedisServer {
    /// Checks the URL; the connection is made on first use.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid Redis URL {}: {e}", redact_url(url)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("Redis {}: {e}", redact_url(url)))?;
        Ok(RedisServer {
            url: url.to_string(),
            conn,
        })
    }

    pub fn describe(&self) -> String {
        format!("Redis at {}", redact_url(&self.url))
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.run::<String>(&redis::cmd("PING")).await.map(drop)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, String> {
        self.run(redis::cmd("EXISTS").arg(key)).await
    }

    /// One `SCAN` step. Keys that are not UTF-8 (another program's) are
    /// left out: a component could not name them.
    pub async fn key_page(&self, cursor: KeyCursor) -> Result<(Vec<String>, KeyCursor), String> {
        let at = match cursor {
            KeyCursor::Start => 0,
            KeyCursor::Scan(at) => at,
            KeyCursor::After(_) | KeyCursor::Done => return Ok((Vec::new(), KeyCursor::Done)),
        };
        let (next, raw): (u64, Vec<Vec<u8>>) = self
            .run(redis::cmd("SCAN").arg(at).arg("COUNT").arg(SCAN_COUNT))
            .await?;
        let keys = raw
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .collect();
        let next = if next == 0 {
            KeyCursor::Done
        } else {
            KeyCursor::Scan(next)
        };
        Ok((keys, next))
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        self.run(redis::cmd("MGET").arg(keys)).await
    }

    pub async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), String> {
        let mut cmd = redis::cmd("MSET");
        for (key, value) in &pairs {
            cmd.arg(key).arg(value);
        }
        self.run(&cmd).await
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), String> {
        self.run::<u64>(redis::cmd("DEL").arg(keys)).await.map(drop)
    }

    /// `INCRBY`, which stores the sum as decimal text and refuses a value
    /// that is not an integer.
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.run(redis::cmd("INCRBY").arg(key).arg(delta))
            .await
            .map_err(|e| format!("cannot increment `{key}`: {e}"))
    }

    pub async fn current(&self, key: &str) -> Result<(Option<Vec<u8>>, Snapshot), String> {
        let found: Option<(Vec<u8>, String)> = CURRENT
            .key(key)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(match found {
            Some((value, sha1)) => (Some(value), Snapshot(Some(sha1.into_bytes()))),
            None => (None, Snapshot(None)),
        })
    }

    pub async fn swap(&self, key: &str, seen: &Snapshot, value: Vec<u8>) -> Result<bool, String> {
        let expected = seen.0.as_deref().unwrap_or_default();
        let swapped: i64 = SWAP
            .key(key)
            .arg(expected)
            .arg(value)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(swapped == 1)
    }
}

//! Throttles for password guessing and signups, kept in the `auth_throttle`
//! table of the same database as the users, so they survive a restart and
//! are shared by every replica.
//!
//! A row is one counted event: a failed login for an account (its email), a
//! failed login from a client address (its IP), or a signup from an
//! address. An attempt records its rows *before* the expensive work
//! (Argon2) and counts again afterwards, so concurrent guesses cannot all
//! pass a check made before any of them was recorded: at most `max` attempts
//! per subject are ever in the window. A subject already at its limit is
//! refused at once with the seconds until its oldest event leaves the
//! window, and the refusal itself is not recorded, so waiting that long
//! always works. Rows older than the window are pruned as attempts arrive.
//!
//! Statements are portable between MariaDB and the embedded SQLite engine
//! and bind every value.

use spin_sdk::mysql::{Connection, Row};

use crate::users::StoreError;

/// `PRIMARY KEY (kind, subject, attempt)` serves the per-subject counts and
/// deletes. The `UNIQUE (at, ...)` constraint is there for its index, which
/// makes pruning by age a range scan: portable DDL has no plain inline index
/// (and MySQL has no `CREATE INDEX IF NOT EXISTS`); `attempt` makes it
/// unique anyway.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS auth_throttle (kind VARCHAR(16) NOT NULL, subject VARCHAR(255) NOT NULL, attempt CHAR(36) NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (kind, subject, attempt), UNIQUE (at, attempt, kind))";
const COUNT: &str = "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM auth_throttle WHERE kind = ? AND subject = ? AND at > ?";
const RECORD: &str = "INSERT INTO auth_throttle (kind, subject, attempt, at) VALUES (?, ?, ?, ?)";
const FORGET_ATTEMPT: &str =
    "DELETE FROM auth_throttle WHERE kind = ? AND subject = ? AND attempt = ?";
const CLEAR_SUBJECT: &str = "DELETE FROM auth_throttle WHERE kind = ? AND subject = ?";
const PRUNE: &str = "DELETE FROM auth_throttle WHERE at <= ? AND kind = ?";

/// What a row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LoginAccount,
    LoginAddress,
    SignupAddress,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::LoginAccount => "login-account",
            Kind::LoginAddress => "login-address",
            Kind::SignupAddress => "signup-address",
        }
    }

    /// What the client is told it did too often.
    fn describe(self) -> &'static str {
        match self {
            Kind::LoginAccount => "too many failed logins for this account",
            Kind::LoginAddress => "too many failed logins from your address",
            Kind::SignupAddress => "too many signups from your address",
        }
    }
}

/// At most `max` events of `kind` for `subject` within `window_secs`.
#[derive(Debug, Clone)]
pub struct Limit {
    pub kind: Kind,
    pub subject: String,
    pub max: u64,
    pub window_secs: u64,
}

/// Why an attempt was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("{}; try again in {retry_after_secs} seconds", kind.describe())]
    Limited { kind: Kind, retry_after_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An admitted attempt: its rows are in the table until it is forgotten.
pub struct Attempt {
    id: String,
    limits: Vec<Limit>,
}

/// The throttle table on an open connection.
pub struct Throttle<'c> {
    conn: &'c Connection,
}

impl<'c> Throttle<'c> {
    /// Creates the table if needed (per request, like the user table).
    pub async fn open(conn: &'c Connection) -> Result<Self, StoreError> {
        conn.execute(CREATE_TABLE, Vec::new())
            .await
            .map_err(|e| query_failed("creating the throttle table", e))?;
        Ok(Throttle { conn })
    }

    /// Records an attempt against every limit, or refuses it if any subject
    /// is at its limit (then nothing stays recorded). `now` is in seconds
    /// since the Unix epoch.
    pub async fn admit(&self, limits: Vec<Limit>, now: u64) -> Result<Attempt, ThrottleError> {
        for limit in &limits {
            self.prune(limit, now).await?;
        }
        self.refuse_if_over(&limits, now, false).await?;
        let attempt = Attempt {
            id: uuid::Uuid::new_v4().hyphenated().to_string(),
            limits,
        };
        for limit in &attempt.limits {
            let params = vec![
                limit.kind.as_str().to_owned().into(),
                limit.subject.clone().into(),
                attempt.id.clone().into(),
                seconds(now).into(),
            ];
            self.conn
                .execute(RECORD, params)
                .await
                .map_err(|e| query_failed("recording an attempt", e))?;
        }
        // Rows of concurrent attempts recorded meanwhile count too: only
        // `max` attempts can see themselves within the limit.
        if let Err(refused) = self.refuse_if_over(&attempt.limits, now, true).await {
            self.forget(&attempt).await?;
            return Err(refused);
        }
        Ok(attempt)
    }

    /// Removes an attempt's rows: it turned out not to count.
    pub async fn forget(&self, attempt: &Attempt) -> Result<(), StoreError> {
        for limit in &attempt.limits {
            let params = vec![
                limit.kind.as_str().to_owned().into(),
                limit.subject.clone().into(),
                attempt.id.clone().into(),
            ];
            self.conn
                .execute(FORGET_ATTEMPT, params)
                .await
                .map_err(|e| query_failed("forgetting an attempt", e))?;
        }
        Ok(())
    }

    /// Removes every event of `kind` for `subject`.
    pub async fn clear(&self, kind: Kind, subject: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                CLEAR_SUBJECT,
                vec![kind.as_str().to_owned().into(), subject.to_owned().into()],
            )
            .await
            .map_err(|e| query_failed("clearing failed logins", e))
    }

    /// Fails with the longest wait if any subject has no room for this
    /// attempt in its window: `max` events including the attempt's own row
    /// once it is `recorded`.
    async fn refuse_if_over(
        &self,
        limits: &[Limit],
        now: u64,
        recorded: bool,
    ) -> Result<(), ThrottleError> {
        let mut refused: Option<(Kind, u64)> = None;
        for limit in limits {
            let since = now.saturating_sub(limit.window_secs);
            let (count, oldest) = self.count(limit, since).await?;
            let over = if recorded {
                count > limit.max
            } else {
                count >= limit.max
            };
            if over {
                let retry = retry_after(oldest.unwrap_or(now), limit.window_secs, now);
                if refused.is_none_or(|(_, longest)| retry > longest) {
                    refused = Some((limit.kind, retry));
                }
            }
        }
        match refused {
            Some((kind, retry_after_secs)) => Err(ThrottleError::Limited {
                kind,
                retry_after_secs,
            }),
            None => Ok(()),
        }
    }

    /// Events of the limit's kind and subject after `since`, and the oldest.
    async fn count(&self, limit: &Limit, since: u64) -> Result<(u64, Option<u64>), StoreError> {
        let params = vec![
            limit.kind.as_str().to_owned().into(),
            limit.subject.clone().into(),
            seconds(since).into(),
        ];
        let rows = self
            .conn
            .query(COUNT, params)
            .await
            .map_err(|e| query_failed("counting attempts", e))?
            .collect()
            .await
            .map_err(|e| query_failed("counting attempts", e))?;
        let row = rows.first().ok_or_else(|| StoreError::Query {
            action: "counting attempts",
            detail: "COUNT returned no row".to_owned(),
        })?;
        let count = integer(row, "n").ok_or_else(|| StoreError::Query {
            action: "counting attempts",
            detail: "the count is not an integer".to_owned(),
        })?;
        Ok((count, integer(row, "oldest")))
    }

    async fn prune(&self, limit: &Limit, now: u64) -> Result<(), StoreError> {
        let cutoff = now.saturating_sub(limit.window_secs);
        self.conn
            .execute(
                PRUNE,
                vec![
                    seconds(cutoff).into(),
                    limit.kind.as_str().to_owned().into(),
                ],
            )
            .await
            .map_err(|e| query_failed("pruning old attempts", e))
    }
}

/// Seconds until an event at `oldest` leaves a window of `window_secs`; at
/// least 1, so a client never retries in a busy loop.
fn retry_after(oldest: u64, window_secs: u64, now: u64) -> u64 {
    oldest
        .saturating_add(window_secs)
        .saturating_sub(now)
        .max(1)
}

/// A time as the `BIGINT` column stores it.
fn seconds(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A non-negative integer column, whichever integer type the backend chose
/// (`COUNT` is a signed `BIGINT` on MariaDB, SQLite has one integer type);
/// `None` for NULL (`MIN` of no rows) or anything else.
fn integer(row: &Row, column: &str) -> Option<u64> {
    row.get::<i64>(column)
        .and_then(|v| u64::try_from(v).ok())
        .or_else(|| row.get::<u64>(column))
}

fn query_failed(action: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Query {
        action,
        detail: e.to_string(),
    }
}

/// The client's IP from `spin-client-addr` (`ip:port`, or a bare IP), which
/// the host sets on every request from outside, overwriting whatever the
/// client sent. The port is dropped: one client opens many connections.
pub fn client_ip(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    value
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.ip())
        .or_else(|_| value.parse::<std::net::IpAddr>())
        .ok()
        .map(|ip| ip.to_canonical().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_drops_the_port() {
        assert_eq!(
            client_ip(Some("127.0.0.1:5432")).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(client_ip(Some("[::1]:80")).as_deref(), Some("::1"));
        assert_eq!(
            client_ip(Some("[::ffff:10.0.0.1]:80")).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(client_ip(Some("10.1.2.3")).as_deref(), Some("10.1.2.3"));
        assert_eq!(client_ip(Some("nonsense")), None);
        assert_eq!(client_ip(None), None);
    }

    #[test]
    fn retry_after_counts_to_the_end_of_the_window() {
        assert_eq!(retry_after(1_000, 900, 1_100), 800);
        assert_eq!(retry_after(1_000, 900, 1_900), 1);
        assert_eq!(retry_after(1_000, 900, 5_000), 1);
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let e = ThrottleError::Limited {
            kind: Kind::LoginAccount,
            retry_after_secs: 42,
        };
        assert_eq!(
            e.to_string(),
            "too many failed logins for this account; try again in 42 seconds"
        );
    }
}

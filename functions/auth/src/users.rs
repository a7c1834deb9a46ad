//! The `user` table, reached through `spin:mysql`.
//!
//! The host maps the `default` connection to MariaDB or to an embedded
//! SQLite-based engine, so every statement here is written to mean the same
//! in both dialects, and user input only ever travels as bound `?` parameters.

use spin_sdk::mysql::{Connection, Row};

/// The connection label the host's runtime config resolves to a database.
const DATABASE: &str = "default";

/// Portable DDL: the embedded engine translates `AUTO_INCREMENT`, and the
/// `UNIQUE` constraint is what finally settles two concurrent signups.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY AUTO_INCREMENT, email VARCHAR(255) NOT NULL UNIQUE, password VARCHAR(255) NOT NULL)";
const SELECT_PASSWORD: &str = "SELECT password FROM user WHERE email = ?";
/// Accounts an operator made admins (see the README). Rights never come
/// from the address someone signs up with.
const CREATE_ADMIN_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS admin (email VARCHAR(255) NOT NULL PRIMARY KEY)";
const SELECT_ADMIN: &str = "SELECT email FROM admin WHERE email = ?";
const INSERT_USER: &str = "INSERT INTO user (email, password) VALUES (?, ?)";

/// A storage failure, phrased for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the user database is unavailable: {0}")]
    Unavailable(String),
    #[error("the user database failed while {action}: {detail}")]
    Query {
        action: &'static str,
        detail: String,
    },
    #[error("an account with this email already exists")]
    Duplicate,
}

/// An open connection with the `user` table in place.
pub struct UserStore {
    conn: Connection,
}

impl UserStore {
    /// Connects and creates the table if needed. This runs per request
    /// because component instances are short-lived and a database may be
    /// swapped or reset underneath them; `IF NOT EXISTS` makes it cheap.
    pub async fn open() -> Result<Self, StoreError> {
        let conn = Connection::open(DATABASE)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        conn.execute(CREATE_TABLE, Vec::new())
            .await
            .map_err(|e| StoreError::Query {
                action: "creating the user table",
                detail: e.to_string(),
            })?;
        conn.execute(CREATE_ADMIN_TABLE, Vec::new())
            .await
            .map_err(|e| StoreError::Query {
                action: "creating the admin table",
                detail: e.to_string(),
            })?;
        Ok(Self { conn })
    }

    /// The connection, shared with the throttle table (`throttle.rs`).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The stored PHC hash for `email`, or `None` if there is no such account.
    pub async fn password_hash(&self, email: &str) -> Result<Option<String>, StoreError> {
        let failed = |detail: String| StoreError::Query {
            action: "looking up a user",
            detail,
        };
        let rows = self
            .conn
            .query(SELECT_PASSWORD, vec![email.to_owned().into()])
            .await
            .map_err(|e| failed(e.to_string()))?
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?;
        match rows.first() {
            None => Ok(None),
            Some(row) => password_column(row).map(Some).map_err(failed),
        }
    }

    /// Whether an operator has made `email` an admin.
    pub async fn is_admin(&self, email: &str) -> Result<bool, StoreError> {
        admin_grant(&self.conn, email).await
    }

    /// Inserts a new account. A unique-key violation means another signup
    /// for the same email won the race since the existence check, and is
    /// reported as [`StoreError::Duplicate`].
    pub async fn insert(&self, email: &str, password_hash: String) -> Result<(), StoreError> {
        self.conn
            .execute(
                INSERT_USER,
                vec![email.to_owned().into(), password_hash.into()],
            )
            .await
            .map_err(|e| {
                let detail = e.to_string();
                // MariaDB says "Duplicate entry"; SQLite says "UNIQUE constraint failed".
                if detail.contains("Duplicate") || detail.contains("UNIQUE") {
                    StoreError::Duplicate
                } else {
                    StoreError::Query {
                        action: "creating a user",
                        detail,
                    }
                }
            })
    }
}

/// Whether an operator has made `email` an admin, with one query on a
/// fresh connection (what `/validate` needs on every call). Before auth
/// has created its tables there is no grant.
pub async fn current_admin_grant(email: &str) -> Result<bool, StoreError> {
    let conn = Connection::open(DATABASE)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    admin_grant(&conn, email).await
}

async fn admin_grant(conn: &Connection, email: &str) -> Result<bool, StoreError> {
    let failed = |detail: String| StoreError::Query {
        action: "looking up admin rights",
        detail,
    };
    let rows = match conn
        .query(SELECT_ADMIN, vec![email.to_owned().into()])
        .await
    {
        Ok(rows) => rows,
        // SQLite: "no such table"; MariaDB: "Table 'auth.admin' doesn't exist".
        Err(e) if is_missing_table(&e.to_string()) => return Ok(false),
        Err(e) => return Err(failed(e.to_string())),
    };
    let rows = rows.collect().await.map_err(|e| failed(e.to_string()))?;
    Ok(!rows.is_empty())
}

fn is_missing_table(message: &str) -> bool {
    message.contains("no such table") || message.contains("doesn't exist")
}

/// Reads the `password` column. MariaDB reports `VARCHAR` columns with a
/// binary collation as bytes, so both text and UTF-8 bytes are accepted.
fn password_column(row: &Row) -> Result<String, String> {
    if let Some(text) = row.get::<String>("password") {
        return Ok(text);
    }
    let bytes = row
        .get::<Vec<u8>>("password")
        .ok_or("the password column is missing or is neither text nor bytes")?;
    String::from_utf8(bytes).map_err(|_| "the stored password hash is not UTF-8".to_owned())
}

//! The embedded SQL engine: SQLite files under the state directory, so
//! `spin:mysql` works with no server. Statements run on the blocking pool
//! ([`BlockingConnection`]), interrupted when the component stops waiting.
//!
//! It accepts the portable subset of MySQL that SQLite understands; the one
//! translation made is MySQL's `AUTO_INCREMENT` keyword to SQLite's
//! `AUTOINCREMENT`, so the same `CREATE TABLE` works on both backends.
//!
//! A component's SQL stays inside its database file: an authorizer refuses
//! `ATTACH` (and so `VACUUM INTO`, which attaches its target), `DETACH`,
//! `load_extension` and every pragma but a few read-only or harmless ones,
//! so no statement can open the embedded queue's file or write elsewhere.

use super::{Column, DbDataType, DbValue, Error, ParameterValue, Row};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{Value, ValueRef};
use crate::sqlite_blocking::BlockingConnection;
use std::path::Path;
use std::sync::Arc;

pub struct EmbeddedDb {
    conn: BlockingConnection,
}

impl EmbeddedDb {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let fail = |e: &dyn std::fmt::Display| {
            Error::ConnectionFailed(format!(
                "cannot open the embedded database {}: {e}",
                path.display()
            ))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = rusqlite::Connection::open(path).map_err(|e| fail(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail(&e))?;
        conn.authorizer(Some(authorize));
        Ok(EmbeddedDb {
            conn: BlockingConnection::new(conn),
        })
    }

    pub async fn query(
        self: Arc<Self>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<(Vec<Column>, Vec<Row>), Error> {
        self.blocking(move |conn| {
            let mut stmt = conn.prepare(&translate(&statement)).map_err(query_error)?;
            let names: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
            let declared: Vec<DbDataType> = stmt
                .columns()
                .iter()
                .map(|c| declared_type(c.decl_type()))
                .collect();
            let mut rows_out = Vec::new();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.into_iter().map(to_value)))
                .map_err(query_error)?;
            while let Some(row) = rows.next().map_err(query_error)? {
                let mut out = Vec::with_capacity(names.len());
                for i in 0..names.len() {
                    out.push(to_db_value(row.get_ref(i).map_err(query_error)?));
                }
                rows_out.push(out);
            }
            let columns = names
                .into_iter()
                .zip(declared)
                .map(|(name, data_type)| Column { name, data_type })
                .collect();
            Ok((columns, rows_out))
        })
        .await
    }

    pub async fn execute(
        self: Arc<Self>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<(), Error> {
        self.blocking(move |conn| {
            conn.execute(
                &translate(&statement),
                rusqlite::params_from_iter(params.into_iter().map(to_value)),
            )
            .map(|_| ())
            .map_err(query_error)
        })
        .await
    }

    async fn blocking<R: Send + 'static>(
        self: Arc<Self>,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.conn
            .run(move |conn| f(conn))
            .await
            .map_err(|e| Error::Other(format!("embedded database task failed: {e}")))?
    }
}

/// Pragmas a component may run: schema introspection and settings that
/// touch nothing outside the database.
const ALLOWED_PRAGMAS: &[&str] = &[
    "collation_list",
    "data_version",
    "foreign_key_check",
    "foreign_key_list",
    "foreign_keys",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "pragma_list",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

/// The authorizer (see the module docs). `ATTACH ''` (a private temporary
/// database, which plain `VACUUM` uses) stays allowed.
fn authorize(context: AuthContext<'_>) -> Authorization {
    let denied = match context.action {
        AuthAction::Attach { filename } => !filename.is_empty(),
        AuthAction::Detach { .. } => true,
        AuthAction::Function { function_name } => {
            function_name.eq_ignore_ascii_case("load_extension")
        }
        AuthAction::Pragma { pragma_name, .. } => !ALLOWED_PRAGMAS
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(pragma_name)),
        _ => false,
    };
    if denied {
        Authorization::Deny
    } else {
        Authorization::Allow
    }
}

/// Rewrites the MySQL spelling of the autoincrement keyword.
fn translate(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len());
    let mut rest = statement;
    while let Some(pos) = find_keyword(rest, "AUTO_INCREMENT") {
        out.push_str(&rest[..pos]);
        out.push_str("AUTOINCREMENT");
        rest = &rest[pos + "AUTO_INCREMENT".len()..];
    }
    out.push_str(rest);
    out
}

/// Finds `keyword` as a whole word, case-insensitively.
fn find_keyword(haystack: &str, keyword: &str) -> Option<usize> {
    let upper = haystack.to_ascii_uppercase();
    let mut from = 0;
    while let Some(found) = upper[from..].find(keyword) {
        let at = from + found;
        let before = upper[..at].chars().next_back();
        let after = upper[at + keyword.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !word(before) && !word(after) {
            return Some(at);
        }
        from = at + keyword.len();
    }
    None
}

fn query_error(e: rusqlite::Error) -> Error {
    // Denied statements fail with SQLITE_AUTH; a denied function call with
    // SQLITE_ERROR and "not authorized to use function".
    let denied = e.sqlite_error_code()
        == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied)
        || e.to_string().starts_with("not authorized");
    if denied {
        return Error::QueryFailed(
            "permission denied: statements that reach outside this database (ATTACH, DETACH, VACUUM INTO, load_extension, and pragmas other than schema introspection) are not allowed".into(),
        );
    }
    Error::QueryFailed(e.to_string())
}

fn to_value(p: ParameterValue) -> Value {
    match p {
        ParameterValue::Boolean(b) => Value::Integer(b.into()),
        ParameterValue::Int8(v) => Value::Integer(v.into()),
        ParameterValue::Int16(v) => Value::Integer(v.into()),
        ParameterValue::Int32(v) => Value::Integer(v.into()),
        ParameterValue::Int64(v) => Value::Integer(v),
        ParameterValue::Uint8(v) => Value::Integer(v.into()),
        ParameterValue::Uint16(v) => Value::Integer(v.into()),
        ParameterValue::Uint32(v) => Value::Integer(v.into()),
        // SQLite integers are 64-bit signed; larger values are stored as text.
        ParameterValue::Uint64(v) => i64::try_from(v)
            .map(Value::Integer)
            .unwrap_or_else(|_| Value::Text(v.to_string())),
        ParameterValue::Floating32(v) => Value::Real(v.into()),
        ParameterValue::Floating64(v) => Value::Real(v),
        ParameterValue::Str(s) => Value::Text(s),
        ParameterValue::Binary(b) => Value::Blob(b),
        ParameterValue::DbNull => Value::Null,
    }
}

fn declared_type(decl: Option<&str>) -> DbDataType {
    let Some(decl) = decl else {
        return DbDataType::Other;
    };
    let d = decl.to_ascii_uppercase();
    // SQLite's own affinity rules, in its order.
    if d.contains("INT") {
        DbDataType::Int64
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        DbDataType::Str
    } else if d.contains("BLOB") {
        DbDataType::Binary
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        DbDataType::Floating64
    } else if d.contains("BOOL") {
        DbDataType::Boolean
    } else {
        DbDataType::Other
    }
}

fn to_db_value(v: ValueRef<'_>) -> DbValue {
    match v {
        ValueRef::Null => DbValue::DbNull,
        ValueRef::Integer(i) => DbValue::Int64(i),
        ValueRef::Real(f) => DbValue::Floating64(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => DbValue::Str(s.to_string()),
            Err(_) => DbValue::Binary(t.to_vec()),
        },
        ValueRef::Blob(b) => DbValue::Binary(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statements_cannot_reach_outside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("queue.sqlite");
        rusqlite::Connection::open(&outside)
            .unwrap()
            .execute_batch("CREATE TABLE messages (body TEXT)")
            .unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("default.sqlite")).unwrap());
        let run = |sql: String| db.clone().execute(sql, Vec::new());
        run("CREATE TABLE t (x INTEGER)".into()).await.unwrap();
        let copy = dir.path().join("copy.sqlite");
        let escapes = [
            format!("ATTACH '{}' AS q", outside.display()),
            format!("VACUUM INTO '{}'", copy.display()),
            "DETACH main".into(),
            "SELECT load_extension('/tmp/x.so')".into(),
            "PRAGMA journal_mode = DELETE".into(),
            "PRAGMA writable_schema = ON".into(),
            "PRAGMA temp_store_directory = '/tmp'".into(),
        ];
        for sql in escapes {
            let e = run(sql.clone()).await.unwrap_err();
            let Error::QueryFailed(m) = e else {
                panic!("{sql}: {e:?}");
            };
            assert!(m.starts_with("permission denied"), "{sql}: {m}");
        }
        assert!(!copy.exists(), "VACUUM INTO wrote nothing");
        // What stays inside the database still works.
        run("PRAGMA foreign_keys = ON".into()).await.unwrap();
        run("VACUUM".into()).await.unwrap();
        let (_, rows) = db
            .clone()
            .query("PRAGMA table_info(t)".into(), Vec::new())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn auto_increment_is_translated_as_a_word() {
        assert_eq!(
            translate("id INTEGER PRIMARY KEY auto_increment, x"),
            "id INTEGER PRIMARY KEY AUTOINCREMENT, x"
        );
        assert_eq!(translate("my_auto_increment_col"), "my_auto_increment_col");
    }

    #[tokio::test]
    async fn statements_bind_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(&dir.path().join("t.sqlite")).unwrap());
        db.clone()
            .execute(
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTO_INCREMENT, name VARCHAR(20))".into(),
                vec![],
            )
            .await
            .unwrap();
        let evil = "x'); DROP TABLE t; --".to_string();
        db.clone()
            .execute(
                "INSERT INTO t (name) VALUES (?)".into(),
                vec![ParameterValue::Str(evil.clone())],
            )
            .await
            .unwrap();
        let (cols, rows) = db
            .clone()
            .query(
                "SELECT id, name FROM t WHERE name = ?".into(),
                vec![ParameterValue::Str(evil.clone())],
            )
            .await
            .unwrap();
        assert_eq!(cols[1].name, "name");
        assert_eq!(cols[1].data_type, DbDataType::Str);
        assert_eq!(rows.len(), 1);
        assert!(matches!(&rows[0][1], DbValue::Str(s) if *s == evil));
    }
}

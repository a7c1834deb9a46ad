//! The test protocol every SDK-generation component speaks, so one table of
//! requests checks all of them. Paths are the component's path info.
//!
//! - `GET /hello`
//! - `GET /var/NAME`, `GET /env/NAME`, `GET /file/PATH` (reads `/PATH`)
//! - `GET|PUT|DELETE /kv/STORE/KEY`, `GET /kv/STORE` (keys, sorted, one a line)
//! - `POST /sqlite/DB` and `POST /mysql` with a statement as the body;
//!   `/mysql` opens the variable `mysql_url`. Rows come back one a line,
//!   values joined by `|`, after a first line of column names.
//! - `GET /config/NAME`: a variable through `wasi:config/store` (spin-sdk
//!   3 and 5); `GET /wasi-kv/KEY`: a key of `default` through
//!   `wasi:keyvalue` (spin-sdk 3 and 5)
//! - `GET /outbound?URL`
//! - `GET /redis`: opens outbound Redis, which this host does not serve yet;
//!   answers 500 with the error the host gave.
//!
//! Failures answer 500 with the error, so tests can read what the host said.

pub enum Route {
    Hello,
    Var(String),
    Env(String),
    File(String),
    KvGet(String, String),
    KvSet(String, String),
    KvDelete(String, String),
    KvKeys(String),
    Sqlite(String),
    Mysql,
    Outbound(String),
    Redis,
    Config(String),
    WasiKv(String),
    NotFound,
}

pub fn route(method: &str, path: &str, query: &str) -> Route {
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["hello"]) => Route::Hello,
        ("GET", ["var", name]) => Route::Var(name.to_string()),
        ("GET", ["env", name]) => Route::Env(name.to_string()),
        ("GET", ["file", first, rest @ ..]) => {
            let mut path = format!("/{first}");
            for part in rest {
                path.push('/');
                path.push_str(part);
            }
            Route::File(path)
        }
        ("GET", ["kv", store]) => Route::KvKeys(store.to_string()),
        ("GET", ["kv", store, key]) => Route::KvGet(store.to_string(), key.to_string()),
        ("PUT", ["kv", store, key]) => Route::KvSet(store.to_string(), key.to_string()),
        ("DELETE", ["kv", store, key]) => Route::KvDelete(store.to_string(), key.to_string()),
        ("POST", ["sqlite", db]) => Route::Sqlite(db.to_string()),
        ("POST", ["mysql"]) => Route::Mysql,
        ("GET", ["outbound"]) => Route::Outbound(query.to_string()),
        ("GET", ["redis"]) => Route::Redis,
        ("GET", ["config", name]) => Route::Config(name.to_string()),
        ("GET", ["wasi-kv", key]) => Route::WasiKv(key.to_string()),
        _ => Route::NotFound,
    }
}

/// Rows as the protocol writes them.
pub fn table(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut out = columns.join("|");
    out.push('\n');
    for row in rows {
        out.push_str(&row.join("|"));
        out.push('\n');
    }
    out
}

/// Keys as the protocol writes them.
pub fn keys(mut keys: Vec<String>) -> String {
    keys.sort();
    keys.iter().map(|k| format!("{k}\n")).collect()
}

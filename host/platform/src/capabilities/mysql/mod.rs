//! `spin:mysql@3.0.0`: SQL for components, with a MySQL/MariaDB backend
//! (`mysql_async`, pooled) and an embedded engine on local disk (SQLite),
//! chosen by the runtime config. Function code is the same on both.
//!
//! A component opens a database by label (granted by `mysql_databases` in
//! `spin.toml`; the label `default` is the runtime config's `[mysql]`
//! server, or the embedded engine when there is none) or, as in Spin, by a
//! `mysql://` URL whose host is in its `allowed_outbound_hosts`.
//! Parameters are always bound, never spliced into the statement.
//! Spin 2's `fermyon:spin/mysql@2.0.0` is served too ([`v2`]).

mod capability;
mod embedded;
mod server;
mod v2;

use crate::capabilities::outbound_http::AllowList;
use crate::urls::redact_url;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/capabilities/mysql/wit",
        inline: "package spindle:mysql-host; world host { import spin:mysql/mysql@3.0.0; }",
        world: "spindle:mysql-host/host",
        imports: { default: trappable },
        with: { "spin:mysql/mysql.connection": super::Connection },
    });
}

use bindings::spin::mysql::mysql as wit;
pub use bindings::spin::mysql::mysql::{Column, DbDataType, DbValue, Error, ParameterValue, Row};

/// A database a connection talks to.
#[derive(Clone)]
enum Database {
    Server(mysql_async::Pool),
    Embedded(Arc<embedded::EmbeddedDb>),
}

impl Database {
    async fn query(
        &self,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<(Vec<Column>, Vec<Row>), Error> {
        match self {
            Database::Server(pool) => server::query(pool, statement, params).await,
            Database::Embedded(db) => db.clone().query(statement, params).await,
        }
    }

    async fn execute(&self, statement: String, params: Vec<ParameterValue>) -> Result<(), Error> {
        match self {
            Database::Server(pool) => server::execute(pool, statement, params).await,
            Database::Embedded(db) => db.clone().execute(statement, params).await,
        }
    }
}

/// The `connection` resource: a handle on a pooled database.
pub struct Connection {
    db: Database,
}

/// Databases shared by every component of the application: server pools
/// by URL and embedded files by label, opened on first use.
pub struct SqlBackends {
    default_server: Option<String>,
    embedded_dir: PathBuf,
    pools: Mutex<HashMap<String, mysql_async::Pool>>,
    embedded: Mutex<HashMap<String, Arc<embedded::EmbeddedDb>>>,
}

impl SqlBackends {
    /// `default_server` is the runtime config's `[mysql] url`, if any.
    pub fn new(default_server: Option<String>, embedded_dir: PathBuf) -> Self {
        SqlBackends {
            default_server,
            embedded_dir,
            pools: Mutex::default(),
            embedded: Mutex::default(),
        }
    }

    /// Which backend the `default` label uses, for the start-up summary.
    pub fn describe(&self) -> String {
        match &self.default_server {
            Some(url) => format!("MySQL server {}", redact_url(url)),
            None => format!("embedded SQL in {}", self.embedded_dir.display()),
        }
    }

    /// Checks that the configured server answers (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let Some(url) = self.default_server.clone() else {
            return Ok(());
        };
        let pool = self
            .pool(&url)
            .map_err(|e| anyhow::anyhow!("{}", reason(&e)))?;
        server::ping(&pool).await
    }

    fn pool(&self, url: &str) -> Result<mysql_async::Pool, Error> {
        Ok(self.pool_for(url, parse_url(url)?))
    }

    /// The pool for `url`, made from `opts` (parsed from it) the first time.
    fn pool_for(&self, url: &str, opts: mysql_async::Opts) -> mysql_async::Pool {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(url.to_string())
            .or_insert_with(|| mysql_async::Pool::new(opts))
            .clone()
    }

    fn embedded(&self, label: &str) -> Result<Arc<embedded::EmbeddedDb>, Error> {
        let mut dbs = self.embedded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = dbs.get(label) {
            return Ok(db.clone());
        }
        let path = self.embedded_dir.join(format!("{label}.sqlite"));
        let db = Arc::new(embedded::EmbeddedDb::open(&path)?);
        dbs.insert(label.to_string(), db.clone());
        Ok(db)
    }

    fn open_label(&self, label: &str) -> Result<Database, Error> {
        match (&self.default_server, label) {
            (Some(url), "default") => Ok(Database::Server(self.pool(url)?)),
            _ => Ok(Database::Embedded(self.embedded(label)?)),
        }
    }

    /// Closes server pools (graceful shutdown).
    pub async fn close(&self) {
        let pools: Vec<_> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        for pool in pools {
            let _ = pool.disconnect().await;
        }
    }
}

/// The message of a `spin:mysql` error (the WIT type components see; its
/// `Display` is its `Debug`, variant name and quotes included).
fn reason(e: &Error) -> &str {
    match e {
        Error::ConnectionFailed(m)
        | Error::BadParameter(m)
        | Error::QueryFailed(m)
        | Error::ValueConversionFailed(m)
        | Error::Other(m) => m,
    }
}

fn parse_url(url: &str) -> Result<mysql_async::Opts, Error> {
    mysql_async::Opts::from_url(url)
        .map_err(|e| Error::ConnectionFailed(format!("invalid MySQL URL {}: {e}", redact_url(url))))
}

/// What one component may open: granted labels and allowed URLs.
#[derive(Clone)]
pub struct MysqlState {
    component: Arc<str>,
    backends: Arc<SqlBackends>,
    labels: Arc<Vec<String>>,
    allowed: AllowList,
}

impl MysqlState {
    pub fn new(
        component: &str,
        backends: Arc<SqlBackends>,
        labels: &[String],
        allowed: AllowList,
    ) -> Self {
        MysqlState {
            component: component.into(),
            backends,
            labels: Arc::new(labels.to_vec()),
            allowed,
        }
    }

    fn open(&self, address: &str) -> Result<Database, Error> {
        if self.labels.iter().any(|l| l == address) {
            return self.backends.open_label(address);
        }
        if address.starts_with("mysql://") {
            // Parsed once: the host and port checked are the ones the
            // driver will connect to.
            let opts = parse_url(address)?;
            if opts.socket().is_some() {
                return Err(Error::ConnectionFailed(format!(
                    "permission denied: component `{}` may not connect through a local socket; use mysql://host:port",
                    self.component
                )));
            }
            let (host, port) = (opts.ip_or_hostname().to_string(), opts.tcp_port());
            if self.allowed.allows("mysql", &host, port) {
                return Ok(Database::Server(self.backends.pool_for(address, opts)));
            }
            return Err(Error::ConnectionFailed(format!(
                "permission denied: component `{}` may not connect to mysql://{host}:{port}; add \"mysql://{host}:{port}\" to its allowed_outbound_hosts in spin.toml",
                self.component
            )));
        }
        Err(Error::ConnectionFailed(format!(
            "permission denied: component `{}` may not open database `{address}`; add \"{address}\" to its mysql_databases in spin.toml",
            self.component
        )))
    }
}

/// The `HasData` marker for `spin:mysql`.
pub struct Mysql;

pub struct MysqlView<'a> {
    table: &'a mut ResourceTable,
    state: &'a MysqlState,
}

impl HasData for Mysql {
    type Data<'a> = MysqlView<'a>;
}

impl wit::Host for MysqlView<'_> {}

impl wit::HostConnection for MysqlView<'_> {
    fn drop(&mut self, rep: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl<T> wit::HostConnectionWithStore<T> for Mysql {
    async fn open(
        store: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        store.with(|mut view| {
            let view = view.get();
            match view.state.open(&address) {
                Ok(db) => Ok(Ok(view.table.push(Connection { db })?)),
                Err(e) => {
                    tracing::warn!(component = %view.state.component, "spin:mysql open refused: {}", reason(&e));
                    Ok(Err(e))
                }
            }
        })
    }

    async fn query(
        store: &Accessor<T, Self>,
        this: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<
        Result<
            (
                Vec<Column>,
                StreamReader<Row>,
                FutureReader<Result<(), Error>>,
            ),
            Error,
        >,
    > {
        let db = store.with(|mut view| view.get().table.get(&this).map(|c| c.db.clone()))?;
        let (columns, rows) = match db.query(statement, params).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        // Rows are read in full before the stream starts; the stream then
        // hands them to the guest as it asks.
        store.with(|mut access| {
            let rows = StreamReader::new(&mut access, rows)?;
            let done = FutureReader::new(&mut access, async {
                Ok::<_, wasmtime::Error>(Ok::<(), Error>(()))
            })?;
            Ok(Ok((columns, rows, done)))
        })
    }

    async fn execute(
        store: &Accessor<T, Self>,
        this: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let db = store.with(|mut view| view.get().table.get(&this).map(|c| c.db.clone()))?;
        Ok(db.execute(statement, params).await)
    }
}

impl<'a> MysqlView<'a> {
    pub fn new(table: &'a mut ResourceTable, state: &'a MysqlState) -> Self {
        MysqlView { table, state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ungranted_labels_and_hosts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backends = Arc::new(SqlBackends::new(None, dir.path().to_path_buf()));
        let state = MysqlState::new(
            "auth",
            backends,
            &["default".into()],
            AllowList::new(&["mysql://db.internal".into()]),
        );
        assert!(state.open("default").is_ok());
        let Err(Error::ConnectionFailed(m)) = state.open("other") else {
            panic!("ungranted label opened");
        };
        assert!(m.contains("mysql_databases"), "{m}");
        let Err(Error::ConnectionFailed(m)) = state.open("mysql://evil:3306/x") else {
            panic!("disallowed host opened");
        };
        assert!(m.contains("allowed_outbound_hosts"), "{m}");
        // The host the driver would connect to is the one checked, however
        // the URL hides it.
        for sneaky in [
            "mysql://evil:3306#@db.internal:3306/x",
            "mysql://evil:3306/x?@db.internal:3306",
            "mysql://u:p@evil:3306/x#@db.internal",
        ] {
            let Err(Error::ConnectionFailed(m)) = state.open(sneaky) else {
                panic!("{sneaky} opened");
            };
            assert!(
                m.contains("may not connect to mysql://evil:3306")
                    || m.contains("invalid MySQL URL"),
                "{sneaky}: {m}"
            );
        }
        let Err(Error::ConnectionFailed(m)) =
            state.open("mysql://db.internal:3306/x?socket=/run/mysqld/mysqld.sock")
        else {
            panic!("a socket path opened");
        };
        assert!(m.contains("local socket"), "{m}");
        assert!(state.open("mysql://u:p@db.internal/x").is_ok());
    }
}

//! `spin:sqlite@3.1.0` (spin-sdk 7, and 5's `@3.0.0` through semver
//! matching) and `fermyon:spin/sqlite@2.0.0` (spin-sdk 3 and 5): SQLite
//! databases for components, as Spin serves them, over the same files.
//!
//! A component opens a database by label, granted by `sqlite_databases` in
//! `spin.toml`. `default` is `<state-dir>/sqlite/default.db` unless the
//! runtime config says otherwise; other labels are `[sqlite_database.LABEL]`
//! sections (`config`). Every `open` is a connection of its own; its calls
//! run on the blocking pool (`database`). Parameters are bound, never
//! spliced; one `execute` runs one statement.

mod capability;
mod config;
mod database;
mod host;
mod seed;

use std::sync::Arc;

mod bindings {
    wasmtime::component::bindgen!({
        path: [
            "src/capabilities/sqlite/wit/spin-sqlite@3.1.0.wit",
            "src/capabilities/sqlite/wit/fermyon-spin@2.0.0.wit",
        ],
        inline: "package spindle:sqlite-host; world host { import spin:sqlite/sqlite@3.1.0; import fermyon:spin/sqlite@2.0.0; }",
        world: "spindle:sqlite-host/host",
        // Sync WIT functions are Rust-async here, so their SQLite work can
        // wait on the blocking pool; `async func`s get the store themselves.
        imports: { default: async | trappable },
        with: {
            "spin:sqlite/sqlite.connection": super::Connection,
            "fermyon:spin/sqlite.connection": super::host::LegacyConnection,
        },
        additional_derives: [PartialEq],
    });
}

pub use bindings::spin::sqlite::sqlite::{Error, QueryResult, RowResult, Value};
pub use config::Databases;
pub use database::{Connection, Database, Location, RowStream, SqliteLimits};
pub use host::Sqlite;

/// What one instance may open, and the connections it holds.
#[derive(Clone)]
pub struct SqliteState {
    component: Arc<str>,
    databases: Arc<Databases>,
    granted: Arc<[String]>,
    /// Connections open in this instance (the state is cloned per instance).
    open: usize,
}

impl SqliteState {
    pub fn new(component: &str, databases: Arc<Databases>, granted: &[String]) -> Self {
        SqliteState {
            component: component.into(),
            databases,
            granted: granted.into(),
            open: 0,
        }
    }

    /// Opens a connection to database `label`, as a component's `open` does.
    pub async fn open(&mut self, label: &str) -> Result<Connection, Error> {
        let db = self.reserve(label)?;
        db.connect().await.inspect_err(|_| self.release())
    }

    /// Closes a connection `open` returned, as dropping it in a component does.
    pub fn close(&mut self, conn: Connection) {
        drop(conn);
        self.release();
    }

    /// Checks that `label` may be opened and takes a connection slot.
    fn reserve(&mut self, label: &str) -> Result<Arc<Database>, Error> {
        if !self.granted.iter().any(|g| g == label) {
            tracing::warn!(
                component = %self.component,
                "spin:sqlite: access to database `{label}` denied; add \"{label}\" to the component's sqlite_databases in spin.toml"
            );
            return Err(Error::AccessDenied);
        }
        let Some(db) = self.databases.get(label) else {
            tracing::warn!(component = %self.component, "spin:sqlite: no database `{label}`");
            return Err(Error::NoSuchDatabase);
        };
        let max = db.limits().connections_per_instance;
        if self.open >= max {
            return Err(Error::Io(format!(
                "too many connections opened: this instance holds {max}, the limit ([limits] sqlite_connections_per_instance); drop connections it no longer uses"
            )));
        }
        self.open += 1;
        Ok(db.clone())
    }

    fn release(&mut self) {
        self.open = self.open.saturating_sub(1);
    }
}

/// An error's message, for logs and start-up errors (the generated
/// `Display` is the `Debug` form).
fn reason(e: &Error) -> String {
    match e {
        Error::NoSuchDatabase => "no such database".into(),
        Error::AccessDenied => "access denied".into(),
        Error::InvalidConnection => "invalid connection".into(),
        Error::DatabaseFull => "database full".into(),
        Error::Io(m) => m.clone(),
    }
}

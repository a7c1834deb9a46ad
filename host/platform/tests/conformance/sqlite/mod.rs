//! `spin:sqlite` (and `fermyon:spin/sqlite`, the same calls): the backend
//! built as `spindle up` builds it (`Capability::backend` from a manifest,
//! a runtime config and `--sqlite` flags) and used through the instance
//! state a component's calls go through. The statement behaviours run on a
//! file database (`sqlite::file::NAME`) and an in-memory one
//! (`sqlite::memory::NAME`); `config`, `seed` and `limits` cover the
//! runtime config and grants, `--sqlite`, and the limits.
//!
//! The WIT glue itself (`execute-async`'s `stream<row-result>` and
//! `future`, the v2 conversions) is only reachable from a component; here
//! the stream is read from the channel it is made of.

use spindle_platform::capabilities::Capability;
use spindle_platform::capabilities::capability::BackendEnv;
use spindle_platform::capabilities::registry;
use spindle_platform::capabilities::sqlite::{
    Connection, Databases, Error, QueryResult, RowResult, Sqlite, SqliteState, Value,
};
use spindle_platform::manifest::Manifest;
use spindle_platform::runtime_config::RuntimeConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One test per shared behaviour, on the app `$start` makes.
macro_rules! every_behaviour {
    ($start:expr) => {
        every_behaviour!(@ $start;
            create_insert_select,
            every_value_type_round_trips,
            parameters_are_bound_never_spliced,
            last_insert_rowid_and_changes_are_per_connection,
            one_statement_per_execute,
            errors_carry_sqlite_messages,
            streamed_rows_arrive_in_order,
            streamed_errors_arrive_where_they_happen,
            dropping_a_stream_frees_the_connection,
            connections_share_the_database,
            concurrent_writers_all_land,
        );
    };
    (@ $start:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let app = ($start)().await;
                super::behaviours::$name(&app).await;
            }
        )*
    };
}

mod behaviours;
mod config;
mod file;
mod guest_calls;
mod limits;
mod linking;
mod memory;
mod seed;

/// An application on disk: a manifest granting `components` their
/// labels, a runtime config, and the backend built from them.
pub struct App {
    pub dir: tempfile::TempDir,
    pub databases: Arc<Databases>,
    manifest: Manifest,
}

/// What `App::start` is given.
#[derive(Default)]
pub struct Setup<'a> {
    /// Components and the labels each is granted.
    pub components: &'a [(&'a str, &'a [&'a str])],
    /// The runtime config's text.
    pub runtime_config: &'a str,
    /// `--sqlite` flags.
    pub flags: &'a [String],
}

impl App {
    /// `default` granted to component `c`, the runtime config as given.
    pub async fn with_config(runtime_config: &str) -> App {
        App::start(Setup {
            components: &[("c", &["default"])],
            runtime_config,
            ..Setup::default()
        })
        .await
        .unwrap()
    }

    pub async fn start(setup: Setup<'_>) -> anyhow::Result<App> {
        let dir = tempfile::tempdir().unwrap();
        App::start_in(dir, setup).await
    }

    /// As `start`, in `dir` (a second start on the same state).
    pub async fn start_in(dir: tempfile::TempDir, setup: Setup<'_>) -> anyhow::Result<App> {
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let mut manifest = "spin_manifest_version = 2\n[application]\nname = \"t\"\n".to_string();
        for (id, labels) in setup.components {
            let labels: Vec<String> = labels.iter().map(|l| format!("{l:?}")).collect();
            manifest.push_str(&format!(
                "[component.{id}]\nsource = \"a.wasm\"\nsqlite_databases = [{}]\n",
                labels.join(", ")
            ));
        }
        let manifest_path = dir.path().join("spin.toml");
        std::fs::write(&manifest_path, manifest).unwrap();
        let manifest = Manifest::load(&manifest_path)?;
        let config_path = dir.path().join("runtime.toml");
        std::fs::write(&config_path, setup.runtime_config).unwrap();
        let runtime_config = RuntimeConfig::load(&config_path)?;
        let env = BackendEnv {
            manifest: &manifest,
            runtime_config: &runtime_config,
            state_dir: &dir.path().join("state"),
            variable_flags: &[],
            extra_queues: &[],
            key_value_flags: &[],
            sqlite_flags: setup.flags,
        };
        let databases = Sqlite::backend(&env).await?;
        Ok(App {
            dir,
            databases,
            manifest,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh instance of component `id`, as the runtime prepares one.
    pub fn instance(&self, id: &str) -> SqliteState {
        let grants = registry::grants(&self.manifest).unwrap();
        Sqlite::prepare(&self.databases, &grants[id].sqlite, id)
    }

    /// A connection to `default` from a fresh instance of component `c`.
    pub async fn open(&self) -> Connection {
        self.instance("c").open("default").await.unwrap()
    }
}

/// Runs `sql` with no parameters, expecting success.
pub async fn run(conn: &Connection, sql: &str) -> QueryResult {
    conn.execute(sql.into(), Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// The message of an `io` error, failing on any other.
pub fn io_message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Io(m)) => m,
        other => panic!("expected an io error, got {other:?}"),
    }
}

/// Every row a stream hands over, until it ends.
pub async fn drain(rows: &mut tokio::sync::mpsc::Receiver<Vec<RowResult>>) -> Vec<RowResult> {
    let mut all = Vec::new();
    while let Some(batch) = rows.recv().await {
        all.extend(batch);
    }
    all
}

/// The single integer a query returns.
pub async fn scalar(conn: &Connection, sql: &str) -> i64 {
    match run(conn, sql).await.rows.as_slice() {
        [row] => match row.values.as_slice() {
            [Value::Integer(i)] => *i,
            other => panic!("{sql}: {other:?}"),
        },
        other => panic!("{sql}: {other:?}"),
    }
}

/// Whether `path` is a SQLite file holding table `table`.
pub fn file_has_table(path: &Path, table: &str) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

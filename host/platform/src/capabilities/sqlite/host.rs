//! The WIT host functions: `spin:sqlite@3.1.0`'s sync functions as
//! ordinary (Rust-async) host functions, its `async func`s as concurrent
//! ones (`Accessor`), and `fermyon:spin/sqlite@2.0.0` on the same calls.

use super::bindings::fermyon::spin::sqlite as v2;
use super::bindings::spin::sqlite::sqlite as v3;
use super::{Connection, Error, QueryResult, RowResult, SqliteState, Value};
use crate::capabilities::streams::ItemProducer;
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

/// The `HasData` marker for both interfaces, and the capability.
pub struct Sqlite;

/// A `fermyon:spin/sqlite` connection (a resource type of its own).
pub struct LegacyConnection(Connection);

pub struct SqliteView<'a> {
    pub(super) table: &'a mut ResourceTable,
    pub(super) state: &'a mut SqliteState,
}

impl HasData for Sqlite {
    type Data<'a> = SqliteView<'a>;
}

impl SqliteView<'_> {
    fn connection<R: 'static>(
        &self,
        this: &Resource<R>,
        get: fn(&R) -> &Connection,
    ) -> wasmtime::Result<Connection> {
        Ok(get(self.table.get(this)?).clone())
    }
}

impl v3::Host for SqliteView<'_> {}

impl v3::HostConnection for SqliteView<'_> {
    async fn open(&mut self, database: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        match self.state.open(&database).await {
            Ok(conn) => Ok(Ok(self.table.push(conn)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn execute(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        let conn = self.connection(&this, |c| c)?;
        Ok(conn.execute(statement, parameters).await)
    }

    async fn last_insert_rowid(&mut self, this: Resource<Connection>) -> wasmtime::Result<i64> {
        let conn = self.connection(&this, |c| c)?;
        conn.last_insert_rowid().await.map_err(trap)
    }

    async fn changes(&mut self, this: Resource<Connection>) -> wasmtime::Result<u64> {
        let conn = self.connection(&this, |c| c)?;
        conn.changes().await.map_err(trap)
    }

    async fn drop(&mut self, this: Resource<Connection>) -> wasmtime::Result<()> {
        let conn = self.table.delete(this)?;
        self.state.close(conn);
        Ok(())
    }
}

impl<T> v3::HostConnectionWithStore<T> for Sqlite {
    async fn open_async(
        store: &Accessor<T, Self>,
        database: String,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let db = match store.with(|mut view| view.get().state.reserve(&database)) {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let opened = db.connect().await;
        store.with(|mut view| {
            let view = view.get();
            match opened {
                Ok(conn) => Ok(Ok(view.table.push(conn)?)),
                Err(e) => {
                    view.state.release();
                    Ok(Err(e))
                }
            }
        })
    }

    async fn execute_async(
        store: &Accessor<T, Self>,
        this: Resource<Connection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<
        Result<
            (
                Vec<String>,
                StreamReader<RowResult>,
                FutureReader<Result<(), Error>>,
            ),
            Error,
        >,
    > {
        let conn = store.with(|mut view| view.get().connection(&this, |c| c))?;
        let stream = match conn.execute_stream(statement, parameters).await {
            Ok(stream) => stream,
            Err(e) => return Ok(Err(e)),
        };
        store.with(|mut access| {
            let rows = StreamReader::new(&mut access, ItemProducer::new(stream.rows))?;
            let done = stream.done;
            let done = FutureReader::new(&mut access, async move {
                Ok::<_, wasmtime::Error>(done.await.unwrap_or_else(|_| {
                    Err(Error::Io(
                        "the statement was stopped: its rows were dropped unread".into(),
                    ))
                }))
            })?;
            Ok(Ok((stream.columns, rows, done)))
        })
    }

    async fn last_insert_rowid_async(
        store: &Accessor<T, Self>,
        this: Resource<Connection>,
    ) -> wasmtime::Result<i64> {
        let conn = store.with(|mut view| view.get().connection(&this, |c| c))?;
        conn.last_insert_rowid().await.map_err(trap)
    }

    async fn changes_async(
        store: &Accessor<T, Self>,
        this: Resource<Connection>,
    ) -> wasmtime::Result<u64> {
        let conn = store.with(|mut view| view.get().connection(&this, |c| c))?;
        conn.changes().await.map_err(trap)
    }
}

/// A failure the WIT function cannot return (it has no error case) traps,
/// as in Spin.
fn trap(e: Error) -> wasmtime::Error {
    wasmtime::Error::msg(super::reason(&e))
}

impl v2::Host for SqliteView<'_> {}

impl v2::HostConnection for SqliteView<'_> {
    async fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<LegacyConnection>, v2::Error>> {
        match self.state.open(&database).await {
            Ok(conn) => Ok(Ok(self.table.push(LegacyConnection(conn))?)),
            Err(e) => Ok(Err(to_v2_error(e))),
        }
    }

    async fn execute(
        &mut self,
        this: Resource<LegacyConnection>,
        statement: String,
        parameters: Vec<v2::Value>,
    ) -> wasmtime::Result<Result<v2::QueryResult, v2::Error>> {
        let conn = self.connection(&this, |c| &c.0)?;
        let parameters = parameters.into_iter().map(from_v2_value).collect();
        Ok(conn
            .execute(statement, parameters)
            .await
            .map(to_v2_result)
            .map_err(to_v2_error))
    }

    async fn drop(&mut self, this: Resource<LegacyConnection>) -> wasmtime::Result<()> {
        let LegacyConnection(conn) = self.table.delete(this)?;
        self.state.close(conn);
        Ok(())
    }
}

fn to_v2_error(e: Error) -> v2::Error {
    match e {
        Error::NoSuchDatabase => v2::Error::NoSuchDatabase,
        Error::AccessDenied => v2::Error::AccessDenied,
        Error::InvalidConnection => v2::Error::InvalidConnection,
        Error::DatabaseFull => v2::Error::DatabaseFull,
        Error::Io(m) => v2::Error::Io(m),
    }
}

fn from_v2_value(v: v2::Value) -> Value {
    match v {
        v2::Value::Integer(i) => Value::Integer(i),
        v2::Value::Real(r) => Value::Real(r),
        v2::Value::Text(t) => Value::Text(t),
        v2::Value::Blob(b) => Value::Blob(b),
        v2::Value::Null => Value::Null,
    }
}

fn to_v2_value(v: Value) -> v2::Value {
    match v {
        Value::Integer(i) => v2::Value::Integer(i),
        Value::Real(r) => v2::Value::Real(r),
        Value::Text(t) => v2::Value::Text(t),
        Value::Blob(b) => v2::Value::Blob(b),
        Value::Null => v2::Value::Null,
    }
}

fn to_v2_result(r: QueryResult) -> v2::QueryResult {
    v2::QueryResult {
        columns: r.columns,
        rows: r
            .rows
            .into_iter()
            .map(|row| v2::RowResult {
                values: row.values.into_iter().map(to_v2_value).collect(),
            })
            .collect(),
    }
}

//! `fermyon:spin/mysql@2.0.0`, Spin 2's MySQL interface (spin-sdk 2.x–5.x),
//! over the same databases and permission checks as `spin:mysql@3.0.0`.
//! Its types have the 3.0 shapes under 2.0 names; [`From`] impls below
//! carry values across, so the queries themselves are the 3.0 ones.

use super::{Connection, MysqlView, reason};
use wasmtime::component::Resource;

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/capabilities/mysql/wit",
        inline: "package spindle:mysql2-host; world host { import fermyon:spin/mysql@2.0.0; }",
        world: "spindle:mysql2-host/host",
        imports: { default: async | trappable },
        with: { "fermyon:spin/mysql@2.0.0.connection": crate::capabilities::mysql::Connection },
    });
}

use bindings::fermyon::spin::mysql as wit;
use bindings::fermyon::spin::rdbms_types::{
    self as v2, Column, DbDataType, DbValue, Error, ParameterValue, RowSet,
};

/// Links the interface and the types-only interface it uses.
pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> MysqlView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<T, super::Mysql>(linker, view)?;
    wit::add_to_linker::<T, super::Mysql>(linker, view)
}

/// `From` between a 3.0 variant and its 2.0 twin, case by case.
macro_rules! same_cases {
    ($from:ty => $to:ty: $($case:ident $(($x:ident))?),* $(,)?) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                type F = $from;
                match value {
                    $(F::$case $(($x))? => Self::$case $(($x.into()))?,)*
                }
            }
        }
    };
}

same_cases!(super::Error => Error: ConnectionFailed(m), BadParameter(m), QueryFailed(m), ValueConversionFailed(m), Other(m));
same_cases!(super::DbDataType => DbDataType: Boolean, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Floating32, Floating64, Str, Binary, Other);
same_cases!(super::DbValue => DbValue: Boolean(v), Int8(v), Int16(v), Int32(v), Int64(v), Uint8(v), Uint16(v), Uint32(v), Uint64(v), Floating32(v), Floating64(v), Str(v), Binary(v), DbNull, Unsupported);
same_cases!(ParameterValue => super::ParameterValue: Boolean(v), Int8(v), Int16(v), Int32(v), Int64(v), Uint8(v), Uint16(v), Uint32(v), Uint64(v), Floating32(v), Floating64(v), Str(v), Binary(v), DbNull);

impl From<super::Column> for Column {
    fn from(c: super::Column) -> Self {
        Column {
            name: c.name,
            data_type: c.data_type.into(),
        }
    }
}

fn params(params: Vec<ParameterValue>) -> Vec<super::ParameterValue> {
    params.into_iter().map(Into::into).collect()
}

impl v2::Host for MysqlView<'_> {}
impl wit::Host for MysqlView<'_> {}

impl wit::HostConnection for MysqlView<'_> {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        match self.state.open(&address) {
            Ok(db) => Ok(Ok(self.table.push(Connection { db })?)),
            Err(e) => {
                tracing::warn!(component = %self.state.component, "fermyon:spin/mysql open refused: {}", reason(&e));
                Ok(Err(e.into()))
            }
        }
    }

    async fn query(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        parameters: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let db = self.table.get(&this)?.db.clone();
        Ok(db
            .query(statement, params(parameters))
            .await
            .map(|(columns, rows)| RowSet {
                columns: columns.into_iter().map(Into::into).collect(),
                rows: rows
                    .into_iter()
                    .map(|row| row.into_iter().map(Into::into).collect())
                    .collect(),
            })
            .map_err(Into::into))
    }

    async fn execute(
        &mut self,
        this: Resource<Connection>,
        statement: String,
        parameters: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let db = self.table.get(&this)?.db.clone();
        Ok(db
            .execute(statement, params(parameters))
            .await
            .map_err(Into::into))
    }

    async fn drop(&mut self, rep: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

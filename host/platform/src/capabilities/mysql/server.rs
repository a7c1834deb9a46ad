//! The MySQL/MariaDB backend: a `mysql_async` pool per server URL, binary
//! protocol statements with positional parameters.

use super::{Column, DbDataType, DbValue, Error, ParameterValue, Row};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Value};

/// MySQL's collation id for `binary`: byte strings rather than text.
const BINARY_CHARSET: u16 = 63;

pub async fn ping(pool: &Pool) -> anyhow::Result<()> {
    let mut conn = pool.get_conn().await?;
    conn.ping().await?;
    Ok(())
}

pub async fn query(
    pool: &Pool,
    statement: String,
    params: Vec<ParameterValue>,
) -> Result<(Vec<Column>, Vec<Row>), Error> {
    let mut conn = pool.get_conn().await.map_err(connection_error)?;
    let mut result = conn
        .exec_iter(statement, to_params(params))
        .await
        .map_err(query_error)?;
    let columns = result.columns().map(|c| c.to_vec()).unwrap_or_default();
    let raw: Vec<mysql_async::Row> = result.collect().await.map_err(query_error)?;
    let types: Vec<DbDataType> = columns.iter().map(data_type).collect();
    let rows = raw
        .into_iter()
        .map(|row| {
            row.unwrap()
                .into_iter()
                .zip(&types)
                .map(|(v, t)| to_db_value(v, *t))
                .collect()
        })
        .collect();
    let columns = columns
        .iter()
        .zip(types)
        .map(|(c, data_type)| Column {
            name: c.name_str().into_owned(),
            data_type,
        })
        .collect();
    Ok((columns, rows))
}

pub async fn execute(
    pool: &Pool,
    statement: String,
    params: Vec<ParameterValue>,
) -> Result<(), Error> {
    let mut conn = pool.get_conn().await.map_err(connection_error)?;
    conn.exec_drop(statement, to_params(params))
        .await
        .map_err(query_error)
}

fn connection_error(e: mysql_async::Error) -> Error {
    Error::ConnectionFailed(format!("cannot reach the MySQL server: {e}"))
}

fn query_error(e: mysql_async::Error) -> Error {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => connection_error(e),
        e => Error::QueryFailed(e.to_string()),
    }
}

fn to_params(params: Vec<ParameterValue>) -> Params {
    if params.is_empty() {
        return Params::Empty;
    }
    Params::Positional(
        params
            .into_iter()
            .map(|p| match p {
                ParameterValue::Boolean(b) => Value::Int(b.into()),
                ParameterValue::Int8(v) => Value::Int(v.into()),
                ParameterValue::Int16(v) => Value::Int(v.into()),
                ParameterValue::Int32(v) => Value::Int(v.into()),
                ParameterValue::Int64(v) => Value::Int(v),
                ParameterValue::Uint8(v) => Value::UInt(v.into()),
                ParameterValue::Uint16(v) => Value::UInt(v.into()),
                ParameterValue::Uint32(v) => Value::UInt(v.into()),
                ParameterValue::Uint64(v) => Value::UInt(v),
                ParameterValue::Floating32(v) => Value::Float(v),
                ParameterValue::Floating64(v) => Value::Double(v),
                ParameterValue::Str(s) => Value::Bytes(s.into_bytes()),
                ParameterValue::Binary(b) => Value::Bytes(b),
                ParameterValue::DbNull => Value::NULL,
            })
            .collect(),
    )
}

fn data_type(c: &mysql_async::Column) -> DbDataType {
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    match c.column_type() {
        ColumnType::MYSQL_TYPE_TINY if c.column_length() == 1 => DbDataType::Boolean,
        ColumnType::MYSQL_TYPE_TINY if unsigned => DbDataType::Uint8,
        ColumnType::MYSQL_TYPE_TINY => DbDataType::Int8,
        ColumnType::MYSQL_TYPE_SHORT | ColumnType::MYSQL_TYPE_YEAR if unsigned => {
            DbDataType::Uint16
        }
        ColumnType::MYSQL_TYPE_SHORT | ColumnType::MYSQL_TYPE_YEAR => DbDataType::Int16,
        ColumnType::MYSQL_TYPE_LONG | ColumnType::MYSQL_TYPE_INT24 if unsigned => {
            DbDataType::Uint32
        }
        ColumnType::MYSQL_TYPE_LONG | ColumnType::MYSQL_TYPE_INT24 => DbDataType::Int32,
        ColumnType::MYSQL_TYPE_LONGLONG if unsigned => DbDataType::Uint64,
        ColumnType::MYSQL_TYPE_LONGLONG => DbDataType::Int64,
        ColumnType::MYSQL_TYPE_FLOAT => DbDataType::Floating32,
        ColumnType::MYSQL_TYPE_DOUBLE => DbDataType::Floating64,
        ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_BLOB => {
            if c.character_set() == BINARY_CHARSET {
                DbDataType::Binary
            } else {
                DbDataType::Str
            }
        }
        ColumnType::MYSQL_TYPE_DECIMAL
        | ColumnType::MYSQL_TYPE_NEWDECIMAL
        | ColumnType::MYSQL_TYPE_JSON
        | ColumnType::MYSQL_TYPE_ENUM
        | ColumnType::MYSQL_TYPE_SET
        | ColumnType::MYSQL_TYPE_DATE
        | ColumnType::MYSQL_TYPE_TIME
        | ColumnType::MYSQL_TYPE_DATETIME
        | ColumnType::MYSQL_TYPE_TIMESTAMP => DbDataType::Str,
        _ => DbDataType::Other,
    }
}

fn to_db_value(v: Value, t: DbDataType) -> DbValue {
    match v {
        Value::NULL => DbValue::DbNull,
        Value::Int(i) => int_value(i128::from(i), t),
        Value::UInt(u) => int_value(i128::from(u), t),
        Value::Float(f) => DbValue::Floating32(f),
        Value::Double(f) => DbValue::Floating64(f),
        Value::Bytes(b) if t == DbDataType::Binary => DbValue::Binary(b),
        Value::Bytes(b) => match String::from_utf8(b) {
            Ok(s) => DbValue::Str(s),
            Err(e) => DbValue::Binary(e.into_bytes()),
        },
        Value::Date(y, mo, d, h, mi, s, us) => DbValue::Str(if us == 0 {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
        } else {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
        }),
        Value::Time(neg, d, h, mi, s, us) => {
            let sign = if neg { "-" } else { "" };
            let h = u32::from(h) + d * 24;
            DbValue::Str(if us == 0 {
                format!("{sign}{h:02}:{mi:02}:{s:02}")
            } else {
                format!("{sign}{h:02}:{mi:02}:{s:02}.{us:06}")
            })
        }
    }
}

fn int_value(i: i128, t: DbDataType) -> DbValue {
    let fit = match t {
        DbDataType::Boolean => Some(DbValue::Boolean(i != 0)),
        DbDataType::Int8 => i8::try_from(i).ok().map(DbValue::Int8),
        DbDataType::Int16 => i16::try_from(i).ok().map(DbValue::Int16),
        DbDataType::Int32 => i32::try_from(i).ok().map(DbValue::Int32),
        DbDataType::Uint8 => u8::try_from(i).ok().map(DbValue::Uint8),
        DbDataType::Uint16 => u16::try_from(i).ok().map(DbValue::Uint16),
        DbDataType::Uint32 => u32::try_from(i).ok().map(DbValue::Uint32),
        DbDataType::Uint64 => u64::try_from(i).ok().map(DbValue::Uint64),
        _ => None,
    };
    fit.or_else(|| i64::try_from(i).ok().map(DbValue::Int64))
        .or_else(|| u64::try_from(i).ok().map(DbValue::Uint64))
        .unwrap_or(DbValue::Unsupported)
}

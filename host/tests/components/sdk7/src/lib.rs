//! A Spin 4 app as spin-sdk 7 builds it: a wasi:http@0.3 component whose
//! Spin imports are all `async func`s. Speaks the protocol in
//! `sdk-common/route.rs`, like the spin-sdk 3 and 5 components.

// The bindings wit-bindgen generates are unsafe FFI; the code written here
// is not.
#![allow(unsafe_code)]

#[path = "../../sdk-common/route.rs"]
mod route;

use http_body_util::BodyExt;
use route::Route;
use spin_sdk::http::{BoxBody, FullBody, Request, Response, StatusCode, box_body};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::mysql::DbValue;
use spin_sdk::sqlite::Value;

fn respond(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<BoxBody> {
    let mut response = Response::new(box_body(FullBody::new(body.into())));
    *response.status_mut() = status;
    response
}

#[http_service]
async fn handle(req: Request) -> Response<BoxBody> {
    match serve(req).await {
        Ok(response) => response,
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn serve(req: Request) -> Result<Response<BoxBody>, String> {
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().path().to_string());
    let query = req.uri().query().unwrap_or_default().to_string();
    let method = req.method().as_str().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| format!("{e:?}"))?;
    let ok = |body: Vec<u8>| Ok(respond(StatusCode::OK, body));
    let e = |e: &dyn std::fmt::Debug| format!("{e:?}");
    match route::route(&method, &path, &query) {
        Route::Hello => ok(b"hello from spin-sdk 7".to_vec()),
        Route::Var(name) => ok(spin_sdk::variables::get(&name)
            .await
            .map_err(|x| e(&x))?
            .into_bytes()),
        Route::Env(name) => ok(std::env::var(&name).map_err(|x| e(&x))?.into_bytes()),
        Route::File(path) => ok(std::fs::read(&path).map_err(|x| e(&x))?),
        Route::KvGet(store, key) => {
            let store = Store::open(&store).await.map_err(|x| e(&x))?;
            match store.get(&key).await.map_err(|x| e(&x))? {
                Some(value) => ok(value),
                None => Ok(respond(StatusCode::NOT_FOUND, "no such key")),
            }
        }
        Route::KvSet(store, key) => {
            let store = Store::open(&store).await.map_err(|x| e(&x))?;
            store.set(&key, &body).await.map_err(|x| e(&x))?;
            ok(Vec::new())
        }
        Route::KvDelete(store, key) => {
            let store = Store::open(&store).await.map_err(|x| e(&x))?;
            store.delete(&key).await.map_err(|x| e(&x))?;
            ok(Vec::new())
        }
        Route::KvKeys(store) => {
            let store = Store::open(&store).await.map_err(|x| e(&x))?;
            let keys = store.get_keys().await.collect().await.map_err(|x| e(&x))?;
            ok(route::keys(keys).into_bytes())
        }
        Route::Sqlite(db) => {
            let sql = String::from_utf8(body).map_err(|x| e(&x))?;
            let db = spin_sdk::sqlite::Connection::open(&db)
                .await
                .map_err(|x| e(&x))?;
            let result = db.execute(&sql, []).await.map_err(|x| e(&x))?;
            let columns = result.columns().to_vec();
            let rows: Vec<Vec<String>> = result
                .collect()
                .await
                .map_err(|x| e(&x))?
                .iter()
                .map(|row| row.values.iter().map(sqlite_text).collect())
                .collect();
            ok(route::table(&columns, &rows).into_bytes())
        }
        Route::Mysql => {
            let sql = String::from_utf8(body).map_err(|x| e(&x))?;
            let url = spin_sdk::variables::get("mysql_url")
                .await
                .map_err(|x| e(&x))?;
            let db = spin_sdk::mysql::Connection::open(url)
                .await
                .map_err(|x| e(&x))?;
            let result = db.query(sql, Vec::new()).await.map_err(|x| e(&x))?;
            let columns: Vec<String> = result.columns().iter().map(|c| c.name.clone()).collect();
            let width = columns.len();
            let rows: Vec<Vec<String>> = result
                .collect()
                .await
                .map_err(|x| e(&x))?
                .iter()
                .map(|row| (0..width).map(|i| mysql_text(&row[i])).collect())
                .collect();
            ok(route::table(&columns, &rows).into_bytes())
        }
        Route::Outbound(url) => {
            let response = spin_sdk::http::get(url).await.map_err(|x| e(&x))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|x| e(&x))?
                .to_bytes();
            Ok(respond(status, body))
        }
        Route::Redis => match spin_sdk::redis::Connection::open("redis://127.0.0.1:6379").await {
            Ok(_) => ok(b"opened".to_vec()),
            Err(x) => Err(e(&x)),
        },
        Route::Config(name) | Route::WasiKv(name) => Ok(respond(
            StatusCode::NOT_FOUND,
            format!("`{name}`: wasi:config and wasi:keyvalue are not in spin-sdk 7's stable API"),
        )),
        Route::NotFound => Ok(respond(StatusCode::NOT_FOUND, "no such route")),
    }
}

fn sqlite_text(value: &Value) -> String {
    match value {
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!("blob:{}", b.len()),
        Value::Null => "null".to_string(),
    }
}

fn mysql_text(value: &DbValue) -> String {
    match value {
        DbValue::Int32(i) => i.to_string(),
        DbValue::Int64(i) => i.to_string(),
        DbValue::Str(s) => s.clone(),
        DbValue::DbNull => "null".to_string(),
        other => format!("{other:?}"),
    }
}

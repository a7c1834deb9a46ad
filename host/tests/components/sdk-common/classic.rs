// The handler of the spin-sdk 3.x and 5.x components, whose APIs agree;
// each crate names its SQLite module (`sqlite_api`) and `GENERATION`, then
// includes this file. Speaks the protocol in `route.rs`.

#[path = "route.rs"]
mod route;

use route::Route;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::mysql::{self, DbValue};
use sqlite_api::{self as sqlite, Value};

#[http_component]
async fn handle(req: Request) -> Response {
    match serve(req).await {
        Ok(response) => response,
        Err(e) => Response::new(500, format!("{e:?}")),
    }
}

async fn serve(req: Request) -> anyhow::Result<Response> {
    let method = match req.method() {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        _ => "OTHER",
    };
    let path = req
        .header("spin-path-info")
        .and_then(|v| v.as_str())
        .unwrap_or(req.path())
        .to_string();
    let body = req.body().to_vec();
    let ok = |body: Vec<u8>| Ok(Response::new(200, body));
    match route::route(method, &path, req.query()) {
        Route::Hello => ok(format!("hello from spin-sdk {GENERATION}").into_bytes()),
        Route::Var(name) => ok(spin_sdk::variables::get(&name)?.into_bytes()),
        Route::Env(name) => ok(std::env::var(&name)?.into_bytes()),
        Route::File(path) => ok(std::fs::read(&path)?),
        Route::KvGet(store, key) => match Store::open(&store)?.get(&key)? {
            Some(value) => ok(value),
            None => Ok(Response::new(404, "no such key")),
        },
        Route::KvSet(store, key) => {
            Store::open(&store)?.set(&key, &body)?;
            ok(Vec::new())
        }
        Route::KvDelete(store, key) => {
            Store::open(&store)?.delete(&key)?;
            ok(Vec::new())
        }
        Route::KvKeys(store) => ok(route::keys(Store::open(&store)?.get_keys()?).into_bytes()),
        Route::Sqlite(db) => {
            let sql = String::from_utf8(body)?;
            let result = sqlite::Connection::open(&db)?.execute(&sql, &[])?;
            let rows: Vec<Vec<String>> = result
                .rows
                .iter()
                .map(|row| row.values.iter().map(sqlite_text).collect())
                .collect();
            ok(route::table(&result.columns, &rows).into_bytes())
        }
        Route::Mysql => {
            let sql = String::from_utf8(body)?;
            let url = spin_sdk::variables::get("mysql_url")?;
            let set = mysql::Connection::open(&url)?.query(&sql, &[])?;
            let columns: Vec<String> = set.columns.iter().map(|c| c.name.clone()).collect();
            let rows: Vec<Vec<String>> = set
                .rows
                .iter()
                .map(|row| row.iter().map(mysql_text).collect())
                .collect();
            ok(route::table(&columns, &rows).into_bytes())
        }
        Route::Outbound(url) => {
            let response: Response = spin_sdk::http::send(Request::get(url)).await?;
            Ok(Response::new(*response.status(), response.into_body()))
        }
        Route::Redis => match spin_sdk::redis::Connection::open("redis://127.0.0.1:6379") {
            Ok(_) => ok(b"opened".to_vec()),
            Err(e) => Ok(Response::new(500, format!("{e:?}"))),
        },
        Route::Config(name) => match spin_sdk::wit::wasi::config::store::get(&name) {
            Ok(Some(value)) => ok(value.into_bytes()),
            Ok(None) => Ok(Response::new(404, "no such variable")),
            Err(e) => Ok(Response::new(500, format!("{e:?}"))),
        },
        Route::WasiKv(key) => {
            use spin_sdk::wit::wasi::keyvalue::store;
            let bucket = store::open("default").map_err(|e| anyhow::anyhow!("{e:?}"))?;
            match bucket.get(&key).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                Some(value) => ok(value),
                None => Ok(Response::new(404, "no such key")),
            }
        }
        Route::NotFound => Ok(Response::new(404, "no such route")),
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

//! A Spin 4.0 app as spin-sdk 6.0 builds it: WASI 0.3 release-candidate
//! (`rc-2026-03-15`) interfaces, which the host maps onto WASI 0.3.0.

use spin_sdk::http::Request;
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> String {
    let path = req.uri().path().to_string();
    match path.rsplit('/').next() {
        Some("kv") => {
            let store = match spin_sdk::key_value::Store::open_default().await {
                Ok(store) => store,
                Err(e) => return format!("{e:?}"),
            };
            if let Err(e) = store.set("from-sdk6", b"6").await {
                return format!("{e:?}");
            }
            match store.get("from-sdk6").await {
                Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                other => format!("{other:?}"),
            }
        }
        _ => "hello from spin-sdk 6".to_string(),
    }
}

//! A component that exercises the host: each route shows one behaviour the
//! host must handle (streaming, variables, outbound HTTP, traps, runaway loops,
//! unbounded allocation).

use spin_sdk::http::{BoxBody, FullBody, Request, Response, StatusCode, box_body};
use spin_sdk::http_service;
use std::sync::atomic::{AtomicU32, Ordering};

mod blobs {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../../src/capabilities/blobs/wit",
        world: "spindle:blobs/blobs-client",
        generate_all,
    });
}

use blobs::spindle::blobs::store;

fn blob_error(e: store::Error) -> Response<BoxBody> {
    let status = match &e {
        store::Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        store::Error::NotFound(_) => StatusCode::NOT_FOUND,
        store::Error::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, format!("{e:?}"))
}

/// `POST /blob/BUCKET` stores the body (streamed); `GET /blob/BUCKET/ID`
/// returns the file.
async fn blob(req: Request, rest: &str) -> Response<BoxBody> {
    use http_body_util::BodyExt;
    let (bucket, id) = rest.split_once('/').unwrap_or((rest, ""));
    if id.is_empty() {
        let (mut tx, rx) = blobs::wit_stream::new::<u8>();
        let mut body = req.into_body();
        spin_sdk::wit_bindgen::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data()
                    && !tx.write_all(data.to_vec()).await.is_empty()
                {
                    return;
                }
            }
        });
        let file = store::NewFile {
            filename: "upload.bin".into(),
            content_type: Some("application/octet-stream".into()),
            metadata: vec![("owner".into(), "testbed".into())],
        };
        return match store::create(bucket.to_string(), file, rx).await {
            Ok(info) => text(StatusCode::CREATED, info.id),
            Err(e) => blob_error(e),
        };
    }
    match store::read(bucket.to_string(), id.to_string(), 0, None).await {
        Ok((_info, data, done)) => {
            let bytes = data.collect().await;
            match done.await {
                Ok(()) => Response::new(box_body(FullBody::new(bytes::Bytes::from(bytes)))),
                Err(e) => blob_error(e),
            }
        }
        Err(e) => blob_error(e),
    }
}

/// Requests this instance has seen: 1 on every request when the host gives
/// each request a fresh instance.
static SEEN: AtomicU32 = AtomicU32::new(0);

fn text(status: StatusCode, body: impl Into<String>) -> Response<BoxBody> {
    let mut resp = Response::new(box_body(FullBody::new(bytes::Bytes::from(body.into()))));
    *resp.status_mut() = status;
    resp
}

fn query_param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[http_service]
async fn handle(req: Request) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/hello" => text(StatusCode::OK, "hello from wasi:http@0.3"),
        "/count" => text(
            StatusCode::OK,
            (SEEN.fetch_add(1, Ordering::Relaxed) + 1).to_string(),
        ),
        // Streams the request body straight back, chunk by chunk.
        "/echo" => Response::new(box_body(req.into_body())),
        "/outbound" => {
            let Some(url) = query_param(&req, "url") else {
                return text(StatusCode::BAD_REQUEST, "missing url");
            };
            match spin_sdk::http::get(url).await {
                Ok(resp) => {
                    let status = resp.status();
                    let mut out = Response::new(box_body(resp.into_body()));
                    *out.status_mut() = status;
                    out
                }
                Err(e) => text(StatusCode::BAD_GATEWAY, format!("outbound refused: {e}")),
            }
        }
        "/sleep" => {
            let ms = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
            text(StatusCode::OK, "slept")
        }
        "/loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "/trap" => panic!("deliberate trap"),
        "/alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        p if p.starts_with("/blob/") => {
            let rest = p["/blob/".len()..].to_string();
            blob(req, &rest).await
        }
        p if p.starts_with("/var/") => match spin_sdk::variables::get(&p[5..]).await {
            Ok(v) => text(StatusCode::OK, v),
            Err(e) => text(StatusCode::NOT_FOUND, format!("{e:?}")),
        },
        _ => text(StatusCode::NOT_FOUND, "no such route in testbed"),
    }
}

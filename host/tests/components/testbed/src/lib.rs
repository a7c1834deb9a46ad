//! A component that exercises the host: each route shows one behaviour the
//! host must handle (streaming, variables, outbound HTTP, traps, runaway loops,
//! unbounded allocation, SQL that tries to leave its database, the `spin-*`
//! headers, its environment and its files).

// The bindings wit-bindgen generates (imports and the exported handler)
// are unsafe FFI; the code written here is not.
#![allow(unsafe_code)]

use spin_sdk::http::{BoxBody, FullBody, Request, Response, StatusCode, box_body};
use spin_sdk::http_service;
use std::sync::atomic::{AtomicU32, Ordering};

mod blobs {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../../platform/src/capabilities/blobs/wit",
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

/// `POST /blob/BUCKET[?owner=NAME]` stores the body (streamed) with metadata
/// `owner` (default `testbed`); `GET /blob/BUCKET/ID` returns the file.
async fn blob(req: Request, rest: &str) -> Response<BoxBody> {
    use http_body_util::BodyExt;
    let (bucket, id) = rest.split_once('/').unwrap_or((rest, ""));
    if id.is_empty() {
        let owner = query_param(&req, "owner").unwrap_or("testbed").to_string();
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
            metadata: vec![("owner".into(), owner)],
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

mod queue {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../../platform/src/capabilities/queue/wit",
        world: "spindle:queue/queue-handler",
        generate_all,
    });
}

mod mail {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../../platform/src/capabilities/mail/wit",
        world: "spindle:mail/mail-client",
        generate_all,
    });
}

use mail::spindle::mail::mailer;
use queue::exports::spindle::queue::handler::{self, Failure};

/// The queue handler: `retry` and `reject` fail as asked, `trap` traps,
/// `sleep:MS` waits that long first, and anything else is mailed to
/// probe@example.com with the body as subject and a Message-ID derived from
/// the queue message (so redeliveries match).
struct QueueProbe;

impl handler::Guest for QueueProbe {
    async fn handle(message: handler::Message) -> Result<(), Failure> {
        let body = String::from_utf8_lossy(&message.body).to_string();
        if let Some(ms) = body
            .strip_prefix("sleep:")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
        }
        match body.as_str() {
            "retry" => Err(Failure::Retry(format!(
                "asked to retry (attempt {})",
                message.attempt
            ))),
            "reject" => Err(Failure::Reject("asked to reject".into())),
            "trap" => panic!("asked to trap"),
            _ => {
                let email = mailer::Message {
                    to: vec!["probe@example.com".into()],
                    subject: body,
                    text: format!("attempt {}", message.attempt),
                    message_id: Some(format!("{}@spindle.test", message.message_id)),
                };
                mailer::send(email)
                    .await
                    .map(drop)
                    .map_err(|e| Failure::Retry(format!("{e:?}")))
            }
        }
    }
}

queue::export!(QueueProbe with_types_in queue);

async fn read_all(req: Request) -> Vec<u8> {
    use http_body_util::BodyExt;
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default()
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
    // Under a wildcard route the host passes the path below the route.
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().path().to_string());
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
        "/hold" => {
            // Touches `mb` MiB, then keeps it for `ms` milliseconds.
            let mb = query_param(&req, "mb")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1usize);
            let ms = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            let hoard = vec![1u8; mb << 20];
            spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
            text(
                StatusCode::OK,
                format!("held {} MiB", std::hint::black_box(&hoard).len() >> 20),
            )
        }
        "/trap" => panic!("deliberate trap"),
        "/alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        p if p.starts_with("/publish/") => {
            let name = p["/publish/".len()..].to_string();
            let body = read_all(req).await;
            match queue::spindle::queue::publisher::publish(name, body).await {
                Ok(()) => text(StatusCode::ACCEPTED, "published"),
                Err(e @ queue::spindle::queue::publisher::Error::PermissionDenied(_)) => {
                    text(StatusCode::FORBIDDEN, format!("{e:?}"))
                }
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e:?}")),
            }
        }
        "/mail" => {
            let to = String::from_utf8_lossy(&read_all(req).await).to_string();
            let email = mailer::Message {
                to: vec![to],
                subject: "hello".into(),
                text: "from the testbed".into(),
                message_id: None,
            };
            match mailer::send(email).await {
                Ok(id) => text(StatusCode::OK, id),
                Err(e @ mailer::Error::PermissionDenied(_)) => {
                    text(StatusCode::FORBIDDEN, format!("{e:?}"))
                }
                Err(e @ mailer::Error::InvalidAddress(_)) => {
                    text(StatusCode::BAD_REQUEST, format!("{e:?}"))
                }
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e:?}")),
            }
        }
        "/sql" => {
            // The body is one statement, run on the database named by the
            // `x-db` header (a label or a mysql:// URL).
            let db = req
                .headers()
                .get("x-db")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("default")
                .to_string();
            let statement = String::from_utf8_lossy(&read_all(req).await).to_string();
            let outcome = match spin_sdk::mysql::Connection::open(db).await {
                Ok(conn) => conn.execute(statement, Vec::new()).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => text(StatusCode::OK, "ok"),
                Err(e) => {
                    let message = e.to_string();
                    let status = if message.contains("permission denied") {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    text(status, message)
                }
            }
        }
        p if p.starts_with("/blob/") => {
            let rest = p["/blob/".len()..].to_string();
            blob(req, &rest).await
        }
        // The `spin-*` headers the host set, one `name: value` per line.
        "/headers" => {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .filter(|(name, _)| name.as_str().starts_with("spin-"))
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                .collect();
            lines.sort();
            text(StatusCode::OK, lines.join("\n"))
        }
        p if p.starts_with("/env/") => match std::env::var(&p[5..]) {
            Ok(v) => text(StatusCode::OK, v),
            Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
        },
        // Reads a file of the component's `files` (mounted at /).
        p if p.starts_with("/file/") => match std::fs::read_to_string(&p[5..]) {
            Ok(v) => text(StatusCode::OK, v),
            Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
        },
        // Tries to write one: the mount is read-only.
        p if p.starts_with("/write/") => match std::fs::write(&p[6..], b"changed") {
            Ok(()) => text(StatusCode::OK, "written"),
            Err(e) => text(StatusCode::FORBIDDEN, e.to_string()),
        },
        p if p.starts_with("/var/") => match spin_sdk::variables::get(&p[5..]).await {
            Ok(v) => text(StatusCode::OK, v),
            Err(e) => text(StatusCode::NOT_FOUND, format!("{e:?}")),
        },
        _ => text(StatusCode::NOT_FOUND, "no such route in testbed"),
    }
}

//! A component that says which version it is, for the hot-redeploy tests.
//!
//! The tests make a second version of this one build by overwriting the
//! version string in its data segment (same length): a different artifact
//! (another sha256) that answers differently, without a second build.
//!
//! - `GET /version`: the version string.
//! - `GET /slow?ms=N`: a streaming response: the version at once, then,
//!   N ms later, `+done` (a slow download that outlives a swap).
//! - `POST /enqueue?ms=N`: publishes `N` to the queue `jobs`.
//! - queue message `N`: mails probe@example.com `start <version>`, waits
//!   N ms, then mails `done <version>` (a slow invocation that outlives a
//!   swap).

// The bindings wit-bindgen generates (imports and the exported handler)
// are unsafe FFI; the code written here is not.
#![allow(unsafe_code)]

use futures::SinkExt;
use http_body_util::StreamBody;
use spin_sdk::http::{BoxBody, FullBody, Request, Response, StatusCode, box_body};
use spin_sdk::http_service;

/// Patched by the tests: keep the marker unique and its length fixed.
static VERSION: &str = "deploy-probe-version-1";

fn version() -> String {
    // Read through black_box so the string stays one data-segment constant.
    std::hint::black_box(VERSION).to_string()
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

async fn sleep_ms(ms: u64) {
    spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
}

struct Probe;

impl handler::Guest for Probe {
    async fn handle(message: handler::Message) -> Result<(), Failure> {
        let ms = String::from_utf8_lossy(&message.body)
            .trim()
            .parse()
            .unwrap_or(0);
        mail(
            &format!("start {}", version()),
            &message.message_id,
            "start",
        )
        .await?;
        sleep_ms(ms).await;
        mail(&format!("done {}", version()), &message.message_id, "done").await
    }
}

async fn mail(subject: &str, message_id: &str, step: &str) -> Result<(), Failure> {
    let email = mailer::Message {
        to: vec!["probe@example.com".into()],
        subject: subject.into(),
        text: format!("message {message_id}"),
        message_id: Some(format!("{step}-{message_id}@spindle.test")),
    };
    mailer::send(email)
        .await
        .map(drop)
        .map_err(|e| Failure::Retry(format!("{e:?}")))
}

queue::export!(Probe with_types_in queue);

fn text(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut resp = Response::new(box_body(FullBody::new(bytes::Bytes::from(body))));
    *resp.status_mut() = status;
    resp
}

#[http_service]
async fn handle(req: Request) -> Response<BoxBody> {
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().path().to_string());
    match path.as_str() {
        "/version" => text(StatusCode::OK, version()),
        "/enqueue" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .unwrap_or("0");
            match queue::spindle::queue::publisher::publish("jobs".into(), ms.as_bytes().to_vec())
                .await
            {
                Ok(()) => text(StatusCode::ACCEPTED, "published".into()),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e:?}")),
            }
        }
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            let (mut tx, rx) = futures::channel::mpsc::channel::<
                Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
            >(2);
            spin_sdk::wit_bindgen::spawn(async move {
                let first = bytes::Bytes::from(version());
                if tx.send(Ok(http_body::Frame::data(first))).await.is_err() {
                    return;
                }
                sleep_ms(ms).await;
                let _ = tx
                    .send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                        b"+done",
                    ))))
                    .await;
            });
            Response::new(box_body(StreamBody::new(rx)))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route {path} in {}", version()),
        ),
    }
}

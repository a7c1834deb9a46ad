//! The admin listener: liveness, readiness and Prometheus metrics, on an
//! address of its own so probes and scrapes never queue behind user traffic.

use crate::app::App;
use crate::trigger::http::{host_response, json_error};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;

async fn route(app: &App, path: &str) -> http::Response<WasiBody> {
    match path {
        "/healthz" => host_response(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        // Components are compiled before the admin listener starts, so
        // readiness is down to the backends answering.
        "/readyz" => match app.check_backends().await {
            Ok(()) => host_response(
                StatusCode::OK,
                "application/json",
                r#"{"status":"ready"}"#.into(),
            ),
            Err(e) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {e:#}"),
            ),
        },
        p if p.starts_with("/queues/") && p.ends_with("/dead-letters") => {
            let queue = &p["/queues/".len()..p.len() - "/dead-letters".len()];
            dead_letters(app, queue).await
        }
        "/metrics" => host_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics().encode(),
        ),
        _ => json_error(
            StatusCode::NOT_FOUND,
            &format!(
                "no admin endpoint {path}; try /healthz, /readyz, /metrics or /queues/QUEUE/dead-letters"
            ),
        ),
    }
}

/// The oldest dead letters of a queue, so an operator can see what failed
/// and why without a broker console.
async fn dead_letters(app: &App, queue: &str) -> http::Response<WasiBody> {
    use crate::capabilities::queue::QueueError;
    match app.broker().dead_letters(queue, 100).await {
        Ok(letters) => {
            let list: Vec<_> = letters
                .into_iter()
                .map(|d| {
                    serde_json::json!({
                        "message_id": d.message_id,
                        "attempt": d.attempt,
                        "reason": d.reason,
                        "body": String::from_utf8_lossy(&d.body),
                    })
                })
                .collect();
            host_response(
                StatusCode::OK,
                "application/json",
                serde_json::Value::from(list).to_string(),
            )
        }
        Err(e @ QueueError::UnknownQueue { .. }) => {
            json_error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&app, req.uri().path()).await) }
            },
        );
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

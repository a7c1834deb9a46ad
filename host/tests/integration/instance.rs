//! Grants and limits at the instance level: the application assembled
//! in this process (`App::load`, embedded backends) and invoked through
//! its HTTP trigger, without spawning `spindle`. The process-level tests
//! (`runtime.rs`) check the same behaviour through a real listener.

use crate::support;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use spindle_platform::app::{App, AppConfig};
use spindle_platform::capabilities::Backends;
use spindle_platform::capabilities::capability::BackendEnv;
use spindle_platform::capabilities::outbound_http::InternalDispatch;
use spindle_platform::manifest::Manifest;
use spindle_platform::runtime_config::RuntimeConfig;
use std::sync::Arc;

/// The testbed with one bucket granted and nothing else, under tight limits.
async fn load() -> (tempfile::TempDir, Arc<App>) {
    let wasm = support::build_components();
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("spin.toml");
    std::fs::write(
        &manifest_path,
        format!(
            r#"spin_manifest_version = 2
[application]
name = "instance"
[[trigger.http]]
route = "/..."
component = "testbed"
[component.testbed]
source = "{}"
blob_buckets = ["videos"]
"#,
            wasm.join("testbed.wasm").display()
        ),
    )
    .unwrap();
    let manifest = Manifest::load(&manifest_path).unwrap();
    let runtime_config: RuntimeConfig =
        toml::from_str("[limits]\nrequest_timeout_secs = 2\nmemory_limit_mb = 64\n").unwrap();
    let state_dir = dir.path().join("state");
    let backends = Backends::build(&BackendEnv {
        manifest: &manifest,
        runtime_config: &runtime_config,
        state_dir: &state_dir,
        variable_flags: &[],
        extra_queues: &[],
        key_value_flags: &[],
        sqlite_flags: &[],
    })
    .await
    .unwrap();
    let config = AppConfig {
        manifest,
        runtime_config,
        cache_dir: dir.path().join("cache"),
        listen_addr: "127.0.0.1:3000".parse().unwrap(),
        backends,
        host_id: "instance-test".into(),
    };
    let app = tokio::task::spawn_blocking(move || App::load(config))
        .await
        .unwrap()
        .unwrap();
    // Start-up reads the (empty) deploy records; requests wait for it.
    let deploys = app.start_deploys().await.unwrap();
    std::mem::forget(deploys);
    (dir, app)
}

/// Sends `GET path` (or a POST with `body`) to the testbed in-process.
async fn call(app: &Arc<App>, path: &str, body: Option<&str>) -> (u16, String) {
    let mut request = http::Request::builder().uri(path);
    if body.is_some() {
        request = request.method("POST");
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let response = app
        .http()
        .clone()
        .dispatch("testbed", request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_are_enforced_per_instance() {
    let (_dir, app) = load().await;
    assert_eq!(
        call(&app, "/hello", None).await,
        (200, "hello from wasi:http@0.3".to_string())
    );
    // Granted: the bucket works.
    let (status, body) = call(&app, "/blob/videos", Some("bytes")).await;
    assert!(status < 300, "{status} {body}");
    // Not granted: another bucket, queues, mail and SQL are refused.
    let (status, body) = call(&app, "/blob/secrets", Some("bytes")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("blob_buckets"), "{body}");
    let (status, body) = call(&app, "/publish/jobs", Some("{}")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("publish_queues"), "{body}");
    let (status, body) = call(&app, "/mail", Some("someone@example.com")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(&app, "/sql", Some("SELECT 1")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("mysql_databases"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_end_invocations_with_their_own_errors() {
    let (_dir, app) = load().await;
    let (status, body) = call(&app, "/loop", None).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not respond within 2s"), "{body}");
    let (status, body) = call(&app, "/alloc", None).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("exceeded its memory limit of 64 MiB"),
        "{body}"
    );
    let (status, body) = call(&app, "/trap", None).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("trapped"), "{body}");
    // A fresh instance after each failure: the component still answers.
    assert_eq!(call(&app, "/count", None).await, (200, "1".to_string()));
    // Chained calls are counted like any request, under their route.
    let metrics = app.metrics().encode();
    assert!(
        metrics.contains(r#"component="testbed""#) && metrics.contains(r#"route="/...""#),
        "{metrics}"
    );
}

//! The platform over HTTP against a real `spindle up`: both wasi:http
//! generations, streaming in both directions, limits, variables, outbound
//! HTTP, manifest errors, the compile cache and the admin listener.

use crate::support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, expect_json_error, up, up_fails, write_manifest};

fn testbed_manifest(extra_allowed: &str) -> String {
    let wasm = support::build_components();
    format!(
        r#"spin_manifest_version = 2
[application]
name = "testbed"
[variables]
greeting = {{ default = "hello" }}
secret_token = {{ required = true, secret = true }}
[[trigger.http]]
route = "/..."
component = "testbed"
[[trigger.http]]
route = "/p2/..."
component = "hello-p2"
[[trigger.http]]
route = {{ private = true }}
component = "hidden"
[component.testbed]
source = "{tb}"
allowed_outbound_hosts = ["http://hello-p2.spin.internal", "http://hidden.spin.internal"{extra_allowed}]
blob_buckets = ["videos"]
mysql_databases = ["default"]
[component.testbed.variables]
greeting = "{{{{ greeting }}}}, world"
token = "{{{{ secret_token }}}}"
[component.hello-p2]
source = "{p2}"
[component.hidden]
source = "{tb}"
"#,
        tb = wasm.join("testbed.wasm").display(),
        p2 = wasm.join("hello_p2.wasm").display(),
    )
}

const LIMITS: &str = "[limits]\nrequest_timeout_secs = 2\nmemory_limit_mb = 64\n";

fn start(dir: &tempfile::TempDir, manifest: &std::path::Path) -> Spindle {
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, LIMITS).unwrap();
    up(UpOptions::new(manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string())
        .arg("--variable")
        .arg("secret_token=s3cr3t-value")
        .env("SPIN_VARIABLE_GREETING", "howdy"))
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_both_wasi_http_generations_and_variables() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest);
    let c = support::client();

    let p3 = c.get(format!("{}/hello", s.url)).send().await.unwrap();
    assert_eq!(p3.status(), 200);
    assert_eq!(p3.text().await.unwrap(), "hello from wasi:http@0.3");

    // Every request gets a fresh instance: no state survives between them.
    for _ in 0..5 {
        let n = c.get(format!("{}/count", s.url)).send().await.unwrap();
        assert_eq!(n.text().await.unwrap(), "1");
    }

    let p2 = c.get(format!("{}/p2/hello", s.url)).send().await.unwrap();
    assert_eq!(p2.status(), 200);
    assert_eq!(p2.text().await.unwrap(), "hello from wasi:http@0.2");

    // Env beats the manifest default; the template wraps it.
    let v = c
        .get(format!("{}/var/greeting", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(v.text().await.unwrap(), "howdy, world");
    let v = c.get(format!("{}/var/token", s.url)).send().await.unwrap();
    assert_eq!(v.text().await.unwrap(), "s3cr3t-value");
    // Only the component's own variables are visible.
    let v = c
        .get(format!("{}/var/secret_token", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), 404);
    assert!(v.text().await.unwrap().contains("Undefined"));
    // Secrets never reach the log.
    assert!(!s.stderr().contains("s3cr3t-value"), "{}", s.stderr());

    // `hidden` (the testbed without grants) started, and the log said which
    // grants its imports lack; hello-p2 needs none.
    assert!(
        s.log_contains("which [component.hidden] in spin.toml does not grant"),
        "{}",
        s.stderr()
    );
    let log = s.stderr();
    let warning = log
        .lines()
        .find(|l| l.contains("[component.hidden]"))
        .unwrap_or_default();
    for grant in ["blob_buckets", "publish_queues", "send_mail"] {
        assert!(warning.contains(&format!("(grant: {grant}")), "{warning}");
    }
    assert!(!log.contains("[component.hello-p2]"), "{log}");
}

/// Sends the request body in chunks and reads each chunk back before the
/// next is sent: only a host that streams both ways can pass.
async fn duplex_echo(base: &str, path: &str) {
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post(path)
        .header("host", addr)
        .body(body)
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    tx.send(Ok(hyper::body::Frame::data(Bytes::from(chunk.clone()))))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("response headers arrive before the request body ends")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for round in 0..8 {
        let mut got = 0;
        while got < chunk.len() {
            let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: echo did not arrive while the request was still open")
                })
                .expect("body ended early")
                .unwrap();
            if let Some(data) = frame.data_ref() {
                got += data.len();
            }
        }
        assert_eq!(got, chunk.len(), "round {round}");
        if round < 7 {
            tx.send(Ok(hyper::body::Frame::data(Bytes::from(chunk.clone()))))
                .await
                .unwrap();
        }
    }
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_in_both_directions() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest);
    duplex_echo(&s.url, "/echo").await;
    duplex_echo(&s.url, "/p2/echo").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_stop_misbehaving_guests_while_others_are_served() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest);
    let c = support::client();

    // A runaway loop, an idle hang, a trap and unbounded allocation, all at once,
    // while ordinary requests keep being answered.
    let bad = ["/loop", "/sleep?ms=60000", "/trap", "/alloc"].map(|p| {
        let c = c.clone();
        let url = format!("{}{p}", s.url);
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = c.get(url).send().await.unwrap();
            (resp, started.elapsed())
        })
    });
    for _ in 0..20 {
        let started = Instant::now();
        let r = c.get(format!("{}/hello", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Served while the runaway guests still run: a sanity bound, not a
        // speed target.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hello took {:?}",
            started.elapsed()
        );
    }
    let [looping, sleeping, trap, alloc] = bad;
    let (resp, took) = looping.await.unwrap();
    let msg = expect_json_error(resp, 504).await;
    assert!(msg.contains("did not respond within 2s"), "{msg}");
    assert!(
        took < Duration::from_secs(15),
        "loop stopped after {took:?}"
    );
    let (resp, took) = sleeping.await.unwrap();
    expect_json_error(resp, 504).await;
    assert!(
        took < Duration::from_secs(15),
        "sleep stopped after {took:?}"
    );
    let (resp, _) = trap.await.unwrap();
    let msg = expect_json_error(resp, 500).await;
    assert!(msg.contains("trapped"), "{msg}");
    let (resp, _) = alloc.await.unwrap();
    let msg = expect_json_error(resp, 500).await;
    assert!(msg.contains("memory limit of 64 MiB"), "{msg}");

    let r = c.get(format!("{}/hello", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_limited_to_allowed_hosts() {
    // An upstream the testbed is not allowed to reach.
    let upstream_addr = support::upstream("upstream says hi").await;

    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest);
    let c = support::client();
    let outbound = |url: String| {
        let c = c.clone();
        let base = s.url.clone();
        async move {
            // The testbed reads the query raw, so the URL goes unencoded.
            c.get(format!("{base}/outbound?url={url}"))
                .send()
                .await
                .unwrap()
        }
    };

    // In-process service chaining to a component with a route and a private one.
    let r = outbound("http://hello-p2.spin.internal/hello".into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from wasi:http@0.2");
    let r = outbound("http://hidden.spin.internal/hello".into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from wasi:http@0.3");

    // Not in allowed_outbound_hosts: refused, with the reason in the host log.
    let r = outbound(format!("http://{upstream_addr}/")).await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
    // The warning is logged as the refusal happens, which may be after
    // the response is already on its way back.
    assert!(s.log_contains("add \"http://127.0.0.1:"), "{}", s.stderr());
    drop(s);

    // The same request once the host is allowed.
    let (dir, manifest) =
        write_manifest(&testbed_manifest(&format!(", \"http://{upstream_addr}\"")));
    let s = start(&dir, &manifest);
    let r = c
        .get(format!("{}/outbound?url=http://{upstream_addr}/", s.url))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "upstream says hi"));
}

#[tokio::test(flavor = "multi_thread")]
async fn second_start_uses_the_compile_cache() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let cache = tempfile::tempdir().unwrap();
    let mut opts = UpOptions::new(&manifest)
        .arg("--variable")
        .arg("secret_token=x");
    opts.cache_dir = cache.path().to_path_buf();
    let first = up(opts);
    assert!(first.log_contains("compiled in"), "{}", first.stderr());
    drop(first);
    let mut opts = UpOptions::new(&manifest)
        .arg("--variable")
        .arg("secret_token=x");
    opts.cache_dir = cache.path().to_path_buf();
    let second = up(opts);
    assert!(second.log_contains("from cache"), "{}", second.stderr());
    let log = second.stderr();
    assert!(!log.contains("compiled in"), "{log}");
    let r = support::client()
        .get(format!("{}/hello", second.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest);
    let c = support::client();
    for _ in 0..3 {
        c.get(format!("{}/hello", s.url)).send().await.unwrap();
    }
    let r = c.get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/readyz", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = c
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"spindle_http_requests_total{component="testbed",route="/...",status="200"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("spindle_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"spindle_instantiation_duration_seconds_count{component="testbed"} 3"#),
        "{metrics}"
    );
    let r = c.get(format!("{}/nope", s.admin)).send().await.unwrap();
    expect_json_error(r, 404).await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_oversized_headers_get_json_errors() {
    let (dir, manifest) = write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"t\"\n[[trigger.http]]\nroute = \"/hello\"\ncomponent = \"testbed\"\n[component.testbed]\nsource = \"{}\"\n",
        support::build_components().join("testbed.wasm").display()
    ));
    let s = up(UpOptions::new(&manifest));
    let c = support::client();
    let r = c.get(format!("{}/hello", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/nothing/here", s.url))
        .send()
        .await
        .unwrap();
    let msg = expect_json_error(r, 404).await;
    assert!(msg.contains("/nothing/here"), "{msg}");
    let r = c
        .get(format!("{}/hello", s.url))
        .header("x-big", "a".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    expect_json_error(r, 431).await;
    drop(dir);
}

#[test]
fn manifest_errors_stop_start_up_with_file_key_and_fix() {
    let wasm = support::build_components().join("testbed.wasm");
    let head = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";
    let cases = [
        (
            format!(
                "{head}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"nope\"\n[component.a]\nsource = \"{}\"\n",
                wasm.display()
            ),
            "trigger.http[0].component",
            "define [component.nope]",
        ),
        (
            format!("{head}[component.a]\nsource = \"missing.wasm\"\n"),
            "component.a.source",
            "point `source` at a built .wasm component",
        ),
        (
            format!(
                "{head}[[trigger.http]]\nroute = \"/a/*/b\"\ncomponent = \"a\"\n[component.a]\nsource = \"{}\"\n",
                wasm.display()
            ),
            "trigger.http[0].route",
            "write an exact path",
        ),
        (
            format!(
                "{head}[variables]\nsecret = {{ required = true }}\n[component.a]\nsource = \"{}\"\n",
                wasm.display()
            ),
            "variables.secret",
            "SPIN_VARIABLE_SECRET",
        ),
    ];
    for (text, key, fix) in cases {
        let (_dir, manifest) = write_manifest(&text);
        let err = up_fails(UpOptions::new(&manifest));
        assert!(err.contains("spin.toml"), "no file in: {err}");
        assert!(err.contains(key), "no key {key} in: {err}");
        assert!(err.contains(fix), "no fix {fix} in: {err}");
    }
    // A file that is not a component is refused with the component named.
    let (dir, _) = write_manifest("");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let (_d, manifest) = write_manifest(&format!(
        "{head}[component.a]\nsource = \"{}\"\n",
        junk.display()
    ));
    let err = up_fails(UpOptions::new(&manifest));
    assert!(
        err.contains("component `a`") && err.contains("not WebAssembly"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_backends() {
    // A MySQL server that is not there, granted to a routed component: the
    // host serves, but is not ready.
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, "[mysql]\nurl = \"mysql://root@127.0.0.1:1/none\"\n").unwrap();
    let s = up(UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string())
        .arg("--variable")
        .arg("secret_token=x"));
    let c = support::client();
    let r = c.get(format!("{}/readyz", s.admin)).send().await.unwrap();
    let msg = expect_json_error(r, 503).await;
    assert!(msg.contains("MySQL"), "{msg}");
    let r = c.get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn build_runs_component_build_commands() {
    let wasm = support::build_components().join("testbed.wasm");
    let (dir, manifest) = write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"t\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"out/a.wasm\"\n[component.a.build]\ncommand = \"mkdir -p out && cp {} out/a.wasm\"\n",
        wasm.display()
    ));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["build", "--manifest"])
        .arg(&manifest)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dir.path().join("out/a.wasm").is_file());

    // An unknown component is named in the error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["build", "--manifest"])
        .arg(&manifest)
        .arg("nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no component `nope`"));

    // A failing build command stops with the component named.
    let (_d, failing) = write_manifest(
        "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.a]\nsource = \"a.wasm\"\n[component.a.build]\ncommand = \"exit 3\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["build", "--manifest"])
        .arg(&failing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("component `a`: build command"));
}

#[tokio::test(flavor = "multi_thread")]
async fn up_build_builds_before_serving() {
    let wasm = support::build_components().join("testbed.wasm");
    let (dir, manifest) = write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"t\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"out/a.wasm\"\n[component.a.build]\ncommand = \"mkdir -p out && cp {} out/a.wasm\"\n",
        wasm.display()
    ));
    let s = up(UpOptions::new(&manifest).arg("--build"));
    let r = support::client()
        .get(format!("{}/hello", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(dir);
}

/// Streams a body into the blob store through a component and reads it
/// back; a bucket outside the component's grants is refused.
async fn blobs_through_a_component(s: &Spindle) {
    let c = support::client();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let r = c
        .post(format!("{}/blob/videos", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.text().await.unwrap();
    assert_eq!(id.len(), 24, "{id}");
    let r = c
        .get(format!("{}/blob/videos/{id}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == data, "the stored bytes differ");

    for attempt in [
        c.post(format!("{}/blob/mp3s", s.url)).body("x"),
        c.get(format!("{}/blob/mp3s/{id}", s.url)),
    ] {
        let r = attempt.send().await.unwrap();
        assert_eq!(r.status(), 403);
        let msg = r.text().await.unwrap();
        assert!(
            msg.contains("PermissionDenied") && msg.contains("blob_buckets"),
            "{msg}"
        );
    }
    let r = c
        .get(format!("{}/blob/videos/not-an-id", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let missing = "0123456789abcdef01234567";
    let r = c
        .get(format!("{}/blob/videos/{missing}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_on_the_embedded_backend() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest);
    blobs_through_a_component(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_on_gridfs() {
    let mongo = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = std::env::var("SPINDLE_TEST_MONGODB_URL").unwrap_or_else(|_| mongo.url());
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, format!("{LIMITS}[gridfs]\nurl = \"{url}\"\n")).unwrap();
    let s = up(UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string())
        .arg("--variable")
        .arg("secret_token=x"));
    assert!(s.log_contains("GridFS at"), "{}", s.stderr());
    blobs_through_a_component(&s).await;
    let r = support::client()
        .get(format!("{}/readyz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A request body that arrives in `chunks` pieces, `gap` apart, after
/// `stall` of silence following the first piece.
fn trickle(chunks: usize, gap: Duration, stall: Duration) -> reqwest::Body {
    let stream = futures_util_stream(chunks, gap, stall);
    reqwest::Body::wrap_stream(stream)
}

fn futures_util_stream(
    chunks: usize,
    gap: Duration,
    stall: Duration,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::iter(0..chunks).then(move |i| async move {
        let wait = if i == 1 { stall } else { gap };
        if i > 0 {
            tokio::time::sleep(wait).await;
        }
        // The first chunk is larger than what the host reads ahead, so the
        // component is already reading when the rest trickles or stalls.
        let size = if i == 0 { 96 * 1024 } else { 4096 };
        Ok(vec![b'x'; size])
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn request_timeout_runs_from_the_last_upload_progress() {
    let (dir, manifest) = write_manifest(&testbed_manifest(""));
    let s = start(&dir, &manifest); // request_timeout_secs = 2
    let c = support::client();

    // Data keeps coming for about 4 s, twice the timeout: the upload is stored.
    let resp = c
        .post(format!("{}/blob/videos", s.url))
        .body(trickle(
            17,
            Duration::from_millis(250),
            Duration::from_millis(250),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());

    // A body that stalls for longer than the timeout still times out.
    let resp = c
        .post(format!("{}/blob/videos", s.url))
        .body(trickle(
            3,
            Duration::from_millis(100),
            Duration::from_secs(5),
        ))
        .send()
        .await
        .unwrap();
    expect_json_error(resp, 504).await;
}

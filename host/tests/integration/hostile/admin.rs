//! The admin listener against hostile clients: never open (a generated
//! token in the state directory, kept across restarts, read by the CLI),
//! browsers refused by `Host` and `Origin`, no route failing on odd paths,
//! methods or bodies; and start-up refusing default secrets beyond
//! loopback.

use crate::support::{self, Spindle, UpOptions, expect_json_error, up, up_fails, write_manifest};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The testbed on every path and on the `jobs` queue (so the queue has
/// dead letters to list), with a secret variable that has a default.
fn testbed_manifest() -> (tempfile::TempDir, std::path::PathBuf) {
    let wasm = support::build_components();
    write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "hostile-admin"
[variables]
api_key = {{ default = "dev-only-key", secret = true }}
[[trigger.http]]
route = "/..."
component = "testbed"
[[trigger.amqp]]
queue = "jobs"
component = "testbed"
[component.testbed]
source = "{}"
publish_queues = ["jobs"]
[component.testbed.variables]
key = "{{{{ api_key }}}}"
"#,
        wasm.join("testbed.wasm").display()
    ))
}

/// Runs the `spindle` CLI in `cwd` without SPINDLE_ADMIN_TOKEN; returns
/// (success, stdout, stderr).
fn cli(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SPINDLE_ADMIN_TOKEN")
        .output()
        .expect("running spindle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_is_generated_private_kept_and_read_by_the_cli() {
    let (dir, manifest) = testbed_manifest();
    let state = dir.path().join(".spindle");
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(state.clone());
    let s = up(opts);
    let file = state.join("admin-token");
    let token = s.admin_token();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    let c = support::client();
    let list = |token: Option<&str>| {
        let mut req = c.get(format!("{}/components", s.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    expect_json_error(list(None).await.unwrap(), 401).await;
    expect_json_error(list(Some("0000")).await.unwrap(), 401).await;
    assert_eq!(list(Some(&token)).await.unwrap().status(), 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = c.get(format!("{}{open}", s.admin)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }

    // From the directory `spindle up` ran in, the CLI needs no flag.
    let (ok, out, err) = cli(dir.path(), &["status", "--admin", &s.admin]);
    assert!(ok && out.contains("testbed"), "{out}{err}");
    // Elsewhere it says which file it looked for.
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, _, err) = cli(elsewhere.path(), &["status", "--admin", &s.admin]);
    assert!(
        !ok && err.contains("admin-token") && err.contains("SPINDLE_ADMIN_TOKEN"),
        "{err}"
    );
    let state_flag = state.display().to_string();
    let (ok, out, err) = cli(
        elsewhere.path(),
        &["status", "--admin", &s.admin, "--state-dir", &state_flag],
    );
    assert!(ok && out.contains("testbed"), "{out}{err}");

    // A restart keeps the token.
    drop(s);
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(state.clone());
    let s = up(opts);
    assert_eq!(s.admin_token(), token);
    let r = c
        .get(format!("{}/components", s.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Sends `request` (a whole HTTP/1.1 request without its final blank
/// line, `Connection: close` is added) over a raw socket; returns the
/// status and the body.
async fn raw(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let text = format!("{request}Connection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("connection failed ({e}) after {answer:?} for {request:?}"),
        Err(_) => panic!("no answer within 30 s for {request:?}"),
    }
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?} for {request:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_are_refused_by_origin_and_host() {
    let (_dir, manifest) = testbed_manifest();
    let s = up(UpOptions::new(&manifest));
    let addr = s.admin.trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let token = s.admin_token();

    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) =
            raw(&addr, &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n")).await;
        assert_eq!(status, 200, "Host {host}: {body}");
        let (status, body) = raw(
            &addr,
            &format!(
                "GET /components HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            ),
        )
        .await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // DNS rebinding: a page on evil.example whose name now points here.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1.nip.io:{port}"),
        format!("10.1.2.3:{port}"),
        "not a host".to_string(),
    ] {
        for path in ["/healthz", "/components", "/queues/jobs/dead-letters"] {
            let (status, body) = raw(
                &addr,
                &format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                ),
            )
            .await;
            assert_eq!(status, 421, "Host {host} {path}: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }
    }
    // Any Origin, even this listener's own and with the token.
    for origin in [
        format!("http://{addr}"),
        "https://evil.example".into(),
        "null".into(),
    ] {
        for path in ["/healthz", "/components", "/components/testbed"] {
            let (status, body) = raw(
                &addr,
                &format!(
                    "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n"
                ),
            )
            .await;
            assert_eq!(status, 403, "Origin {origin} {path}: {body}");
            assert!(body.contains("Origin"), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_admin_route_fails_on_odd_paths_methods_or_bodies() {
    let (_dir, manifest) = testbed_manifest();
    let s = up(UpOptions::new(&manifest));
    let token = s.admin_token();
    let long = "a".repeat(20_000);
    let paths = vec![
        "/".to_string(),
        "/healthz".into(),
        "/healthz?x=1&y".into(),
        "/readyz".into(),
        "/metrics".into(),
        "/metrics/".into(),
        "/components".into(),
        "/components/".into(),
        "//components".into(),
        "/componentsx".into(),
        "/components/testbed".into(),
        "/components/x".into(),
        "/components/x/y/z".into(),
        "/components//rollback".into(),
        "/components/testbed/rollback".into(),
        "/components/nope/rollback".into(),
        "/components/testbed/rollback/again".into(),
        "/components/%2e%2e/rollback".into(),
        "/components/spindle".into(),
        "/queues".into(),
        "/queues/".into(),
        "/queues/dead-letters".into(),
        "/queues//dead-letters".into(),
        "/queues/jobs/dead-letters".into(),
        "/queues/jobs/dead-letters/".into(),
        "/queues/jobs.dead/dead-letters".into(),
        "/queues/nope/dead-letters".into(),
        "/queues/a/b/dead-letters".into(),
        "/queues/%2F/dead-letters".into(),
        "/queues/%00/dead-letters".into(),
        "/queues/'%20OR%201=1--/dead-letters".into(),
        "/queues/spindle.deploys/dead-letters".into(),
        "/%ff%fe".into(),
        format!("/{long}"),
        format!("/queues/{long}/dead-letters"),
        format!("/components/{long}"),
        format!("/components/{long}/rollback"),
    ];
    let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let bodies: [&[u8]; 2] = [b"", b"\0\x01not a component at all"];
    let auths = [
        None,
        Some(token.clone()),
        Some(format!("{token}x")),
        Some("x".repeat(10_000)),
    ];
    let c = support::client();
    let mut seen = std::collections::BTreeMap::new();
    for path in &paths {
        for method in methods {
            for body in bodies {
                for auth in &auths {
                    let mut req = c
                        .request(method.parse().unwrap(), format!("{}{path}", s.admin))
                        .body(body.to_vec());
                    if let Some(auth) = auth {
                        req = req.bearer_auth(auth);
                    }
                    let shown = &path[..path.len().min(60)];
                    let resp = req
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("{method} {shown}: {e}"));
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    assert!(
                        status < 500 || (status == 503 && path == "/readyz"),
                        "{method} {shown} -> {status} {text}"
                    );
                    if status >= 400 && method != "HEAD" && !text.is_empty() {
                        let v: serde_json::Value = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("{method} {shown}: not JSON ({e}): {text}"));
                        assert!(v["error"].is_string(), "{method} {shown}: {text}");
                    }
                    *seen.entry(status).or_insert(0) += 1;
                }
            }
        }
    }
    println!("admin walker: {seen:?}");
    // The host is still whole afterwards.
    let r = c.get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/hello", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A free TCP port on every interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_loopback_a_secret_on_its_default_refuses_to_start() {
    let (_dir, manifest) = testbed_manifest();
    let listen = format!("0.0.0.0:{}", free_port());
    let err = up_fails(UpOptions::new(&manifest).arg("--listen").arg(&listen));
    assert!(
        err.contains("`api_key`") && err.contains("SPIN_VARIABLE_API_KEY") && err.contains(&listen),
        "{err}"
    );
    // The application's own spin.toml names its development JWT secret.
    let app_dir = tempfile::tempdir().unwrap();
    let app = support::app_manifest(app_dir.path());
    let err = up_fails(UpOptions::new(&app).arg("--listen").arg(&listen));
    assert!(
        err.contains("`jwt_secret`") && err.contains("--variable jwt_secret="),
        "{err}"
    );

    // Loopback keeps the default for local use; so does a value that is set.
    let c = support::client();
    let s = up(UpOptions::new(&manifest));
    let r = c.get(format!("{}/var/key", s.url)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "dev-only-key");
    drop(s);
    let s = up(UpOptions::new(&manifest)
        .arg("--listen")
        .arg("0.0.0.0:0")
        .env("SPIN_VARIABLE_API_KEY", "a-real-key"));
    let url = s.url.replace("0.0.0.0", "127.0.0.1");
    let r = c.get(format!("{url}/var/key")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "a-real-key");
    drop(s);
    let s = up(UpOptions::new(&manifest)
        .arg("--listen")
        .arg("0.0.0.0:0")
        .arg("--variable")
        .arg("api_key=another-key"));
    let url = s.url.replace("0.0.0.0", "127.0.0.1");
    let r = c.get(format!("{url}/var/key")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "another-key");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_requests_with_odd_request_lines_get_an_answer() {
    let (_dir, manifest) = testbed_manifest();
    let s: Spindle = up(UpOptions::new(&manifest));
    let addr = s.admin.trim_start_matches("http://").to_string();
    for request in [
        "GET /queues/dead-letters HTTP/1.1\r\nHost: localhost\r\n",
        "GET /queues//dead-letters HTTP/1.1\r\nHost: localhost\r\n",
        "BREW /components HTTP/1.1\r\nHost: localhost\r\n",
        "GET * HTTP/1.1\r\nHost: localhost\r\n",
        "GET http://localhost/components HTTP/1.1\r\nHost: localhost\r\n",
        "GET /healthz HTTP/1.1\r\n",
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n",
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n",
        "PUT /components/testbed HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n",
        "PUT /components/testbed HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (status, body) = raw(&addr, request).await;
        assert!(status < 500, "{request:?} -> {status} {body}");
    }
}

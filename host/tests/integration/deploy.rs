//! Hot redeploy against real `spindle up` processes: the deploy CLI and
//! admin API, refusals, no failed request while a component flips between
//! two versions, in-flight work finishing on its version, status, rollback,
//! restarts, the admin token, and (on MariaDB, RabbitMQ and the MongoDB
//! test server) two replicas following one deploy.
//!
//! The second version of the `deploy-probe` component is its build with
//! the version string patched (same length): different bytes and answers.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, expect_json_error, up};

const V1: &str = support::PROBE_V1;
const V2: &str = support::PROBE_V2;

/// Writes both probe versions into `dir`.
fn probe_versions(dir: &Path) -> (PathBuf, PathBuf) {
    let (v1, v2) = support::probe_versions();
    let (p1, p2) = (dir.join("probe-v1.wasm"), dir.join("probe-v2.wasm"));
    std::fs::write(&p1, &v1).unwrap();
    std::fs::write(&p2, &v2).unwrap();
    (p1, p2)
}

fn sha_prefix(path: &Path) -> String {
    support::sha_prefix(&std::fs::read(path).unwrap())
}

fn probe_manifest(dir: &Path, source: &Path) -> PathBuf {
    let path = dir.join("spin.toml");
    std::fs::write(
        &path,
        format!(
            r#"spin_manifest_version = 2
[application]
name = "deploy-test"
[[trigger.http]]
route = "/..."
component = "probe"
[[trigger.amqp]]
queue = "jobs"
component = "probe"
concurrency = 4
retry_delay_ms = 200
[component.probe]
source = "{}"
send_mail = true
publish_queues = ["jobs"]
"#,
            source.display()
        ),
    )
    .unwrap();
    path
}

/// Runs the `spindle` CLI; returns (success, stdout, stderr).
async fn cli(args: Vec<String>, env: Vec<(String, String)>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spindle"));
        cmd.args(&args).env_remove("SPINDLE_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running spindle");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        println!("$ spindle {}\n{o}{e}", args.join(" "));
        (out.status.success(), o, e)
    })
    .await
    .unwrap()
}

async fn deploy(s: &Spindle, wasm: &Path) -> (bool, String, String) {
    deploy_with_env(s, wasm, &[]).await
}

/// `spindle deploy probe WASM` with extra environment variables.
async fn deploy_with_env(s: &Spindle, wasm: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    cli(
        vec![
            "deploy".into(),
            "probe".into(),
            wasm.display().to_string(),
            "--admin".into(),
            s.admin.clone(),
            "--state-dir".into(),
            s.state_dir.display().to_string(),
        ],
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .await
}

async fn rollback(s: &Spindle) -> (bool, String, String) {
    cli(
        vec![
            "rollback".into(),
            "probe".into(),
            "--admin".into(),
            s.admin.clone(),
            "--state-dir".into(),
            s.state_dir.display().to_string(),
        ],
        vec![],
    )
    .await
}

/// The value of `spindle_deploys_total` for the probe and `outcome`.
async fn deploys_counted(c: &reqwest::Client, s: &Spindle, outcome: &str) -> u64 {
    let metrics = c
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("spindle_deploys_total{{component=\"probe\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no series {series}in\n{metrics}"))
        .parse()
        .unwrap()
}

async fn version(c: &reqwest::Client, s: &Spindle) -> String {
    let resp = c.get(format!("{}/version", s.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Mails in the outbox (embedded mail) whose text contains `needle`.
fn mails_with(state_dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(state_dir.join("outbox"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|m| m.contains(needle))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for_mail(state_dir: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while mails_with(state_dir, needle) == 0 {
        assert!(Instant::now() < deadline, "no mail with {needle:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_redeploy_swaps_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = probe_versions(dir.path());
    let manifest = probe_manifest(dir.path(), &v1);
    let state = dir.path().join("state");
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(state.clone());
    let s = up(opts);
    let c = support::client();
    assert_eq!(version(&c, &s).await, V1);
    // The deploy series exist before any deploy.
    for outcome in ["deployed", "refused", "rolled_back", "failed"] {
        assert_eq!(deploys_counted(&c, &s, outcome).await, 0, "{outcome}");
    }

    // Refusals: the old version keeps serving, and the message says why.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let (ok, _, err) = deploy(&s, &junk).await;
    assert!(!ok && err.contains("not WebAssembly"), "{err}");
    let wasm = support::wasm_dir();
    let (ok, _, err) = deploy(&s, &wasm.join("testbed.wasm")).await;
    assert!(
        !ok && err.contains("spindle:blobs/store") && err.contains("blob_buckets"),
        "{err}"
    );
    let (ok, _, err) = deploy(&s, &wasm.join("hello_p2.wasm")).await;
    assert!(!ok && err.contains("spindle:queue/handler"), "{err}");
    let resp = c
        .put(format!("{}/components/nope", s.admin))
        .bearer_auth(s.admin_token())
        .body(std::fs::read(&v2).unwrap())
        .send()
        .await
        .unwrap();
    let msg = expect_json_error(resp, 404).await;
    assert!(msg.contains("probe"), "{msg}");
    assert_eq!(version(&c, &s).await, V1);
    // Three refusals of the probe; the unknown component is not counted.
    assert_eq!(deploys_counted(&c, &s, "refused").await, 3);
    assert_eq!(deploys_counted(&c, &s, "deployed").await, 0);
    assert!(
        !c.get(format!("{}/metrics", s.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("component=\"nope\"")
    );

    // Several clients for the whole time the component flips 12 times.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (c, url, stop) = (c.clone(), s.url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = match c.get(format!("{url}/version")).send().await {
                        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    };
                    seen.push(answer);
                }
                seen
            })
        })
        .collect();
    let mut times = Vec::new();
    for i in 0..12 {
        let (wasm, expected) = if i % 2 == 0 { (&v2, V2) } else { (&v1, V1) };
        let started = Instant::now();
        let (ok, out, err) = deploy(&s, wasm).await;
        assert!(ok, "{out}{err}");
        assert!(out.contains(&sha_prefix(wasm)), "{out}");
        // Once the deploy returned, new requests see the new version.
        assert_eq!(version(&c, &s).await, expected);
        times.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        for (status, body) in client.await.unwrap() {
            assert!(
                status == 200 && (body == V1 || body == V2),
                "a request failed during the swaps: {status} {body}"
            );
            total += 1;
        }
    }
    assert!(total > 100, "only {total} requests ran");
    println!(
        "deploy → first request on the new version: {times:?} ({total} requests, none failed)"
    );
    assert_eq!(deploys_counted(&c, &s, "deployed").await, 12);
    assert_eq!(deploys_counted(&c, &s, "refused").await, 3);

    // A slow download that started on v1 finishes on v1 after a swap.
    assert_eq!(version(&c, &s).await, V1);
    let mut slow = c
        .get(format!("{}/slow?ms=2000", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.chunk().await.unwrap().unwrap(), V1.as_bytes());
    assert!(deploy(&s, &v2).await.0);
    assert_eq!(version(&c, &s).await, V2);
    let mut rest = Vec::new();
    while let Some(chunk) = slow.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"+done");

    // So does a queue invocation that started on v2.
    let enqueue = c
        .post(format!("{}/enqueue?ms=2000", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(enqueue.status(), 202);
    wait_for_mail(&state, &format!("start {V2}")).await;
    assert!(deploy(&s, &v1).await.0);
    wait_for_mail(&state, &format!("done {V2}")).await;
    let enqueue = c
        .post(format!("{}/enqueue?ms=0", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(enqueue.status(), 202);
    wait_for_mail(&state, &format!("done {V1}")).await;
    assert_eq!(mails_with(&state, &format!("done {V2}")), 1);

    // Status: version, when, how, from where, routes and queues.
    let (ok, out, err) = cli(
        vec![
            "status".into(),
            "--json".into(),
            "--admin".into(),
            s.admin.clone(),
            "--state-dir".into(),
            s.state_dir.display().to_string(),
        ],
        vec![],
    )
    .await;
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let probe = &list[0];
    assert_eq!(probe["component"], "probe");
    assert_eq!(probe["current"]["version"], sha_prefix(&v1).as_str());
    assert_eq!(probe["current"]["action"], "deploy");
    assert_eq!(probe["current"]["source"], v1.display().to_string());
    assert!(
        probe["current"]["deployed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(probe["routes"], serde_json::json!(["/..."]));
    assert_eq!(probe["queues"], serde_json::json!(["jobs"]));
    let (ok, out, _) = cli(
        vec![
            "status".into(),
            "--admin".into(),
            s.admin.clone(),
            "--state-dir".into(),
            s.state_dir.display().to_string(),
        ],
        vec![],
    )
    .await;
    assert!(
        ok && out.contains("probe") && out.contains(&sha_prefix(&v1)),
        "{out}"
    );

    // Rollback returns to the version before.
    let (ok, out, err) = rollback(&s).await;
    assert!(ok, "{out}{err}");
    assert_eq!(version(&c, &s).await, V2);
    assert_eq!(deploys_counted(&c, &s, "rolled_back").await, 1);

    // A restarted host comes back on the deployed version, not the manifest's.
    drop(s);
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = Some(state.clone());
    let s = up(opts);
    assert_eq!(version(&c, &s).await, V2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_guards_the_deploy_api() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = probe_versions(dir.path());
    let manifest = probe_manifest(dir.path(), &v1);
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("up")
        .arg("--manifest")
        .arg(&manifest)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("SPINDLE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("beyond loopback")
            && err.contains("SPINDLE_ADMIN_TOKEN"),
        "{err}"
    );

    let s = up(UpOptions::new(&manifest).env("SPINDLE_ADMIN_TOKEN", "s3cret-token"));
    let c = support::client();
    let put = |token: Option<&str>| {
        let mut req = c
            .put(format!("{}/components/probe", s.admin))
            .body(std::fs::read(&v2).unwrap());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    expect_json_error(put(None).await.unwrap(), 401).await;
    expect_json_error(put(Some("s3cret-tokeN")).await.unwrap(), 401).await;
    expect_json_error(put(Some("s3cret")).await.unwrap(), 401).await;
    let rollback = c
        .post(format!("{}/components/probe/rollback", s.admin))
        .send()
        .await
        .unwrap();
    expect_json_error(rollback, 401).await;
    let dead = c
        .get(format!("{}/queues/jobs/dead-letters", s.admin))
        .send()
        .await
        .unwrap();
    expect_json_error(dead, 401).await;
    assert_eq!(version(&c, &s).await, V1);
    // Probes stay open.
    let health = c.get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let (ok, _, err) = deploy(&s, &v2).await;
    assert!(!ok && err.contains("SPINDLE_ADMIN_TOKEN"), "{err}");
    let (ok, out, err) = deploy_with_env(&s, &v2, &[("SPINDLE_ADMIN_TOKEN", "s3cret-token")]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(version(&c, &s).await, V2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_can_be_served_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = probe_versions(dir.path());
    let manifest = probe_manifest(dir.path(), &v1);
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (
        dir.path().join("admin.pem"),
        dir.path().join("admin-key.pem"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let s = up(UpOptions::new(&manifest)
        .arg("--admin-tls-cert")
        .arg(cert.display().to_string())
        .arg("--admin-tls-key")
        .arg(key.display().to_string()));
    assert!(s.admin.starts_with("https://"), "{}", s.admin);

    // Probes over TLS, for a client that trusts the certificate.
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let health = trusting
        .get(format!("{}/healthz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Plain HTTP gets no admin answer.
    let plain = support::client()
        .get(format!(
            "{}/healthz",
            s.admin.replace("https://", "http://")
        ))
        .send()
        .await;
    assert!(
        !plain.as_ref().is_ok_and(|r| r.status().is_success()),
        "{plain:?}"
    );

    // The CLI refuses an untrusted certificate and says what to pass.
    let (ok, _, err) = cli(
        vec!["status".into(), "--admin".into(), s.admin.clone()],
        vec![],
    )
    .await;
    assert!(!ok && err.contains("--admin-ca-cert"), "{err}");
    let ca = cert.display().to_string();
    let (ok, out, err) = deploy_with_env(&s, &v2, &[("SPINDLE_ADMIN_CA_CERT", &ca)]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(version(&support::client(), &s).await, V2);

    // A certificate without its key is a start-up error, not a plain
    // listener.
    let err = support::up_fails(
        UpOptions::new(&manifest)
            .arg("--admin-tls-cert")
            .arg(cert.display().to_string()),
    );
    assert!(err.contains("--admin-tls-key"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_says_when_no_host_is_listening() {
    let (ok, _, err) = cli(
        vec![
            "status".into(),
            "--admin".into(),
            "http://127.0.0.1:9".into(),
        ],
        vec![],
    )
    .await;
    assert!(
        !ok && err.contains("is `spindle up` running") && err.contains("--admin"),
        "{err}"
    );
}

/// Waits until `s` serves `expected`; returns how long that took.
async fn until_version(c: &reqwest::Client, s: &Spindle, expected: &str) -> Duration {
    let started = Instant::now();
    loop {
        let got = version(c, s).await;
        if got == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} still serves {got}, not {expected}",
            s.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_reaches_every_replica_and_survives_restarts() {
    let Some(servers) = support::RealServers::start("deploy").await else {
        eprintln!(
            "SKIPPED: set SPINDLE_TEST_MYSQL_URL and SPINDLE_TEST_AMQP_URL to run two replicas on MariaDB, RabbitMQ and the MongoDB test server"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = probe_versions(dir.path());
    let manifest = probe_manifest(dir.path(), &v1);
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, servers.runtime_config()).unwrap();
    let replica = || {
        up(UpOptions::new(&manifest)
            .arg("--runtime-config-file")
            .arg(rc.display().to_string()))
    };
    let (a, b) = (replica(), replica());
    let c = support::client();
    assert_eq!(version(&c, &a).await, V1);
    assert_eq!(version(&c, &b).await, V1);

    let started = Instant::now();
    let (ok, out, err) = deploy(&a, &v2).await;
    assert!(ok, "{out}{err}");
    assert_eq!(version(&c, &a).await, V2);
    until_version(&c, &b, V2).await;
    println!("deploy through A → B serves it: {:?}", started.elapsed());

    // A restarted replica (fresh local state) comes back on the deployed
    // version, from the shared blob store, not on its manifest's.
    drop(b);
    let b = replica();
    assert_eq!(version(&c, &b).await, V2);

    // And it follows deploys again: a rollback through B reaches A.
    let (ok, out, err) = rollback(&b).await;
    assert!(ok, "{out}{err}");
    assert_eq!(version(&c, &b).await, V1);
    until_version(&c, &a, V1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_waits_for_a_late_mongodb_then_serves_its_deployed_version() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = probe_versions(dir.path());
    let manifest = probe_manifest(dir.path(), &v1);
    let mongo = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let runtime_config = |name: &str, gridfs: &str| {
        let path = dir.path().join(name);
        // Requests wait 1 s (not 5) for start-up before their 503.
        std::fs::write(
            &path,
            format!("[gridfs]\nurl = \"{gridfs}\"\n[limits]\nqueue_timeout_secs = 1\n"),
        )
        .unwrap();
        path.display().to_string()
    };
    let c = support::client();

    // v2 is deployed through a first host and recorded in MongoDB.
    {
        let a = up(UpOptions::new(&manifest)
            .arg("--runtime-config-file")
            .arg(runtime_config("a.toml", &mongo.url())));
        let (ok, out, err) = deploy(&a, &v2).await;
        assert!(ok, "{out}{err}");
    }

    // A second host starts while nothing answers at its MongoDB address.
    let port = support::free_port();
    let b = up(UpOptions::new(&manifest)
        .arg("--runtime-config-file")
        .arg(runtime_config(
            "b.toml",
            &format!("mongodb://127.0.0.1:{port}"),
        )));
    let r = c.get(format!("{}/healthz", b.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/readyz", b.admin)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    let starting = body["starting"].as_str().unwrap_or_default();
    assert!(
        starting.contains("deploy records") && starting.contains(&format!("127.0.0.1:{port}")),
        "{body}"
    );
    assert!(body["degraded"]["spindle:blobs"].is_string(), "{body}");
    // App routes answer at once with 503 and Retry-After, not a hang.
    let asked = Instant::now();
    let r = c.get(format!("{}/version", b.url)).send().await.unwrap();
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    let msg = expect_json_error(r, 503).await;
    assert!(msg.contains("starting"), "{msg}");
    assert!(asked.elapsed() < Duration::from_secs(10));

    // MongoDB comes up at that address a few seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _mongodb = support::gate::Gate::open_at(port, mongo.addr().to_string()).await;
    let waited = support::until_ready(&b.admin).await;
    println!("MongoDB reachable → /readyz 200: {waited:?}");
    assert_eq!(
        version(&c, &b).await,
        V2,
        "the deployed version, not the manifest's"
    );
    assert!(b.log_contains("deploy records read in"), "{}", b.stderr());
}

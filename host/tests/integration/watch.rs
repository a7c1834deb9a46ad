//! `spindle up --watch` against a real process: a change to one
//! component's `build.watch` files rebuilds that component only and swaps
//! it in place, with no failed request and no restart; a rebuild the
//! deploy refuses leaves the running version serving, and the log says why.
//!
//! The components' build commands copy a file into place (no compiler), so
//! "editing the source" is overwriting `src/probe.wasm` with the second
//! version of the `deploy-probe` component (its build with the version
//! string patched, as in `deploy.rs`).

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, up};

const V1: &str = support::PROBE_V1;
const V2: &str = support::PROBE_V2;

/// Replaces a file the way an editor saves: write aside, then rename.
fn save(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("saving");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Two watched components: `probe` (src/**) and `other` (other/**), whose
/// build also appends a line to `other-builds.log`.
fn watch_manifest(dir: &Path) -> PathBuf {
    let path = dir.join("spin.toml");
    std::fs::write(
        &path,
        r#"spin_manifest_version = 2
[application]
name = "watch-test"
[[trigger.http]]
route = "/..."
component = "probe"
[[trigger.http]]
route = "/other/..."
component = "other"
[component.probe]
source = "out/probe.wasm"
send_mail = true
publish_queues = ["jobs"]
[component.probe.build]
command = "mkdir -p out && cp src/probe.wasm out/probe.wasm"
watch = ["src/**"]
[component.other]
source = "out/other.wasm"
send_mail = true
publish_queues = ["jobs"]
[component.other.build]
command = "mkdir -p out && cp other/other.wasm out/other.wasm && echo built >> other-builds.log"
watch = ["other/**", "!other/*.bak"]
"#,
    )
    .unwrap();
    path
}

async fn version(c: &reqwest::Client, s: &Spindle) -> String {
    let resp = c.get(format!("{}/version", s.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Waits up to `limit` for `check` to hold.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn current(c: &reqwest::Client, s: &Spindle, component: &str) -> serde_json::Value {
    listing(c, s, component).await["current"].clone()
}

/// `component`'s entry in the admin API's component list.
async fn listing(c: &reqwest::Client, s: &Spindle, component: &str) -> serde_json::Value {
    let status: serde_json::Value = c
        .get(format!("{}/components", s.admin))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status
        .as_array()
        .or_else(|| status["components"].as_array())
        .expect("a list of components")
        .iter()
        .find(|e| e["component"] == component)
        .unwrap_or_else(|| panic!("{component} in {status}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_rebuilds_only_the_changed_component_and_swaps_it_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = support::probe_versions();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::write(dir.path().join("src/probe.wasm"), &v1).unwrap();
    std::fs::write(dir.path().join("other/other.wasm"), &v1).unwrap();
    let manifest = watch_manifest(dir.path());
    let marker = dir.path().join("other-builds.log");

    let mut s = up(UpOptions::new(&manifest).arg("--build").arg("--watch"));
    let pid = s.pid();
    let c = support::client();
    assert_eq!(version(&c, &s).await, V1);
    assert!(s.log_contains("--watch: rebuilding probe when src/** change"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "built\n");

    // Several clients for the whole time the component is rebuilt.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (c, url, stop) = (c.clone(), s.url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = match c.get(format!("{url}/version")).send().await {
                        Ok(r) if r.status() == 200 => r.text().await.map_err(|e| e.to_string()),
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    };
                    answers.push(answer);
                }
                answers
            })
        })
        .collect();
    // Let every client get answers from the first version.
    tokio::time::sleep(Duration::from_millis(200)).await;

    save(&dir.path().join("src/probe.wasm"), &v2);
    wait_until(Duration::from_secs(60), "version 2 to serve", || {
        let (c, s) = (&c, &s);
        async move { version(c, s).await == V2 }
    })
    .await;
    // Let every client get answers from the second version.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = (0, 0);
    for client in clients {
        for answer in client.await.unwrap() {
            match answer.as_deref() {
                Ok(V1) => seen.0 += 1,
                Ok(V2) => seen.1 += 1,
                other => panic!("a request failed or answered wrongly: {other:?}"),
            }
        }
    }
    assert!(
        seen.0 > 0 && seen.1 > 0,
        "answers from both versions: {seen:?}"
    );

    // The same process, still running; the swap is recorded as `watch`.
    assert_eq!(s.pid(), pid);
    assert!(s.wait_exit(Duration::ZERO).is_none(), "spindle exited");
    let probe = current(&c, &s, "probe").await;
    assert_eq!(probe["action"], "watch", "{probe}");
    assert_eq!(probe["version"], support::sha_prefix(&v2), "{probe}");
    assert!(
        probe["source"]
            .as_str()
            .is_some_and(|src| src.ends_with("out/probe.wasm")),
        "{probe}"
    );
    let swapped = format!("swapped in version {}", support::sha_prefix(&v2));
    assert!(s.log_contains(&swapped));
    let log = s.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(&swapped))
        .unwrap_or_default();
    assert!(
        line.contains("src/probe.wasm") && line.contains("changed; rebuilt probe in"),
        "{line}"
    );

    // `other` was not rebuilt: only its build at start-up.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "built\n");
    assert!(!s.stderr().contains("rebuilt other"));
    assert_eq!(current(&c, &s, "other").await["action"], "manifest");

    // A rebuild whose output is not a component: the build (a copy)
    // succeeds, the deploy is refused, version 2 keeps serving.
    save(
        &dir.path().join("src/probe.wasm"),
        b"not a component at all",
    );
    assert!(
        s.log_contains("not deployed: refused"),
        "no refusal in the log:\n{}",
        s.stderr()
    );
    let log = s.stderr();
    let refusal = log
        .lines()
        .find(|l| l.contains("not deployed: refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains("probe") && refusal.contains("not WebAssembly"),
        "{refusal}"
    );
    assert_eq!(version(&c, &s).await, V2);
    assert_eq!(
        current(&c, &s, "probe").await["version"],
        support::sha_prefix(&v2)
    );

    // A failing build: the compiler's output is in the log, and the
    // running version stays.
    std::fs::remove_file(dir.path().join("src/probe.wasm")).unwrap();
    assert!(
        s.log_contains("building probe failed"),
        "no build failure in the log:\n{}",
        s.stderr()
    );
    let log = s.stderr();
    assert!(log.contains("cp:") && log.contains("probe.wasm"), "{log}");
    assert_eq!(version(&c, &s).await, V2);
    assert_eq!(s.pid(), pid);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "built\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_manifest_is_reported_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, _) = support::probe_versions();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::write(dir.path().join("src/probe.wasm"), &v1).unwrap();
    std::fs::write(dir.path().join("other/other.wasm"), &v1).unwrap();
    let manifest = watch_manifest(dir.path());
    let mut s = up(UpOptions::new(&manifest).arg("--build").arg("--watch"));
    let c = support::client();
    assert_eq!(version(&c, &s).await, V1);

    // A route and a grant change: named in the log, not applied.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let edited = text
        .replace("route = \"/other/...\"", "route = \"/elsewhere/...\"")
        .replace(
            "[component.other]\nsource = \"out/other.wasm\"\nsend_mail = true",
            "[component.other]\nsource = \"out/other.wasm\"\nsend_mail = false",
        );
    assert_ne!(edited, text);
    save(&manifest, edited.as_bytes());
    let reported = "changed (component.other, trigger.http); the running app keeps the manifest";
    assert!(s.log_contains(reported), "{}", s.stderr());
    assert!(s.stderr().contains("restart `spindle up` to apply it"));
    let other = listing(&c, &s, "other").await;
    assert_eq!(
        other["routes"],
        serde_json::json!(["/other/..."]),
        "{other}"
    );

    // An edit that breaks the file: the reason, and the app keeps serving.
    save(&manifest, b"spin_manifest_version = 2\n[application\n");
    assert!(
        s.log_contains("was edited and no longer loads"),
        "{}",
        s.stderr()
    );
    assert_eq!(version(&c, &s).await, V1);

    // Back to what runs: said so, not reported as a change.
    save(&manifest, text.as_bytes());
    assert!(
        s.log_contains("matches the running app again"),
        "{}",
        s.stderr()
    );
    assert_eq!(s.stderr().matches("changed (component.other").count(), 1);
    assert!(s.wait_exit(Duration::ZERO).is_none(), "spindle exited");
}

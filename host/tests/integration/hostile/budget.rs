//! Per-component concurrency caps and the host-wide memory budget: a
//! request beyond a cap waits a bounded time and then gets 503 with
//! `Retry-After`; instances together never hold more memory than the
//! budget; a login flood leaves the host under 1 GiB and answering, token
//! checks included (they wait for auth's slots in a lane of their own).

use crate::support::{self, expect_json_error, up_with_config, write_manifest};
use base64::Engine;
use std::time::Duration;

fn testbed_manifest() -> String {
    let wasm = support::build_components();
    format!(
        r#"spin_manifest_version = 2
[application]
name = "budget"
[[trigger.http]]
route = "/..."
component = "testbed"
[[trigger.http]]
route = "/p2/..."
component = "hello-p2"
[component.testbed]
source = "{tb}"
[component.hello-p2]
source = "{p2}"
"#,
        tb = wasm.join("testbed.wasm").display(),
        p2 = wasm.join("hello_p2.wasm").display(),
    )
}

/// The 503 a cap or the budget gives: JSON, `Retry-After`, and a reason.
async fn expect_overloaded(resp: reqwest::Response) -> String {
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let msg = expect_json_error(resp, 503).await;
    let secs: u64 = retry
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After on the 503 ({retry:?}): {msg}"));
    assert!(secs >= 1, "{secs}");
    msg
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_at_its_cap_answers_503_and_others_are_unaffected() {
    let (_dir, manifest) = write_manifest(&testbed_manifest());
    let (s, _rc) = up_with_config(
        &manifest,
        "[limits]\nqueue_timeout_secs = 0.5\n[limits.components.testbed]\nmax_concurrency = 2\n",
    );
    let c = support::client();
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), format!("{}/sleep?ms=4000", s.url));
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let refused = c.get(format!("{}/hello", s.url)).send().await.unwrap();
    let msg = expect_overloaded(refused).await;
    assert!(
        msg.contains("testbed") && msg.contains("2"),
        "names the component and its cap: {msg}"
    );
    // The cap is per component: the other one serves at once.
    let other = c.get(format!("{}/p2/hello", s.url)).send().await.unwrap();
    assert_eq!(other.status(), 200);

    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), 200, "admitted requests finish");
    }
    let again = c.get(format!("{}/hello", s.url)).send().await.unwrap();
    assert_eq!(again.status(), 200, "slots are freed");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_together_stay_within_the_memory_budget() {
    let (_dir, manifest) = write_manifest(&testbed_manifest());
    let (s, _rc) = up_with_config(
        &manifest,
        "[limits]\nqueue_timeout_secs = 0.5\nmemory_budget_mb = 96\nmemory_limit_mb = 80\n",
    );
    let c = support::client();
    let holder = {
        let (c, url) = (c.clone(), format!("{}/hold?mb=56&ms=4000", s.url));
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 56 MiB are held; another 56 would pass the per-instance limit (80)
    // but not the budget (96).
    let second = c
        .get(format!("{}/hold?mb=56&ms=10", s.url))
        .send()
        .await
        .unwrap();
    let msg = expect_overloaded(second).await;
    assert!(msg.contains("96 MiB"), "names the budget: {msg}");

    let held = holder.await.unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(held.text().await.unwrap(), "held 56 MiB");
    let after = c
        .get(format!("{}/hold?mb=56&ms=10", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "the budget is handed back");
    assert!(s.stderr().lines().all(|l| !l.contains("panicked")));
}

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_flood_stays_under_a_gibibyte_and_other_routes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    // Default limits: the budget and caps as a fresh install has them.
    let (s, _rc) = up_with_config(&manifest, "");
    let c = support::client();
    // 60 accounts, each signed up and then logged into from an address of
    // its own (127.0.1.N), five logins at once each: every login is a real
    // Argon2 hash, under the throttle's per-account and per-address limits.
    const ACCOUNTS: usize = 60;
    let from = |n: usize| {
        let ip = std::net::IpAddr::from([127, 0, 1, (n % ACCOUNTS + 1) as u8]);
        reqwest::Client::builder()
            .local_address(ip)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let basic = |n: usize| {
        base64::engine::general_purpose::STANDARD
            .encode(format!("flood-{}@example.com:long enough", n % ACCOUNTS))
    };
    for n in 0..ACCOUNTS {
        let signup = from(n)
            .post(format!("{}/signup", s.url))
            .json(&serde_json::json!({"email": format!("flood-{n}@example.com"), "password": "long enough"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signup.status(), 201);
    }
    let token = c
        .post(format!("{}/login", s.url))
        .header("authorization", format!("Basic {}", basic(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // 300 connections at once, each a real login.
    let flood: Vec<_> = (0..300)
        .map(|n| {
            let url = format!("{}/login", s.url);
            let auth = format!("Basic {}", basic(n));
            let client = from(n);
            tokio::spawn(async move {
                let r = client.post(url).header("authorization", auth).send().await;
                match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let ct = r
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        Ok((status, ct))
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();

    // Meanwhile, routes that do not need auth keep answering.
    let mut honest = 0;
    let probe = support::client();
    while flood.iter().any(|t| !t.is_finished()) {
        let r = probe
            .get(format!("{}/jobs/nothing", s.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the gateway answers during the flood");
        assert_eq!(r.status(), 401, "no token: 401 without asking auth");
        // A token check queues in its own lane of auth's slots, so it is
        // not stuck behind the logins.
        let r = probe
            .get(format!(
                "{}/jobs/00000000-0000-4000-8000-000000000000",
                s.url
            ))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the gateway answers during the flood");
        assert_eq!(r.status(), 404, "{}", r.text().await.unwrap_or_default());
        let health = probe
            .get(format!("{}/healthz", s.admin))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the admin listener answers during the flood");
        assert_eq!(health.status(), 200);
        honest += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut counts = std::collections::BTreeMap::new();
    for task in flood {
        let (status, ct) = task.await.unwrap().expect("no connection is reset");
        assert!(matches!(status, 200 | 503), "a login answered {status}");
        if status != 200 {
            assert!(ct.starts_with("application/json"), "{status}: {ct}");
        }
        *counts.entry(status).or_insert(0) += 1;
    }
    let peak = peak_rss_mib(s.pid());
    eprintln!("login flood: {counts:?}, {honest} honest rounds, host peak RSS {peak} MiB");
    assert!(counts.get(&200).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(peak < 1024, "host peak RSS {peak} MiB");
    // And it still logs people in afterwards.
    let after = c
        .post(format!("{}/login", s.url))
        .header("authorization", format!("Basic {}", basic(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

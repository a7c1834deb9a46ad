//! Password guessing and signup floods (issue 10, point 3): failed logins
//! are limited per account and per client address, signups per address;
//! past a limit the answer is a JSON 429 with `Retry-After`, and the state
//! is in the database, so it outlives the host.
//!
//! Loopback clients come from different addresses by binding to
//! 127.0.0.x (all of 127.0.0.0/8 is the loopback interface on Linux), which
//! is how the per-address limits are told apart from each other.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::support::{self, Spindle, UpOptions, expect_json_error, up};

const PASSWORD: &str = "correct horse battery";

/// The manifest's defaults (spin.toml), which these tests run on unless
/// they say otherwise.
const FAILURES_PER_ACCOUNT: usize = 10;
const LOGIN_WINDOW_SECS: u64 = 900;
const SIGNUPS_PER_ADDRESS: usize = 20;
const SIGNUP_WINDOW_SECS: u64 = 3600;

/// An HTTP client whose connections come from `127.0.0.<last>`.
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn at(spindle: &Spindle, last: u8) -> Client {
        Client {
            http: reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url: spindle.url.clone(),
        }
    }

    async fn signup(&self, email: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/signup", self.url))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap()
    }

    async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"));
        self.http
            .post(format!("{}/login", self.url))
            .header("authorization", format!("Basic {basic}"))
            .send()
            .await
            .unwrap()
    }

    /// Logs in with the right password and checks the token with /validate.
    async fn logs_in(&self, email: &str) {
        let resp = self.login(email, PASSWORD).await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let token = resp.text().await.unwrap();
        let claims: serde_json::Value = self
            .http
            .post(format!("{}/validate", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(claims["username"], email);
    }
}

fn email(tag: &str) -> String {
    format!("{}@example.com", support::unique(tag))
}

/// `spindle up` of the app on `state_dir` (fresh if `None`) with `vars`
/// and an optional runtime config; the directory returned holds the
/// manifest.
fn start(
    state_dir: Option<PathBuf>,
    vars: &[&str],
    runtime_config: Option<&str>,
) -> (Spindle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let mut opts = UpOptions::new(&manifest);
    opts.state_dir = state_dir;
    if let Some(rc) = runtime_config {
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, rc).unwrap();
        opts = opts
            .arg("--runtime-config-file")
            .arg(path.display().to_string());
    }
    for v in vars {
        opts = opts.arg("--variable").arg(*v);
    }
    (up(opts), dir)
}

/// Checks a throttled answer: JSON 429 saying when to retry, and a
/// `Retry-After` of 1..=`window` seconds. Returns the seconds.
async fn expect_throttled(resp: reqwest::Response, window: u64) -> u64 {
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 429 carries Retry-After in seconds: {resp:?}"));
    assert!(
        (1..=window).contains(&retry_after),
        "Retry-After {retry_after} is within the {window} s window"
    );
    let msg = expect_json_error(resp, 429).await;
    assert!(msg.contains("try again in"), "{msg}");
    retry_after
}

/// Wrong passwords until the first 429, which must come right after the
/// account's limit; returns that answer.
async fn guess_until_throttled(client: &Client, email: &str) -> reqwest::Response {
    for guess in 1..=FAILURES_PER_ACCOUNT {
        let resp = client.login(email, &format!("wrong guess {guess}")).await;
        expect_json_error(resp, 401).await;
    }
    client.login(email, "one guess too many").await
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_one_account_is_throttled_and_the_throttle_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let (spindle, _dir) = start(Some(state.path().to_path_buf()), &[], None);
    let client = Client::at(&spindle, 1);
    let (victim, bystander, cleared) = (email("victim"), email("bystander"), email("cleared"));
    for account in [&victim, &bystander, &cleared] {
        assert_eq!(client.signup(account).await.status(), 201);
    }

    // The 11th guess within the window is refused, well before the 20th;
    // so is the right password now, or guessing would go on.
    expect_throttled(
        guess_until_throttled(&client, &victim).await,
        LOGIN_WINDOW_SECS,
    )
    .await;
    expect_throttled(client.login(&victim, PASSWORD).await, LOGIN_WINDOW_SECS).await;
    // Another account is unaffected, from the same address.
    client.logs_in(&bystander).await;
    // An email without an account is throttled the same way, so a 429
    // does not tell which emails are registered.
    expect_throttled(
        guess_until_throttled(&client, &email("nobody")).await,
        LOGIN_WINDOW_SECS,
    )
    .await;

    // A successful login clears the account's failures: nine more wrong
    // guesses after it are still answered 401.
    for guess in 1..FAILURES_PER_ACCOUNT {
        expect_json_error(client.login(&cleared, &format!("typo {guess}")).await, 401).await;
    }
    client.logs_in(&cleared).await;
    for guess in 1..FAILURES_PER_ACCOUNT {
        expect_json_error(client.login(&cleared, &format!("typo {guess}")).await, 401).await;
    }

    // The throttle is in the database: a restarted host on the same state
    // directory still refuses the victim, and still serves the others.
    drop(spindle);
    let (spindle, _dir) = start(Some(state.path().to_path_buf()), &[], None);
    let client = Client::at(&spindle, 1);
    expect_throttled(client.login(&victim, PASSWORD).await, LOGIN_WINDOW_SECS).await;
    client.logs_in(&bystander).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_from_one_address_is_throttled_across_accounts() {
    // A low address limit keeps the test short; the account limit (10)
    // stays above it, so only the address limit can refuse here.
    let per_address = 4;
    let (spindle, _dir) = start(
        None,
        &[&format!("login_failures_per_address={per_address}")],
        None,
    );
    let honest = Client::at(&spindle, 2);
    let account = email("behind-nat");
    assert_eq!(honest.signup(&account).await.status(), 201);

    // One wrong guess on each of several accounts, from 127.0.0.3: auth
    // keys on the address the host saw, or this would never be refused.
    let guesser = Client::at(&spindle, 3);
    for _ in 0..per_address {
        expect_json_error(guesser.login(&email("sprayed"), "password1").await, 401).await;
    }
    let resp = guesser.login(&email("sprayed"), "password1").await;
    let retry = expect_throttled(resp, LOGIN_WINDOW_SECS).await;
    assert!(retry > 1, "the window is 900 s, not almost over: {retry}");
    // Any email is refused from this address now, even a malformed one.
    expect_throttled(guesser.login("not-an-email", "x").await, LOGIN_WINDOW_SECS).await;
    // The address is refused even for a right password ...
    expect_throttled(guesser.login(&account, PASSWORD).await, LOGIN_WINDOW_SECS).await;
    // ... while another address logs in to the same account.
    honest.logs_in(&account).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signups_are_limited_per_address() {
    let (spindle, _dir) = start(None, &[], None);
    let flood = Client::at(&spindle, 4);
    let mut created = Vec::new();
    for _ in 0..SIGNUPS_PER_ADDRESS {
        let account = email("flood");
        let resp = flood.signup(&account).await;
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        created.push(account);
    }
    expect_throttled(flood.signup(&email("flood")).await, SIGNUP_WINDOW_SECS).await;
    // A taken email is refused the same way: probing for registered
    // emails through 409 is throttled as well.
    expect_throttled(flood.signup(&created[0]).await, SIGNUP_WINDOW_SECS).await;
    // Bad input is still answered for what it is, and costs no signup.
    expect_json_error(flood.signup("not-an-email").await, 400).await;

    // Another address signs up; the flood's accounts still log in.
    let other = Client::at(&spindle, 5);
    assert_eq!(other.signup(&email("neighbour")).await.status(), 201);
    flood.logs_in(&created[0]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_throttle_is_shared_on_mariadb() {
    let Ok(url) = std::env::var("SPINDLE_TEST_MYSQL_URL") else {
        eprintln!("SKIPPED: set SPINDLE_TEST_MYSQL_URL to run the login throttle on MariaDB");
        return;
    };
    let db = support::TestDatabase::create(&url, "throttle").await;
    let rc = format!("[mysql]\nurl = \"{}\"\n", db.url);
    let (first, _first_dir) = start(None, &[], Some(&rc));
    assert!(first.log_contains("MySQL server"), "{}", first.stderr());
    let client = Client::at(&first, 6);
    let (victim, bystander) = (email("maria-victim"), email("maria-bystander"));
    for account in [&victim, &bystander] {
        assert_eq!(client.signup(account).await.status(), 201);
    }
    expect_throttled(
        guess_until_throttled(&client, &victim).await,
        LOGIN_WINDOW_SECS,
    )
    .await;

    // A second host on the same database (a replica, or this one
    // restarted) refuses the victim too, and serves the bystander.
    let (second, _second_dir) = start(None, &[], Some(&rc));
    drop(first);
    let client = Client::at(&second, 6);
    expect_throttled(client.login(&victim, PASSWORD).await, LOGIN_WINDOW_SECS).await;
    client.logs_in(&bystander).await;
}

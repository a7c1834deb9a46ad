//! The auth function over HTTP, through the repo's own `spin.toml`, on the
//! embedded SQL engine and on a real MariaDB (`SPINDLE_TEST_MYSQL_URL`).

use crate::support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Sha256, Sha512};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Spindle, UpOptions, expect_json_error, up};

const SECRET: &str = "test-secret-for-auth-tests";

/// Starts the repo's `spin.toml` (sources pointed at this build) with the
/// test secret, an optional runtime config and `vars`; the returned
/// directory holds the manifest and config.
fn start(runtime_config: Option<&str>, vars: &[&str]) -> (Spindle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let mut opts = UpOptions::new(&manifest);
    if let Some(rc) = runtime_config {
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, rc).unwrap();
        opts = opts
            .arg("--runtime-config-file")
            .arg(path.display().to_string());
    }
    opts = opts.arg("--variable").arg(format!("jwt_secret={SECRET}"));
    for v in vars {
        opts = opts.arg("--variable").arg(*v);
    }
    (up(opts), dir)
}

fn unique_email(tag: &str) -> String {
    format!("{}@example.com", support::unique(tag))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Signs a token by hand so tests can make the ones the function must refuse.
fn sign(header: &Value, claims: &Value, secret: &str, alg: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{c}");
    let sig = match alg {
        "HS256" => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        "HS512" => {
            let mut mac = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        _ => Vec::new(),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

struct Api<'a> {
    s: &'a Spindle,
    c: reqwest::Client,
}

impl Api<'_> {
    async fn signup(&self, email: &str, password: &str) -> reqwest::Response {
        self.c
            .post(format!("{}/signup", self.s.url))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap()
    }

    async fn login(&self, auth: Option<&str>) -> reqwest::Response {
        let mut req = self.c.post(format!("{}/login", self.s.url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await.unwrap()
    }

    async fn validate(&self, auth: Option<&str>) -> reqwest::Response {
        let mut req = self.c.post(format!("{}/validate", self.s.url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await.unwrap()
    }

    async fn token(&self, email: &str, password: &str) -> String {
        let r = self.login(Some(&basic(email, password))).await;
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        r.text().await.unwrap()
    }
}

/// Signup, login and validate as DESIGN.md fixes them.
async fn flows(s: &Spindle) -> String {
    let api = Api {
        s,
        c: support::client(),
    };
    let email = unique_email("flow");
    let r = api.signup(&email, "correct horse").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["email"], email);
    let msg = expect_json_error(api.signup(&email, "correct horse").await, 409).await;
    assert!(msg.contains("already"), "{msg}");

    let token = api.token(&email, "correct horse").await;
    let r = api.validate(Some(&format!("Bearer {token}"))).await;
    assert_eq!(r.status(), 200);
    let claims: Value = r.json().await.unwrap();
    assert_eq!(claims["username"], email);
    assert_eq!(claims["admin"], false);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 86400);
    assert!(iat.abs_diff(now()) < 60);

    // Wrong password and unknown user look the same from outside.
    expect_json_error(api.login(Some(&basic(&email, "wrong horse"))).await, 401).await;
    expect_json_error(
        api.login(Some(&basic(&unique_email("nobody"), "correct horse")))
            .await,
        401,
    )
    .await;
    email
}

/// Bad input of every kind gets its documented status and a JSON error.
async fn bad_input(s: &Spindle, existing: &str) {
    let api = Api {
        s,
        c: support::client(),
    };
    // Signup validation.
    expect_json_error(api.signup("not-an-email", "long enough").await, 400).await;
    expect_json_error(api.signup(&unique_email("short"), "short").await, 400).await;
    let r = api
        .c
        .post(format!("{}/signup", s.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_json_error(r, 400).await;

    // SQL injection as email and password: refused or stored literally.
    expect_json_error(api.signup("' OR '1'='1", "long enough").await, 400).await;
    expect_json_error(api.login(Some(&basic("' OR '1'='1' --", "x"))).await, 401).await;
    expect_json_error(api.login(Some(&basic(existing, "' OR '1'='1"))).await, 401).await;
    let quoted = format!("o'brien-{}", unique_email("q"));
    let evil_password = "'); DROP TABLE user; --";
    assert_eq!(api.signup(&quoted, evil_password).await.status(), 201);
    let token = api.token(&quoted, evil_password).await;
    assert_eq!(
        api.validate(Some(&format!("Bearer {token}")))
            .await
            .json::<Value>()
            .await
            .unwrap()["username"],
        quoted
    );
    // The table survived the "DROP TABLE".
    api.token(existing, "correct horse").await;

    // Basic headers: missing, wrong scheme, garbled, non-UTF-8, no colon.
    expect_json_error(api.login(None).await, 401).await;
    expect_json_error(api.login(Some("Bearer abc")).await, 401).await;
    expect_json_error(api.login(Some("Basic !!!not-base64!!!")).await, 401).await;
    let non_utf8 = format!("Basic {}", STANDARD.encode([0xff, 0xfe, b':', 0xc3, 0x28]));
    expect_json_error(api.login(Some(&non_utf8)).await, 401).await;
    let no_colon = format!("Basic {}", STANDARD.encode("no-colon-here"));
    expect_json_error(api.login(Some(&no_colon)).await, 401).await;

    // Tokens the function must refuse.
    let good = api.token(existing, "correct horse").await;
    let claims = json!({ "username": existing, "iat": now(), "exp": now() + 600, "admin": true });
    let hs256 = json!({ "alg": "HS256", "typ": "JWT" });
    let cases = [
        (
            "alg none",
            sign(
                &json!({ "alg": "none", "typ": "JWT" }),
                &claims,
                SECRET,
                "none",
            ),
        ),
        (
            "other algorithm",
            sign(
                &json!({ "alg": "HS512", "typ": "JWT" }),
                &claims,
                SECRET,
                "HS512",
            ),
        ),
        (
            "foreign key",
            sign(&hs256, &claims, "someone-elses-secret", "HS256"),
        ),
        (
            "expired",
            sign(
                &hs256,
                &json!({ "username": existing, "iat": now() - 7200, "exp": now() - 3600, "admin": false }),
                SECRET,
                "HS256",
            ),
        ),
        ("tampered payload", {
            let mut parts: Vec<String> = good.split('.').map(String::from).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
            parts.join(".")
        }),
        ("truncated", good[..good.len() - 10].to_string()),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, token) in cases {
        let r = api.validate(Some(&format!("Bearer {token}"))).await;
        let status = r.status();
        assert_eq!(status, 401, "{what} got {status}");
        expect_json_error(r, 401).await;
    }
    // Control: a correctly signed token is accepted.
    let ok = sign(
        &hs256,
        &json!({ "username": existing, "iat": now(), "exp": now() + 600, "admin": false }),
        SECRET,
        "HS256",
    );
    assert_eq!(
        api.validate(Some(&format!("Bearer {ok}"))).await.status(),
        200
    );
    expect_json_error(api.validate(None).await, 401).await;
    expect_json_error(
        api.validate(Some(&basic(existing, "correct horse"))).await,
        401,
    )
    .await;

    // Host-level bad input.
    let r = api
        .c
        .post(format!("{}/login", s.url))
        .header("x-huge", "h".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    expect_json_error(r, 431).await;
    let r = api.c.get(format!("{}/nope", s.url)).send().await.unwrap();
    expect_json_error(r, 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_on_the_embedded_backend() {
    let (s, _rc) = start(None, &[]);
    let email = flows(&s).await;
    bad_input(&s, &email).await;

    // Passwords are stored as Argon2id PHC strings, never as given.
    let db = rusqlite::Connection::open(s.state_dir.join("sql").join("default.sqlite")).unwrap();
    let stored: String = db
        .query_row("SELECT password FROM user WHERE email = ?", [&email], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_on_mariadb() {
    let Ok(url) = std::env::var("SPINDLE_TEST_MYSQL_URL") else {
        eprintln!("SPINDLE_TEST_MYSQL_URL is not set: the MariaDB auth test did not run");
        return;
    };
    // A database of this run's own: see support::TestDatabase.
    let db = support::TestDatabase::create(&url, "auth").await;
    let url = db.url.clone();
    // The host starts first, told to use a port where MariaDB "comes up"
    // later (a forwarder to the real server opens there).
    let mut late: url::Url = url.parse().unwrap();
    let target = format!(
        "{}:{}",
        late.host_str().unwrap(),
        late.port().unwrap_or(3306)
    );
    let port = support::free_port();
    late.set_host(Some("127.0.0.1")).unwrap();
    late.set_port(Some(port)).unwrap();
    let (s, _rc) = start(Some(&format!("[mysql]\nurl = \"{late}\"\n")), &[]);
    assert!(s.log_contains("MySQL server"), "{}", s.stderr());
    let c = support::client();
    let r = c.get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/readyz", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["down"]["spin:mysql"].is_string(), "{body}");
    // Auth answers at once with a JSON error naming the server. (500, not
    // 503: the host connects at a request's first query, and auth counts
    // only a failed open as an outage.)
    let r = c
        .post(format!("{}/signup", s.url))
        .json(&json!({"email": unique_email("early"), "password": "long enough"}))
        .send()
        .await
        .unwrap();
    let msg = expect_json_error(r, 500).await;
    assert!(msg.contains("cannot reach the MySQL server"), "{msg}");

    let _mariadb = support::gate::Gate::open_at(port, target).await;
    let waited = support::until_ready(&s.admin).await;
    println!("MariaDB reachable → /readyz 200: {waited:?}");
    let email = flows(&s).await;
    bad_input(&s, &email).await;

    use mysql_async::prelude::Queryable;
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.unwrap();
    let stored: Option<String> = conn
        .exec_first("SELECT password FROM user WHERE email = ?", (email,))
        .await
        .unwrap();
    let stored = stored.expect("the user row is in MariaDB");
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    drop(conn);
    pool.disconnect().await.unwrap();

    // Readiness reflects the server.
    let r = support::client()
        .get(format!("{}/readyz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_switch_signup_and_ttl_and_admins_are_granted_by_the_operator() {
    let (s, _rc) = start(None, &["signup_enabled=false", "jwt_ttl_seconds=120"]);
    let api = Api {
        s: &s,
        c: support::client(),
    };
    let msg = expect_json_error(api.signup("boss@example.com", "long enough").await, 403).await;
    assert!(msg.contains("disabled"), "{msg}");
    drop(s);

    let (s, _rc) = start(None, &["jwt_ttl_seconds=120"]);
    let api = Api {
        s: &s,
        c: support::client(),
    };
    assert_eq!(
        api.signup("boss@example.com", "long enough").await.status(),
        201
    );
    let token = api.token("boss@example.com", "long enough").await;
    let claims = |token: String| {
        let api = &api;
        async move {
            api.validate(Some(&format!("Bearer {token}")))
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = claims(token.clone()).await;
    assert_eq!(
        first["admin"], false,
        "an address chosen at signup grants nothing"
    );
    assert_eq!(
        first["exp"].as_u64().unwrap() - first["iat"].as_u64().unwrap(),
        120
    );

    // The operator grants admin rights in the database, as the README shows.
    let db = rusqlite::Connection::open(s.state_dir.join("sql").join("default.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO admin (email) VALUES (?1)",
        ["boss@example.com"],
    )
    .unwrap();
    assert_eq!(
        claims(token.clone()).await["admin"],
        true,
        "the current grant"
    );
    let fresh = api.token("boss@example.com", "long enough").await;
    assert_eq!(claims(fresh.clone()).await["admin"], true);
    db.execute("DELETE FROM admin WHERE email = ?1", ["boss@example.com"])
        .unwrap();
    assert_eq!(claims(fresh).await["admin"], false, "revoked at once");
    // The secret was given, so no default-secret warning.
    assert!(
        !s.stderr().contains("using its manifest default"),
        "{}",
        s.stderr()
    );
}

#[test]
fn default_secret_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = support::app_manifest(dir.path());
    let s = up(UpOptions::new(&manifest));
    assert!(
        s.log_contains("secret variable `jwt_secret` is using its manifest default"),
        "{}",
        s.stderr()
    );
}

//! The credentials `k8s/` gives the app, for real: `spindle up` and
//! `spindle-convert`, started with the k8s runtime configs
//! (`k8s/base/runtime.toml`, `convert.toml`) and their `${NAME}`s from the
//! environment, as the Deployments do, run against
//!
//! - the MongoDB test server with access control on and the application's
//!   user made with the roles `k8s/base/mongodb/create-app-user.js` gives
//!   (read from the file, so editing it changes this test);
//! - MariaDB with the user the `mariadb` image makes from `MARIADB_USER` and
//!   `MARIADB_DATABASE` (`k8s/base/mysql.yaml`: all privileges on the
//!   database) and the tables of `k8s/base/mysql/schema.sql`;
//! - RabbitMQ with the user the `rabbitmq` image makes from
//!   `RABBITMQ_DEFAULT_USER` (`k8s/base/rabbitmq.yaml`: tag
//!   `administrator`, configure/write/read `.*` on its vhost), on a vhost
//!   and user of this run's own.
//!
//! Needs `SPINDLE_TEST_MYSQL_URL` (a root login) and `SPINDLE_TEST_AMQP_URL`
//! plus `rabbitmqctl`; without the variables it says it skipped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use mysql_async::prelude::Queryable;

use super::read_text;
use crate::support::{self, UpOptions};
use smtp_server::{SmtpServer, TlsMode};

/// The database the deploy records live in (host/platform's deploy store).
const DEPLOY_BUCKET: &str = "spindle-deploys";

/// A URL-safe password no other run uses (hex, as k8s/README.md makes them).
fn secret() -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{}-{n}", support::unique("secret"));
    sha2::Sha256::digest(seed.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A short name no other run uses (MariaDB limits user names).
fn run_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{prefix}{:x}", nanos % (1 << 40))
}

// ------------------------------------------------------- create-app-user.js

/// What `create-app-user.js` creates: the user's database, the environment
/// variables its name and password come from, and its roles (role, db).
#[derive(Debug)]
struct MongoAppUser {
    auth_db: String,
    user_env: String,
    password_env: String,
    roles: Vec<(String, String)>,
}

/// The first `"…"` string after `key` in `text`.
fn quoted_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    let start = rest.find('"')? + 1;
    let len = rest[start..].find('"')?;
    Some(&rest[start..start + len])
}

/// The `process.env.NAME` after `key`.
fn env_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let name = rest.strip_prefix("process.env.")?;
    Some(&name[..name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?])
}

fn parse_create_app_user(js: &str) -> MongoAppUser {
    let shape = "k8s/base/mongodb/create-app-user.js: expected \
                 db.getSiblingDB(\"DB\").createUser({ user: process.env.U, pwd: process.env.P, \
                 roles: [{ role: \"R\", db: \"D\" }, ...] })";
    // Comments may mention anything; only code counts.
    let code: String = js
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let auth_db = quoted_after(&code, "getSiblingDB(")
        .expect(shape)
        .to_string();
    let call = &code[code.find(".createUser(").expect(shape)..];
    let user_env = env_after(call, "user:").expect(shape).to_string();
    let password_env = env_after(call, "pwd:").expect(shape).to_string();
    let roles_start = call.find("roles:").expect(shape);
    let roles_text = &call[roles_start..roles_start + call[roles_start..].find(']').expect(shape)];
    let roles: Vec<(String, String)> = roles_text
        .split('{')
        .skip(1)
        .map(|entry| {
            (
                quoted_after(entry, "role:").expect(shape).to_string(),
                quoted_after(entry, "db:").expect(shape).to_string(),
            )
        })
        .collect();
    assert!(!roles.is_empty(), "{shape}");
    MongoAppUser {
        auth_db,
        user_env,
        password_env,
        roles,
    }
}

#[test]
fn create_app_user_js_is_read_as_written() {
    let parsed = parse_create_app_user(
        r#"// roles: [{ role: "root", db: "admin" }]
db.getSiblingDB("admin").createUser({
  user: process.env.MONGO_USERNAME,
  pwd: process.env.MONGO_PASSWORD,
  roles: [
    { role: "readWrite", db: "videos" },
    { role: "read", db: "mp3s" },
  ],
});"#,
    );
    assert_eq!(parsed.auth_db, "admin");
    assert_eq!(parsed.user_env, "MONGO_USERNAME");
    assert_eq!(parsed.password_env, "MONGO_PASSWORD");
    assert_eq!(
        parsed.roles,
        [
            ("readWrite".to_string(), "videos".to_string()),
            ("read".to_string(), "mp3s".to_string())
        ]
    );
}

// ------------------------------------------------------------ the servers

/// `key: value` of the env entry `name` in a manifest (the literal value or
/// the Secret key it comes from).
fn env_entry(yaml: &str, name: &str) -> String {
    let at = yaml
        .find(&format!("- name: {name}\n"))
        .unwrap_or_else(|| panic!("no env entry {name}"));
    let rest = &yaml[at..];
    let next = rest[1..].find("- name:").map_or(rest.len(), |n| n + 1);
    let entry = &rest[..next];
    entry
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("value: ")
                .or_else(|| l.strip_prefix("key: "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("env entry {name} has no value or key:\n{entry}"))
}

/// A MariaDB user of this run's own, dropped again when this is dropped.
struct MariaDbUser {
    server: mysql_async::Opts,
    name: String,
}

impl MariaDbUser {
    /// What the `mariadb` image does at first start with `MARIADB_DATABASE`
    /// = `database`, `MARIADB_USER`/`_PASSWORD`: the initdb scripts (here
    /// schema.sql) as root, and the user with all privileges on the
    /// database.
    async fn create(root_url: &str, database: &str, name: &str, password: &str) -> Self {
        let root: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(
            mysql_async::Opts::from_url(root_url).expect("a MySQL URL"),
        )
        .db_name(None::<String>)
        .into();
        let schema = read_text(&support::workspace_root().join("k8s/base/mysql/schema.sql"));
        let mut conn = mysql_async::Conn::new(root.clone())
            .await
            .expect("connecting to MariaDB as root");
        let code: String = schema
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            // schema.sql names the k8s database; this run has its own.
            let statement = statement
                .strip_suffix(" auth")
                .map_or(statement.to_string(), |head| format!("{head} `{database}`"));
            conn.query_drop(&statement)
                .await
                .unwrap_or_else(|e| panic!("schema.sql: {statement}: {e}"));
        }
        // As docker-entrypoint.sh: `_` is a wildcard in a GRANT's database.
        let escaped = database.replace('_', "\\_");
        for statement in [
            format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"),
            format!("GRANT ALL ON `{escaped}`.* TO '{name}'@'%'"),
        ] {
            conn.query_drop(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        conn.disconnect().await.ok();
        MariaDbUser {
            server: root,
            name: name.to_string(),
        }
    }
}

impl Drop for MariaDbUser {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block; a thread can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = mysql_async::Conn::new(server).await?;
                conn.query_drop(format!("DROP USER IF EXISTS '{name}'@'%'"))
                    .await?;
                conn.disconnect().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the MariaDB user {}", self.name);
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("running rabbitmqctl (needed for this test): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A RabbitMQ vhost and user of this run's own, deleted when dropped.
struct RabbitMqUser {
    name: String,
}

impl RabbitMqUser {
    /// What the `rabbitmq` image makes from `RABBITMQ_DEFAULT_USER`/`_PASS`
    /// (its `default_user`): tag `administrator`, and configure, write and
    /// read `.*` on the vhost (`/` in the cluster; here `name`).
    fn create(name: &str, password: &str) -> Self {
        let user = RabbitMqUser {
            name: name.to_string(),
        };
        for args in [
            vec!["add_vhost", name],
            vec!["add_user", name, password],
            vec!["set_user_tags", name, "administrator"],
            vec!["set_permissions", "-p", name, name, ".*", ".*", ".*"],
        ] {
            rabbitmqctl(&args).unwrap_or_else(|e| panic!("{e}"));
        }
        user
    }
}

impl Drop for RabbitMqUser {
    fn drop(&mut self) {
        for args in [
            ["delete_user", self.name.as_str()],
            ["delete_vhost", self.name.as_str()],
        ] {
            if let Err(e) = rabbitmqctl(&args) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur.
fn replaced(text: &str, from: &str, to: &str, file: &str) -> String {
    assert!(text.contains(from), "{file} no longer contains `{from}`");
    text.replace(from, to)
}

/// A running `spindle-convert`, killed when dropped.
struct Worker {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker(manifest: &Path, config: &Path, state: &Path, env: &[(String, String)]) -> Worker {
    let mut child = Command::new(support::convert_binary())
        .arg("--manifest")
        .arg(manifest)
        .arg("--runtime-config-file")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("SPINDLE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning spindle-convert");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let stderr = stderr.clone();
        let pipe = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[spindle-convert] {line}");
                let mut s = stderr.lock().expect("stderr lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("Converting videos from queue") => break,
            Ok(_) => {}
            Err(_) => panic!(
                "spindle-convert did not start (exit: {:?}); stderr:\n{}",
                child.try_wait().ok().flatten(),
                stderr.lock().expect("stderr lock")
            ),
        }
    }
    Worker { child, stderr }
}

// ------------------------------------------------------------ the app

/// `createUser` as create-app-user.js runs it (mongosh's `db.createUser`).
async fn create_mongo_user(
    root: &mongodb::Client,
    db: &str,
    user: &str,
    password: &str,
    roles: &[(String, String)],
) {
    let roles: Vec<Document> = roles
        .iter()
        .map(|(role, db)| doc! { "role": role.as_str(), "db": db.as_str() })
        .collect();
    root.database(db)
        .run_command(doc! { "createUser": user, "pwd": password, "roles": roles })
        .await
        .unwrap_or_else(|e| panic!("createUser {user}: {e}"));
}

fn with_env<'a>(opts: UpOptions<'a>, env: &[(String, String)]) -> UpOptions<'a> {
    env.iter().fold(opts, |opts, (k, v)| opts.env(k, v))
}

async fn token(client: &reqwest::Client, url: &str, email: &str) -> String {
    let password = "long enough password";
    let resp = client
        .post(format!("{url}/signup"))
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = client
        .post(format!("{url}/login"))
        .basic_auth(email, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Uploads `video` and waits for its job to end; returns the job.
async fn convert(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    video: &Path,
) -> serde_json::Value {
    let part = reqwest::multipart::Part::bytes(std::fs::read(video).unwrap())
        .file_name("clip.mp4")
        .mime_str("video/mp4")
        .unwrap();
    let resp = client
        .post(format!("{url}/upload"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let upload: serde_json::Value = resp.json().await.unwrap();
    let job_id = upload["job_id"].as_str().expect("a job id").to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job: serde_json::Value = client
            .get(format!("{url}/jobs/{job_id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "done" || job["status"] == "failed" {
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_runs_on_the_users_and_grants_k8s_creates() {
    let (Ok(mysql_url), Ok(amqp_url)) = (
        std::env::var("SPINDLE_TEST_MYSQL_URL"),
        std::env::var("SPINDLE_TEST_AMQP_URL"),
    ) else {
        eprintln!(
            "SKIPPED: set SPINDLE_TEST_MYSQL_URL and SPINDLE_TEST_AMQP_URL to run the app with the k8s credentials"
        );
        return;
    };
    let k8s = support::workspace_root().join("k8s/base");
    let dir = tempfile::tempdir().unwrap();
    let run = run_name("spk8s");

    // MongoDB: root as the image makes it, then create-app-user.js's user,
    // and the same user without the deploy bucket (the roles before the
    // fix) to show what that costs.
    let app_user = parse_create_app_user(&read_text(&k8s.join("mongodb/create-app-user.js")));
    let root_password = secret();
    let mongo = mongo_wire::start_with(
        "127.0.0.1:0".parse().unwrap(),
        mongo_wire::Options::auth("root", &root_password),
    )
    .await
    .expect("starting the MongoDB test server");
    let root = mongodb::Client::with_uri_str(format!(
        "mongodb://root:{root_password}@{}/?authSource=admin",
        mongo.addr()
    ))
    .await
    .unwrap();
    let mongo_password = secret();
    let auth_db = app_user.auth_db.as_str();
    create_mongo_user(&root, auth_db, "spindle", &mongo_password, &app_user.roles).await;
    let before_fix: Vec<(String, String)> = app_user
        .roles
        .iter()
        .filter(|(_, db)| db != DEPLOY_BUCKET)
        .cloned()
        .collect();
    create_mongo_user(&root, auth_db, "spindle-old", &mongo_password, &before_fix).await;

    // MariaDB: a database of this run's own stands for `auth`.
    let mysql_yaml = read_text(&k8s.join("mysql.yaml"));
    assert_eq!(env_entry(&mysql_yaml, "MARIADB_DATABASE"), "auth");
    assert_eq!(env_entry(&mysql_yaml, "MARIADB_USER"), "MYSQL_USER");
    assert_eq!(env_entry(&mysql_yaml, "MARIADB_PASSWORD"), "MYSQL_PASSWORD");
    let db = support::TestDatabase::create(&mysql_url, "k8s").await;
    let db_url = url::Url::parse(&db.url).unwrap();
    let db_name = db_url.path().trim_start_matches('/').to_string();
    let mysql_password = secret();
    let _mysql_user = MariaDbUser::create(&mysql_url, &db_name, &run, &mysql_password).await;

    // RabbitMQ: the image's default user, on a vhost of this run's own.
    let rabbitmq_yaml = read_text(&k8s.join("rabbitmq.yaml"));
    assert_eq!(
        env_entry(&rabbitmq_yaml, "RABBITMQ_DEFAULT_USER"),
        "RABBITMQ_USERNAME"
    );
    assert_eq!(
        env_entry(&rabbitmq_yaml, "RABBITMQ_DEFAULT_PASS"),
        "RABBITMQ_PASSWORD"
    );
    let rabbitmq_password = secret();
    let _rabbitmq_user = RabbitMqUser::create(&run, &rabbitmq_password);
    let amqp = url::Url::parse(&amqp_url).expect("SPINDLE_TEST_AMQP_URL is a URL");

    // The k8s runtime configs, with the cluster's host names pointed here.
    let mysql_at = format!(
        "@{}:{}/{db_name}",
        db_url.host_str().unwrap(),
        db_url.port().unwrap_or(3306)
    );
    let mongo_at = format!("@{}/", mongo.addr());
    let amqp_at = format!(
        "@{}:{}/{run}",
        amqp.host_str().unwrap(),
        amqp.port().unwrap_or(5672)
    );
    let host_config = dir.path().join("runtime.toml");
    let text = read_text(&k8s.join("runtime.toml"));
    let text = replaced(&text, "@mysql:3306/auth", &mysql_at, "runtime.toml");
    let text = replaced(&text, "@mongodb:27017/", &mongo_at, "runtime.toml");
    let text = replaced(&text, "@rabbitmq:5672/%2f", &amqp_at, "runtime.toml");
    std::fs::write(&host_config, text).unwrap();
    let worker_config = dir.path().join("convert.toml");
    let text = read_text(&k8s.join("convert.toml"));
    let text = replaced(&text, "@mongodb:27017/", &mongo_at, "convert.toml");
    let text = replaced(&text, "@rabbitmq:5672/%2f", &amqp_at, "convert.toml");
    std::fs::write(&worker_config, text).unwrap();

    // The Secret's values, under the names the Deployments give them.
    let smtp = SmtpServer::start(TlsMode::Plain);
    let (smtp_url, jwt_secret) = (smtp.url(), secret());
    let env = |mongo_user: &str| -> Vec<(String, String)> {
        [
            (app_user.user_env.as_str(), mongo_user),
            (app_user.password_env.as_str(), mongo_password.as_str()),
            ("MYSQL_USER", run.as_str()),
            ("MYSQL_PASSWORD", mysql_password.as_str()),
            ("RABBITMQ_USERNAME", run.as_str()),
            ("RABBITMQ_PASSWORD", rabbitmq_password.as_str()),
            ("SMTP_URL", smtp_url.as_str()),
            ("SPIN_VARIABLE_JWT_SECRET", jwt_secret.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let manifest = support::app_manifest(dir.path());
    let up_options = || {
        UpOptions::new(&manifest)
            .arg("--runtime-config-file")
            .arg(host_config.display().to_string())
    };

    // The roles before the fix: the host cannot read its deploy records,
    // so it never turns ready, and /readyz says why.
    let refused = support::up(with_env(up_options(), &env("spindle-old")));
    let needle = format!("not authorized on {DEPLOY_BUCKET} to execute command");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = support::client()
            .get(format!("{}/readyz", refused.admin))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(
            status, 503,
            "a host without a role on `{DEPLOY_BUCKET}` is not ready: {body}"
        );
        if body.contains(&needle) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named the refusal: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(refused);

    // The roles of create-app-user.js: an upload converts to done.
    let env = env("spindle");
    let host = support::up(with_env(up_options(), &env));
    let worker_state = tempfile::tempdir().unwrap();
    let worker = start_worker(&manifest, &worker_config, worker_state.path(), &env);
    let video = support::make_video(dir.path(), "clip.mp4", 3);
    let client = support::client();
    let email = format!("{}@example.com", support::unique("k8s"));
    let token = token(&client, &host.url, &email).await;
    let job = convert(&client, &host.url, &token, &video).await;
    assert_eq!(
        job["status"],
        "done",
        "{job}\nhost:\n{}\nworker:\n{}",
        host.stderr(),
        worker.stderr.lock().expect("stderr lock")
    );
    let mp3_fid = job["mp3_fid"].as_str().expect("a done job names its MP3");
    let mp3 = client
        .get(format!("{}/download?fid={mp3_fid}", host.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(mp3.status(), 200);
    assert!(mp3.bytes().await.unwrap().len() > 1000, "an MP3 came back");
    let mails = smtp
        .wait_for_messages_async(1, Duration::from_secs(60))
        .await;
    assert!(
        mails.iter().any(|m| m.rcpt_to.iter().any(|r| r == &email)),
        "notify mailed {email}"
    );
}

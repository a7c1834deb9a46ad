//! Test support: builds the test components once, runs real `spindle up`
//! processes on free ports, and talks to them over HTTP.
#![allow(
    dead_code,
    reason = "the benches include this module by #[path] and use part of it"
)]

pub mod gate;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Where `cargo build --target wasm32-wasip2 --release` puts components.
pub fn wasm_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("wasm32-wasip2").join("release")
}

/// Builds every component the tests use, once per test process.
pub fn build_components() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--release",
                "-p",
                "auth",
                "-p",
                "gateway",
                "-p",
                "notify@0.1.0",
                "-p",
                "web",
                "-p",
                "testbed",
                "-p",
                "hello-p2",
                "-p",
                "deploy-probe",
                "-p",
                "sdk7",
            ])
            .status()
            .expect("running cargo build for the components");
        assert!(status.success(), "building the test components failed");
    });
    wasm_dir()
}

/// The spin-sdk 3.1, 5.2 and 6.0 test components, built from crates.io
/// with their own lockfiles (they are not workspace members): `[sdk3, sdk5,
/// sdk6]`. spin-sdk 3 builds a wasm32-wasip1 core module, as Spin 2 apps are.
pub fn build_sdk_components() -> [PathBuf; 3] {
    static BUILT: OnceLock<()> = OnceLock::new();
    let target = wasm_dir()
        .parent()
        .and_then(Path::parent)
        .expect("the wasm dir is TARGET/wasm32-wasip2/release")
        .to_path_buf();
    let components = workspace_root().join("host/tests/components");
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for (name, triple) in [
            ("sdk3", "wasm32-wasip1"),
            ("sdk5", "wasm32-wasip2"),
            ("sdk6", "wasm32-wasip2"),
        ] {
            let status = Command::new(&cargo)
                .current_dir(components.join(name))
                .args([
                    "build",
                    "--locked",
                    "--release",
                    "--target",
                    triple,
                    "--target-dir",
                ])
                .arg(&target)
                .status()
                .expect("running cargo build for an SDK component");
            assert!(
                status.success(),
                "building the {name} test component failed"
            );
        }
    });
    [
        target.join("wasm32-wasip1/release/sdk3.wasm"),
        target.join("wasm32-wasip2/release/sdk5.wasm"),
        target.join("wasm32-wasip2/release/sdk6.wasm"),
    ]
}

/// The repo's `spin.toml`, copied next to a runtime config with the
/// components' `source` pointing at this build's wasm directory.
pub fn app_manifest(dir: &Path) -> PathBuf {
    let wasm = build_components();
    let text = std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap();
    let text = text.replace(
        "source = \"target/wasm32-wasip2/release/",
        &format!("source = \"{}/", wasm.display()),
    );
    let path = dir.join("spin.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A name no other test run uses, for things on shared servers (queues,
/// accounts).
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{tag}-{nanos}")
}

/// What the two versions of the deploy-probe component answer.
pub const PROBE_V1: &str = "deploy-probe-version-1";
pub const PROBE_V2: &str = "deploy-probe-version-2";

/// The deploy-probe component and a second version of it: the same bytes
/// with its version string patched (same length), so two artifacts with
/// different hashes and different answers.
pub fn probe_versions() -> (Vec<u8>, Vec<u8>) {
    let v1 = std::fs::read(build_components().join("deploy_probe.wasm")).unwrap();
    let at: Vec<usize> = v1
        .windows(PROBE_V1.len())
        .enumerate()
        .filter(|(_, w)| *w == PROBE_V1.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the version marker occurs once in the probe");
    let mut v2 = v1.clone();
    v2[at[0]..at[0] + PROBE_V2.len()].copy_from_slice(PROBE_V2.as_bytes());
    (v1, v2)
}

/// The version a host shows for `bytes`: its sha256 as 12 hex digits.
pub fn sha_prefix(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running `spindle up`, killed when dropped.
pub struct Spindle {
    child: Child,
    pub url: String,
    pub admin: String,
    /// The SPINDLE_ADMIN_TOKEN it was started with, if any.
    env_token: Option<String>,
    stderr: Arc<Mutex<String>>,
    pub state_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for Spindle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The compile cache shared by all tests, so each component compiles once.
pub fn shared_cache_dir() -> PathBuf {
    wasm_dir().join("spindle-test-cache")
}

pub struct UpOptions<'a> {
    pub manifest: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Reuse this state directory instead of a fresh temporary one.
    pub state_dir: Option<PathBuf>,
    /// The compile cache (default: one shared by all tests).
    pub cache_dir: PathBuf,
}

impl<'a> UpOptions<'a> {
    pub fn new(manifest: &'a Path) -> Self {
        UpOptions {
            manifest,
            args: Vec::new(),
            env: Vec::new(),
            state_dir: None,
            cache_dir: shared_cache_dir(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

fn up_command(opts: &UpOptions<'_>, state_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spindle"));
    cmd.arg("up").arg("--manifest").arg(opts.manifest);
    // Free loopback ports unless the test chose its own addresses.
    for flag in ["--listen", "--admin-listen"] {
        if !opts.args.iter().any(|a| a == flag) {
            cmd.args([flag, "127.0.0.1:0"]);
        }
    }
    cmd.arg("--state-dir")
        .arg(state_dir)
        .arg("--cache-dir")
        .arg(&opts.cache_dir)
        .args(&opts.args)
        .env("SPINDLE_LOG", "info")
        .env_remove("SPINDLE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `spindle up` and waits until it prints its URLs.
pub fn up(opts: UpOptions<'_>) -> Spindle {
    let (temp, state_dir) = match &opts.state_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let t = tempfile::tempdir().expect("temp dir");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let mut child = up_command(&opts, &state_dir)
        .spawn()
        .expect("spawning spindle");
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let stderr = stderr.clone();
        let pipe = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[spindle] {line}");
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[spindle stdout] {line}");
            let _ = tx.send(line);
        }
    });
    let (mut url, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while url.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(u) = line.strip_prefix("Serving ") {
                    url = Some(u.trim().to_string());
                }
                if let Some(rest) = line.strip_prefix("Admin ") {
                    admin = rest.split_whitespace().next().map(str::to_string);
                }
            }
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "spindle did not start (exit: {status:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }
    let env_token = opts
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "SPINDLE_ADMIN_TOKEN")
        .map(|(_, v)| v.clone());
    Spindle {
        child,
        url: url.unwrap(),
        admin: admin.unwrap(),
        env_token,
        stderr,
        state_dir,
        _temp: temp,
    }
}

impl Spindle {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling spindle") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin API's token: SPINDLE_ADMIN_TOKEN when the host was
    /// started with one, else the one it generated into its state directory.
    pub fn admin_token(&self) -> String {
        if let Some(token) = self.env_token.as_ref().filter(|t| !t.is_empty()) {
            return token.clone();
        }
        let path = self.state_dir.join("admin-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to 10 s for `needle` to appear in the host's log.
    pub fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// Starts `spindle up` with `runtime_config` (TOML text) as its runtime
/// config file, kept in the returned directory.
pub fn up_with_config(manifest: &Path, runtime_config: &str) -> (Spindle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("runtime.toml");
    std::fs::write(&rc, runtime_config).unwrap();
    let s = up(UpOptions::new(manifest)
        .arg("--runtime-config-file")
        .arg(rc.display().to_string()));
    (s, dir)
}

/// Runs `spindle up` expecting it to fail at start-up; returns its stderr.
pub fn up_fails(opts: UpOptions<'_>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = up_command(&opts, dir.path());
    let output = cmd.output().expect("running spindle");
    assert!(
        !output.status.success(),
        "spindle up should have failed; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a manifest into a fresh temp dir and returns both.
pub fn write_manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spin.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Asserts the response is JSON `{"error": "..."}` with the given status,
/// and returns the message.
pub async fn expect_json_error(resp: reqwest::Response, status: u16) -> String {
    let got = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}, body {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {body}"))
        .to_string();
    assert!(!msg.is_empty());
    msg
}

/// A MariaDB database of one test's own on the server of
/// `SPINDLE_TEST_MYSQL_URL`, dropped again when this is dropped.
///
/// Tests are run many times an hour against one shared server, by several
/// developers at once, and auth keeps state there that outlives a run (its
/// throttles count signups and failed logins per client address, and every
/// test client is 127.0.0.1). A fresh database per test keeps runs from
/// counting against each other, whatever the limits are.
pub struct TestDatabase {
    /// The server URL with this database's name in place of the given one.
    pub url: String,
    server: mysql_async::Opts,
    name: String,
}

impl TestDatabase {
    /// Creates `<given name>_<tag>_<nanos>` on the server `url` names.
    pub async fn create(url: &str, tag: &str) -> TestDatabase {
        use mysql_async::prelude::Queryable;
        let mut parsed = url::Url::parse(url).expect("SPINDLE_TEST_MYSQL_URL is a URL");
        let given = parsed.path().trim_start_matches('/').to_string();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos();
        let base = if given.is_empty() {
            "spindle_test"
        } else {
            &given
        };
        let name = format!("{base}_{tag}_{nanos}");
        parsed.set_path(&format!("/{name}"));
        let opts = mysql_async::Opts::from_url(url).expect("a MySQL URL");
        let server: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(opts)
            .db_name(None::<String>)
            .into();
        let mut conn = mysql_async::Conn::new(server.clone())
            .await
            .expect("connecting to the test MariaDB");
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("creating the test database");
        conn.disconnect().await.ok();
        TestDatabase {
            url: parsed.to_string(),
            server,
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a tokio runtime, which cannot be blocked on;
        // a thread with its own runtime can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use mysql_async::prelude::Queryable;
                let mut conn = mysql_async::Conn::new(server).await?;
                conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await?;
                conn.disconnect().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// A video of `secs` seconds (a test pattern and a sine tone, MPEG-4 and
/// AAC) made by ffmpeg in `dir`.
pub fn make_video(dir: &Path, name: &str, secs: u32) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=duration={secs}:size=320x240:rate=25"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={secs}"))
        .args(["-c:v", "mpeg4", "-q:v", "8", "-c:a", "aac", "-shortest"])
        .arg(&path)
        .status()
        .expect("running ffmpeg (a prerequisite: install ffmpeg)");
    assert!(status.success(), "ffmpeg could not make the test video");
    path
}

/// The real servers the app runs on: MariaDB (a database of this run's
/// own), RabbitMQ, and GridFS (a real `mongod` at
/// `SPINDLE_TEST_MONGODB_URL`, else the wire-protocol test server).
pub struct RealServers {
    pub db: TestDatabase,
    pub amqp: String,
    pub gridfs: String,
    _mongo: mongo_wire::ServerHandle,
}

impl RealServers {
    /// `None` when `SPINDLE_TEST_MYSQL_URL` or `SPINDLE_TEST_AMQP_URL` is
    /// unset; the caller says it skipped.
    pub async fn start(tag: &str) -> Option<RealServers> {
        let (Ok(mysql), Ok(amqp)) = (
            std::env::var("SPINDLE_TEST_MYSQL_URL"),
            std::env::var("SPINDLE_TEST_AMQP_URL"),
        ) else {
            return None;
        };
        let db = TestDatabase::create(&mysql, tag).await;
        let mongo = mongo_wire::start("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("starting the MongoDB test server");
        let gridfs = std::env::var("SPINDLE_TEST_MONGODB_URL").unwrap_or_else(|_| mongo.url());
        Some(RealServers {
            db,
            amqp,
            gridfs,
            _mongo: mongo,
        })
    }

    /// The runtime config's `[mysql]`, `[gridfs]` and `[amqp]` sections.
    pub fn runtime_config(&self) -> String {
        format!(
            "[mysql]\nurl = \"{}\"\n[gridfs]\nurl = \"{}\"\n[amqp]\nurl = \"{}\"\n",
            self.db.url, self.gridfs, self.amqp
        )
    }
}

/// The `spindle-convert` binary next to `spindle`. The root `cargo test`
/// builds it fresh (the convert package's own tests need it); a run of the
/// host's tests alone builds it when it is missing. Not rebuilt otherwise:
/// `cargo build -p convert` resolves features apart from the workspace run
/// and would compile a second copy of the platform.
pub fn convert_binary() -> PathBuf {
    let spindle = Path::new(env!("CARGO_BIN_EXE_spindle"));
    let path = spindle.with_file_name("spindle-convert");
    if path.exists() {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).args([
        "build",
        "-p",
        "convert",
        "--bin",
        "spindle-convert",
    ]);
    if spindle.parent().is_some_and(|d| d.ends_with("release")) {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("running cargo build for spindle-convert");
    assert!(status.success(), "building spindle-convert failed");
    path
}

/// A loopback port where nothing listens (for a server that comes up
/// later, see [`gate::Gate::open_at`]).
/// An HTTP server on a free loopback port answering every request with
/// 200 and `body`, for outbound HTTP to reach.
pub async fn upstream(body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper::service::service_fn(move |_req| async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(body.as_bytes()),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `{admin}/readyz` until it answers 200 (up to 60 s); returns how
/// long that took.
pub async fn until_ready(admin: &str) -> Duration {
    let started = Instant::now();
    let client = client();
    loop {
        if let Ok(r) = client.get(format!("{admin}/readyz")).send().await
            && r.status() == 200
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{admin} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The converter's web page in a real browser: Debian's headless Chromium,
//! driven through chromedriver over WebDriver (fantoccini), against a real
//! `spindle up` of the repo's `spin.toml` on embedded defaults. Sign up,
//! log out and in, upload a video ffmpeg made, watch the bar and the job
//! reach done, download the MP3, delete the job; an upload over the storage
//! quota; a token that expires; a file name that is HTML.
//!
//! Screenshots at phone (390x844) and desktop (1280x800) widths after each
//! step go to `<target>/web-screenshots/<test>/` for a person to look at.
//!
//! Without `chromium` and `chromedriver` on PATH (`apt-get install chromium
//! chromium-driver`) the tests are skipped with a note on stderr, unless
//! `SPINDLE_TEST_BROWSER` is set (`.ci/run` sets it): then they fail.

use crate::support;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Spindle, UpOptions, up};

const PASSWORD: &str = "correct horse battery";

/// Widths a screenshot is taken at: a phone's and a laptop's.
const SIZES: [(&str, u32, u32); 2] = [("phone", 390, 844), ("desktop", 1280, 800)];

/// One browser at a time: each is a few hundred MB and a core while busy.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- gate

fn browser_required() -> bool {
    std::env::var("SPINDLE_TEST_BROWSER").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or else a skip (a failure under
/// SPINDLE_TEST_BROWSER).
fn tools() -> Option<(PathBuf, PathBuf)> {
    let found = (on_path("chromium"), on_path("chromedriver"));
    if let (Some(chromium), Some(driver)) = found {
        return Some((chromium, driver));
    }
    let what =
        "chromium and chromedriver are not both on PATH (apt-get install chromium chromium-driver)";
    assert!(
        !browser_required(),
        "SPINDLE_TEST_BROWSER is set but {what}; install them, or unset SPINDLE_TEST_BROWSER to skip"
    );
    // Straight to stderr: the test harness captures print macros only.
    let _ = writeln!(
        std::io::stderr(),
        "note: skipping a browser test: {what}; set SPINDLE_TEST_BROWSER=1 to require it"
    );
    None
}

// ---------------------------------------------------------------- browser

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(path: &Path) -> Driver {
        let port = support::free_port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = support::client();
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && r.status() == 200
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session that saves downloads into `downloads`.
async fn browser(driver: &Driver, chromium: &Path, downloads: &Path) -> Client {
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            // --no-sandbox: CI runs as root in a container.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,800"],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object")
    };
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Screenshots of one test, numbered in the order taken.
struct Shots {
    dir: PathBuf,
    taken: usize,
}

impl Shots {
    fn new(test: &str) -> Shots {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| support::workspace_root().join("target"));
        let dir = target.join("web-screenshots").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Shots { dir, taken: 0 }
    }

    /// The page at each width (ending at desktop width), scrolled to
    /// `show` when given.
    async fn take(&mut self, c: &Client, step: &str, show: Option<&str>) {
        self.taken += 1;
        for (name, width, height) in SIZES {
            // The window's size, so that the page itself gets this size
            // (headless Chromium keeps room for a toolbar it does not draw).
            c.set_window_size(width, height).await.unwrap();
            let inner = c
                .execute("return [innerWidth, innerHeight]", vec![])
                .await
                .unwrap();
            let gap = |i: usize, want: u32| {
                want.saturating_sub(u32::try_from(inner[i].as_u64().unwrap()).unwrap())
            };
            c.set_window_size(width + gap(0, width), height + gap(1, height))
                .await
                .unwrap();
            if let Some(selector) = show {
                c.execute(
                    "document.querySelector(arguments[0]).scrollIntoView({ block: 'start' })",
                    vec![json!(selector)],
                )
                .await
                .unwrap();
            }
            // A frame for the layout to follow the new width.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let png = c.screenshot().await.unwrap();
            let file = self
                .dir
                .join(format!("{:02}-{step}-{name}.png", self.taken));
            std::fs::write(&file, png).unwrap();
        }
    }
}

/// Polls `script` (a function body) until it returns something truthy;
/// returns that.
async fn until(c: &Client, what: &str, script: &str, patience: Duration) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let value = c.execute(script, vec![]).await.unwrap();
        let truthy = match &value {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return value;
        }
        if Instant::now() > deadline {
            let page = c
                .execute("return document.querySelector('main').innerText", vec![])
                .await
                .unwrap_or_default();
            panic!("{what}: not seen within {patience:?}; the page shows:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the element `selector` names ("" if none).
async fn text(c: &Client, selector: &str) -> String {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            vec![json!(selector)],
        )
        .await
        .unwrap();
    v.as_str().unwrap_or_default().to_string()
}

async fn visible(c: &Client, id: &str) -> bool {
    c.execute(
        "return !document.getElementById(arguments[0]).hidden",
        vec![json!(id)],
    )
    .await
    .unwrap()
    .as_bool()
    .unwrap()
}

async fn fill(c: &Client, selector: &str, value: &str) {
    let input = c.find(Locator::Css(selector)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

async fn click(c: &Client, selector: &str) {
    c.find(Locator::Css(selector))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Signs up through the form and waits for the converter to show.
async fn sign_up(c: &Client, email: &str) {
    fill(c, "#email", email).await;
    fill(c, "#password", PASSWORD).await;
    click(c, "#signup").await;
    until(
        c,
        "the converter after signing up",
        "return !document.getElementById('app-view').hidden && document.getElementById('whoami').textContent",
        Duration::from_secs(30),
    )
    .await;
}

/// Picks `file` in the file input and presses the upload button.
async fn upload(c: &Client, file: &Path) {
    let input = c.find(Locator::Css("#file")).await.unwrap();
    input.send_keys(&file.display().to_string()).await.unwrap();
    click(c, "#upload-button").await;
}

/// The job list's items as the page shows them.
async fn jobs(c: &Client) -> Vec<Value> {
    let v = c
        .execute(
            "return [...document.querySelectorAll('#jobs li')].map(li => ({
                id: li.dataset.jobId,
                name: li.querySelector('.job-name').textContent,
                status: li.querySelector('.job-status').textContent,
                meta: li.querySelector('.job-meta').textContent,
                error: li.querySelector('.job-error').textContent,
                download: !li.querySelector('.download').hidden,
            }))",
            vec![],
        )
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// The session's token, from where the page keeps it.
async fn token(c: &Client) -> Option<String> {
    c.execute("return sessionStorage.getItem('spindle.token')", vec![])
        .await
        .unwrap()
        .as_str()
        .map(str::to_string)
}

/// An app on embedded defaults with `variables`, and its page's address.
fn app(dir: &Path, variables: &[&str]) -> Spindle {
    let manifest = support::app_manifest(dir);
    let mut opts = UpOptions::new(&manifest);
    for v in variables {
        opts = opts.arg("--variable").arg(*v);
    }
    up(opts)
}

fn email(tag: &str) -> String {
    format!("{}@example.com", support::unique(tag))
}

// ---------------------------------------------------------------- tests

/// Sign up, log out and in with the keyboard, upload, watch the job reach
/// done, download the MP3, upload an HTML-named file, delete.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_converts_downloads_and_deletes() {
    let Some((chromium, chromedriver)) = tools() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let video = support::make_video(dir.path(), "clip.mp4", 8);
    let spindle = app(dir.path(), &[]);
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let driver = Driver::start(&chromedriver).await;
    let c = browser(&driver, &chromium, &downloads).await;
    let mut shots = Shots::new("converts-downloads-deletes");

    // The page and its headers.
    let resp = support::client().get(&spindle.url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    c.goto(&spindle.url).await.unwrap();
    until(
        &c,
        "the login form",
        "return !document.getElementById('auth-view').hidden",
        Duration::from_secs(20),
    )
    .await;
    shots.take(&c, "login", None).await;

    let address = email("web");
    sign_up(&c, &address).await;
    assert_eq!(text(&c, "#whoami").await, address);
    shots.take(&c, "signed-up", None).await;

    // Log out, then in again from the keyboard: Enter submits the form.
    click(&c, "#logout").await;
    assert!(visible(&c, "auth-view").await);
    assert_eq!(text(&c, "#notice").await, "You are logged out.");
    assert_eq!(token(&c).await, None, "logging out forgets the token");
    fill(&c, "#email", &address).await;
    fill(&c, "#password", &format!("{PASSWORD}\u{E007}")).await;
    until(
        &c,
        "the converter after logging in",
        "return !document.getElementById('app-view').hidden",
        Duration::from_secs(30),
    )
    .await;
    // The token is in this tab's sessionStorage only.
    let jwt = token(&c).await.expect("a token in sessionStorage");
    let kept = c
        .execute(
            "return [localStorage.length, document.cookie, location.href]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept[0], 0, "nothing in localStorage");
    assert_eq!(kept[1], "", "no cookie");
    assert!(
        !kept[2].as_str().unwrap().contains(&jwt),
        "no token in the URL"
    );

    // Upload, recording what the bar's text and the job's status show.
    c.execute(
        "window.seen = { upload: [], status: [] };
         const note = (list, text) => { if (list.at(-1) !== text) list.push(text); };
         new MutationObserver(() => note(seen.upload, document.getElementById('upload-text').textContent))
           .observe(document.getElementById('upload-text'), { childList: true, characterData: true, subtree: true });
         new MutationObserver(() => document.querySelectorAll('#jobs .job-status')
             .forEach((s) => note(seen.status, s.textContent)))
           .observe(document.getElementById('jobs'), { childList: true, characterData: true, subtree: true });",
        vec![],
    )
    .await
    .unwrap();
    upload(&c, &video).await;
    until(
        &c,
        "the upload to finish",
        "return document.getElementById('upload-text').textContent.startsWith('Uploaded clip.mp4')",
        Duration::from_secs(60),
    )
    .await;
    let bar = c
        .execute(
            "return document.getElementById('upload-progress').value",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bar, 100);
    shots.take(&c, "uploaded", None).await;
    until(
        &c,
        "the job to be done",
        "const s = document.querySelector('#jobs li .job-status'); return s && s.textContent === 'Done'",
        Duration::from_secs(120),
    )
    .await;
    let seen = c.execute("return window.seen", vec![]).await.unwrap();
    eprintln!("the page showed: {seen}");
    let size = std::fs::metadata(&video).unwrap().len();
    let uploads = seen["upload"].as_array().unwrap();
    assert!(
        uploads
            .iter()
            .any(|t| t.as_str().unwrap().ends_with("(100%)")),
        "the bar's text counted the bytes up to 100%: {uploads:?}"
    );
    let listed = jobs(&c).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let job = &listed[0];
    assert_eq!(job["name"], "clip.mp4");
    assert!(job["download"].as_bool().unwrap(), "{job}");
    let meta = job["meta"].as_str().unwrap();
    assert!(meta.contains("0:08 long"), "{meta}");
    assert!(
        meta.contains(" KB") || meta.contains(" MB"),
        "{meta} for {size} bytes"
    );
    shots.take(&c, "done", Some("#jobs-title")).await;

    // Download through the page (fetch with the token, a blob: URL).
    click(&c, "#jobs li .download").await;
    let saved = downloads.join("clip.mp3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saved.exists() {
        assert!(
            Instant::now() < deadline,
            "no clip.mp3 in {}",
            downloads.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mp3 = std::fs::read(&saved).unwrap();
    let is_mp3 =
        mp3.starts_with(b"ID3") || (mp3.len() > 1 && mp3[0] == 0xFF && mp3[1] & 0xE0 == 0xE0);
    assert!(
        is_mp3 && mp3.len() > 10_000,
        "{} bytes, starting {:02x?}",
        mp3.len(),
        &mp3[..mp3.len().min(4)]
    );

    // A file name that is HTML shows as text, and nothing runs.
    c.execute(
        "window.alerted = false; window.alert = () => { window.alerted = true; };",
        vec![],
    )
    .await
    .unwrap();
    let html_name = "<img src=x onerror=alert(1)>.mp4";
    let tricky = dir.path().join(html_name);
    std::fs::copy(&video, &tricky).unwrap();
    upload(&c, &tricky).await;
    until(
        &c,
        "the HTML-named job to be done",
        "const s = document.querySelectorAll('#jobs li .job-status'); return s.length === 2 && [...s].every(x => x.textContent === 'Done')",
        Duration::from_secs(120),
    )
    .await;
    let listed = jobs(&c).await;
    assert_eq!(listed[0]["name"], html_name, "newest first, named as text");
    assert_eq!(listed[1]["name"], "clip.mp4");
    let ran = c
        .execute(
            "return [document.querySelectorAll('#jobs img').length, window.alerted]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        ran,
        json!([0, false]),
        "no element was made of the name, nothing ran"
    );
    shots.take(&c, "html-name", Some("#jobs-title")).await;

    // Delete the first upload: gone from the page, the API and the disk.
    let api = support::client();
    let clip_id = listed[1]["id"].as_str().unwrap().to_string();
    let before: Value = api
        .get(format!("{}/jobs/{clip_id}", spindle.url))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let li = format!("#jobs li[data-job-id='{clip_id}']");
    click(&c, &format!("{li} .delete")).await;
    shots.take(&c, "confirm-delete", Some("#jobs-title")).await;
    click(&c, &format!("{li} .confirm-delete")).await;
    until(
        &c,
        "the deleted job to leave the list",
        "return document.querySelectorAll('#jobs li').length === 1",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(text(&c, "#notice").await, "Deleted clip.mp4 and its MP3.");
    shots.take(&c, "deleted", None).await;
    let resp = api
        .get(format!("{}/jobs/{clip_id}", spindle.url))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    support::expect_json_error(resp, 404).await;
    let blobs = spindle.state_dir.join("blobs");
    for (bucket, fid) in [
        ("videos", &before["video_fid"]),
        ("mp3s", &before["mp3_fid"]),
    ] {
        let fid = fid.as_str().unwrap();
        assert!(
            !blobs.join(bucket).join(format!("{fid}.json")).exists(),
            "{bucket}/{fid} is gone"
        );
    }
    c.close().await.unwrap();
}

/// An upload past the account's storage quota: the 413 in words.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_over_the_quota_says_so() {
    let Some((chromium, chromedriver)) = tools() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let video = support::make_video(dir.path(), "big.mp4", 8);
    let size = std::fs::metadata(&video).unwrap().len();
    let spindle = app(dir.path(), &[&format!("storage_quota_bytes={}", size / 2)]);
    let driver = Driver::start(&chromedriver).await;
    let c = browser(&driver, &chromium, dir.path()).await;
    let mut shots = Shots::new("over-quota");

    c.goto(&spindle.url).await.unwrap();
    sign_up(&c, &email("quota")).await;
    upload(&c, &video).await;
    let said = until(
        &c,
        "the quota error",
        "const e = document.getElementById('upload-error'); return !e.hidden && e.textContent",
        Duration::from_secs(60),
    )
    .await;
    let said = said.as_str().unwrap();
    assert!(said.starts_with("Too large:"), "{said}");
    assert!(said.contains("storage quota"), "{said}");
    assert!(
        said.contains("delete files you no longer need")
            && said.ends_with("Your files are listed below."),
        "says what to do: {said}"
    );
    assert!(jobs(&c).await.is_empty(), "nothing stored");
    shots.take(&c, "over-quota", None).await;
    c.close().await.unwrap();
}

/// A token that expires: the next request returns to the login form,
/// saying why.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_returns_to_the_login_form() {
    let Some((chromium, chromedriver)) = tools() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let video = support::make_video(dir.path(), "late.mp4", 2);
    let spindle = app(dir.path(), &["jwt_ttl_seconds=3"]);
    let driver = Driver::start(&chromedriver).await;
    let c = browser(&driver, &chromium, dir.path()).await;
    let mut shots = Shots::new("expired-session");

    c.goto(&spindle.url).await.unwrap();
    sign_up(&c, &email("expiry")).await;
    shots.take(&c, "logged-in", None).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    upload(&c, &video).await;
    let said = until(
        &c,
        "the session-expired message",
        "return !document.getElementById('auth-view').hidden && document.getElementById('notice').textContent",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(said, "Your session has expired. Log in again to go on.");
    assert!(!visible(&c, "app-view").await);
    assert_eq!(token(&c).await, None, "the expired token is forgotten");
    shots.take(&c, "expired", None).await;
    c.close().await.unwrap();
}

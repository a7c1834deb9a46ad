//! Spin's manifest v2 and the `spin up` habits, end to end: a `spindle up`
//! on a manifest using `base`, `:name` routes, a static response, an
//! inline component, `files`/`exclude_files`, `environment`, `-e`, `.env`,
//! `description`s, `tool` tables, `allowed_outbound_hosts` templates and
//! `self`, started with `-f FOLDER`; and the start-up refusals.

use crate::support::{UpOptions, build_components, client, up, up_fails, write_manifest};
use std::io::{Read, Write};
use std::net::TcpListener;

/// A one-response-per-connection HTTP server answering `body`.
fn upstream(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test]
async fn the_whole_manifest_runs_as_in_spin() {
    let wasm = build_components().join("testbed.wasm");
    let allowed = upstream("from upstream");
    let other = upstream("must not be reached");
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "manifest-test"
version = "0.3.0"
description = "every key"
authors = ["Spindle <dev@spindle.local>"]
[application.trigger.http]
base = "/base"
[application.tool.spin-test]
source = "tests"

[variables]
greeting = {{ default = "from-default", description = "what to say" }}
upstream = {{ required = true, description = "host:port of the upstream" }}

[[trigger.http]]
route = "/users/:id/..."
component = "testbed"

[[trigger.http]]
id = "teapot"
route = "/static"
static_response = {{ status_code = 418, headers = {{ x-teapot = "yes" }}, body = "short and stout" }}

[[trigger.http]]
route = "/inline/..."
component = {{ source = "{wasm}", description = "inline" }}

[component.testbed]
source = "{wasm}"
description = "the test bed"
files = ["static/*.txt", {{ source = "assets", destination = "/data" }}]
exclude_files = ["static/secret.txt"]
environment = {{ GREETING = "from-manifest", OVERRIDDEN = "manifest" }}
allowed_outbound_hosts = ["http://self", "http://{{{{ upstream }}}}"]
ai_models = ["llama2-chat"]
[component.testbed.variables]
greeting = "{{{{ greeting }}}}"
[component.testbed.tool.lint]
strict = true
"#,
        wasm = wasm.display()
    );
    let (dir, _) = write_manifest(&manifest);
    for (path, body) in [
        ("static/a.txt", "file a"),
        ("static/secret.txt", "secret"),
        ("assets/b.txt", "file b"),
    ] {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::fs::write(
        dir.path().join(".env"),
        "SPIN_VARIABLE_GREETING=from-dotenv\nNOT_A_VARIABLE=x\n",
    )
    .unwrap();
    // The folder, not the file: `-f APP_DIR` as with `spin up`.
    let s = up(UpOptions::new(dir.path())
        .arg("-e")
        .arg("OVERRIDDEN=flag")
        .arg("--variable")
        .arg(format!("upstream=127.0.0.1:{allowed}")));
    let http = client();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", s.url);
        async move {
            let resp = http.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.text().await.unwrap())
        }
    };

    // The host answers its well-known routes itself, beside the base.
    let (status, _, body) = get("/.well-known/spin/health".into()).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, _, body) = get("/.well-known/spin/info".into()).await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["name"], "manifest-test");
    assert_eq!(info["version"], "0.3.0");

    // `:name` routes under the base, and the headers Spin sets.
    let (status, _, headers) = get("/base/users/42/headers".into()).await;
    assert_eq!(status, 200, "{headers}");
    for line in [
        "spin-path-match-id: 42",
        "spin-base-path: /base",
        "spin-matched-route: /base/users/:id/...",
        "spin-raw-component-route: /users/:id/...",
        "spin-component-route: /users/:id",
        "spin-path-info: /headers",
    ] {
        assert!(
            headers.lines().any(|l| l == line),
            "no `{line}` in:\n{headers}"
        );
    }
    let (status, _, _) = get("/users/42/headers".into()).await;
    assert_eq!(status, 404, "routes are below the base");

    // A static response, without any component.
    let (status, headers, body) = get("/base/static".into()).await;
    assert_eq!((status, body.as_str()), (418, "short and stout"));
    assert_eq!(headers["x-teapot"], "yes");

    // An inline component serves its own route.
    let (status, _, body) = get("/base/inline/hello".into()).await;
    assert_eq!((status, body.as_str()), (200, "hello from wasi:http@0.3"));

    // Files: copied, excluded, placed, read-only.
    let (status, _, body) = get("/base/users/1/file/static/a.txt".into()).await;
    assert_eq!((status, body.as_str()), (200, "file a"));
    let (status, _, _) = get("/base/users/1/file/static/secret.txt".into()).await;
    assert_eq!(status, 404, "exclude_files keeps it out");
    let (status, _, body) = get("/base/users/1/file/data/b.txt".into()).await;
    assert_eq!((status, body.as_str()), (200, "file b"));
    let (status, _, _) = get("/base/users/1/write/static/a.txt".into()).await;
    assert_eq!(status, 403, "the files are read-only");
    let staged = staged_run(&s.state_dir).join("testbed/static/a.txt");
    assert_eq!(std::fs::read_to_string(staged).unwrap(), "file a");
    // The inline component has no files.
    let (status, _, _) = get("/base/inline/file/static/a.txt".into()).await;
    assert_eq!(status, 404);

    // Environment: the manifest's, with -e over it.
    let (_, _, body) = get("/base/users/1/env/GREETING".into()).await;
    assert_eq!(body, "from-manifest");
    let (_, _, body) = get("/base/users/1/env/OVERRIDDEN".into()).await;
    assert_eq!(body, "flag");

    // `.env` beside the manifest feeds the variable.
    let (status, _, body) = get("/base/users/1/var/greeting".into()).await;
    assert_eq!((status, body.as_str()), (200, "from-dotenv"));

    // A templated allowed host, rendered with --variable; others refused.
    let (status, _, body) = get(format!(
        "/base/users/1/outbound?url=http://127.0.0.1:{allowed}/"
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "from upstream"));
    let (status, _, _) = get(format!(
        "/base/users/1/outbound?url=http://127.0.0.1:{other}/"
    ))
    .await;
    assert_eq!(status, 502, "a port the list does not name is refused");

    // `self`: the application's own routes, in-process.
    let (status, _, body) =
        get("/base/users/1/outbound?url=http://self.alt/base/static".into()).await;
    assert_eq!((status, body.as_str()), (418, "short and stout"));

    // What the preopen costs: mean instantiation time with files (testbed)
    // and without (the inline component: the same wasm).
    let metrics = http
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for component in ["testbed", "http-trigger1-component"] {
        let series = |suffix: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with(&format!("spindle_instantiation_duration_seconds_{suffix}"))
                        && l.contains(&format!("component=\"{component}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (sum, count) = (series("sum"), series("count"));
        eprintln!(
            "instantiation of {component}: {count} instances, mean {:.0} µs",
            sum / count.max(1.0) * 1e6
        );
        assert!(
            count > 0.0,
            "no instantiations of {component} in:\n{metrics}"
        );
    }

    // Keys Spin accepts that Spindle does not act on are named.
    assert!(
        s.log_contains("component.testbed.ai_models: ignored"),
        "{}",
        s.stderr()
    );
}

/// The folder `spindle up` staged this run's files in.
fn staged_run(state_dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(state_dir.join("files"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
        })
        .expect("a run- folder under <state-dir>/files")
}

#[test]
fn refusals_and_typos_name_the_key() {
    let wasm = build_components().join("testbed.wasm");
    let head = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";
    let cases = [
        (
            format!(
                "{head}[component.a]\nsource = \"{}\"\nallowed_outbound_host = [\"https://x\"]\n",
                wasm.display()
            ),
            "did you mean `allowed_outbound_hosts`?",
        ),
        (
            format!(
                "{head}[component.a]\nsource = \"{}\"\n[component.a.dependencies]\n\"a:b/c\" = \"1.0\"\n",
                wasm.display()
            ),
            "component.a.dependencies",
        ),
        (
            format!(
                "{head}[component.a]\nsource = \"{}\"\nfiles = [\"nothing-here.txt\"]\n",
                wasm.display()
            ),
            "component.a.files[0]",
        ),
        (
            format!(
                "{head}[variables]\nh = {{ default = \"a b\" }}\n[component.a]\nsource = \"{}\"\nallowed_outbound_hosts = [\"https://{{{{ h }}}}\"]\n",
                wasm.display()
            ),
            "component.a.allowed_outbound_hosts[0]",
        ),
    ];
    for (text, needle) in cases {
        let (_dir, manifest) = write_manifest(&text);
        let err = up_fails(UpOptions::new(&manifest));
        assert!(err.contains(needle), "no `{needle}` in: {err}");
    }
}

#[test]
fn a_misspelt_flag_names_the_closest() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["up", "--varible", "a=b"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("a similar argument exists: '--variable'"),
        "{err}"
    );
}

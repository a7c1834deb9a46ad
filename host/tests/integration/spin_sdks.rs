//! Existing Spin apps, unmodified: one component per spin-sdk generation
//! (3.1 as a wasm32-wasip1 module, 5.2 and 7 as components, and 6.0 on the
//! WASI 0.3 release candidate), built from
//! crates.io at test time, run side by side on one host and asked the same
//! things (see `components/sdk-common/route.rs`). Key-value and SQLite data
//! written through one generation's interfaces is read through another's.

use crate::support::{self, UpOptions, up};
use std::path::Path;

const GENERATIONS: [&str; 3] = ["sdk3", "sdk5", "sdk7"];

/// A manifest serving each generation under `/NAME/...`, granted the
/// default key-value store and SQLite database, variables, files,
/// environment and outbound HTTP to `upstream` (plus MySQL when a server is
/// configured, through `mysql_url`).
fn manifest(dir: &Path, upstream: &str, mysql_host: Option<&str>) -> std::path::PathBuf {
    let wasm = support::build_components();
    let [sdk3, sdk5, _] = support::build_sdk_components();
    let sources = [sdk3, sdk5, wasm.join("sdk7.wasm")];
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("assets/greeting.txt"), "read from a mounted file").unwrap();
    let mut text = String::from(
        "spin_manifest_version = 2\n[application]\nname = \"spin-sdks\"\n\
         [variables]\nmessage = { default = \"from the manifest\" }\nmysql_url = { default = \"default\" }\n",
    );
    let mut hosts = format!("\"http://{upstream}\"");
    if let Some(host) = mysql_host {
        hosts.push_str(&format!(", \"mysql://{host}\""));
    }
    for (name, source) in GENERATIONS.iter().zip(sources) {
        text.push_str(&format!(
            "[[trigger.http]]\nroute = \"/{name}/...\"\ncomponent = \"{name}\"\n\
             [component.{name}]\nsource = \"{}\"\n\
             key_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]\nmysql_databases = [\"default\"]\n\
             allowed_outbound_hosts = [{hosts}]\n\
             files = [{{ source = \"assets\", destination = \"/assets\" }}]\n\
             environment = {{ GENERATION = \"{name}\" }}\n\
             [component.{name}.variables]\nmessage = \"{name} says {{{{ message }}}}\"\nmysql_url = \"{{{{ mysql_url }}}}\"\n",
            source.display()
        ));
    }
    let path = dir.join("spin.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct App {
    host: support::Spindle,
    client: reqwest::Client,
}

impl App {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.host.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, String) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.host.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

async fn start(mysql_url: Option<&str>) -> (App, tempfile::TempDir) {
    let upstream = support::upstream("upstream says hi").await;
    let dir = tempfile::tempdir().unwrap();
    let mysql_host = mysql_url.map(|u| {
        let url = url::Url::parse(u).unwrap();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(3306))
    });
    let manifest = manifest(dir.path(), &upstream.to_string(), mysql_host.as_deref());
    let mut opts = UpOptions::new(&manifest)
        .arg("--variable")
        .arg("message=hello");
    if let Some(url) = mysql_url {
        opts = opts.arg("--variable").arg(format!("mysql_url={url}"));
    }
    let app = App {
        host: up(opts),
        client: support::client(),
    };
    (app, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sdk_generation_runs_unmodified() {
    let (app, _dir) = start(None).await;
    for (name, generation) in GENERATIONS.iter().zip(["3", "5", "7"]) {
        let at = |p: &str| format!("/{name}{p}");
        assert_eq!(
            app.get(&at("/hello")).await,
            (200, format!("hello from spin-sdk {generation}")),
            "{name}"
        );
        assert_eq!(
            app.get(&at("/var/message")).await,
            (200, format!("{name} says hello")),
            "{name}: variables"
        );
        if *name != "sdk7" {
            assert_eq!(
                app.get(&at("/config/message")).await,
                (200, format!("{name} says hello")),
                "{name}: wasi:config/store"
            );
            assert_eq!(app.get(&at("/config/undefined")).await.0, 404, "{name}");
        }
        assert_eq!(
            app.get(&at("/env/GENERATION")).await,
            (200, name.to_string()),
            "{name}: environment"
        );
        assert_eq!(
            app.get(&at("/file/assets/greeting.txt")).await,
            (200, "read from a mounted file".to_string()),
            "{name}: files"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_is_shared_across_generations() {
    let (app, _dir) = start(None).await;
    use reqwest::Method;
    for name in GENERATIONS {
        let (status, body) = app
            .send(
                Method::PUT,
                &format!("/{name}/kv/default/written-by-{name}"),
                name,
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    // Each generation reads what every other one wrote.
    for reader in GENERATIONS {
        for writer in GENERATIONS {
            assert_eq!(
                app.get(&format!("/{reader}/kv/default/written-by-{writer}"))
                    .await,
                (200, writer.to_string()),
                "{reader} reading {writer}'s key"
            );
        }
        let (status, keys) = app.get(&format!("/{reader}/kv/default")).await;
        assert_eq!(status, 200, "{reader}: {keys}");
        assert_eq!(
            keys, "written-by-sdk3\nwritten-by-sdk5\nwritten-by-sdk7\n",
            "{reader}"
        );
        let (status, body) = app.get(&format!("/{reader}/kv/default/missing")).await;
        assert_eq!(status, 404, "{reader}: {body}");
        // A store the component was not granted.
        let (status, body) = app.get(&format!("/{reader}/kv/other/k")).await;
        assert_eq!(status, 500, "{reader}: {body}");
        assert!(
            body.contains("AccessDenied") || body.contains("NoSuchStore"),
            "{reader}: {body}"
        );
    }
    // The WASI key-value draft reads the same store (spin-sdk 3 and 5).
    for reader in ["sdk3", "sdk5"] {
        assert_eq!(
            app.get(&format!("/{reader}/wasi-kv/written-by-sdk7")).await,
            (200, "sdk7".to_string()),
            "{reader} through wasi:keyvalue"
        );
        assert_eq!(app.get(&format!("/{reader}/wasi-kv/missing")).await.0, 404);
    }
    let (status, body) = app
        .send(Method::DELETE, "/sdk3/kv/default/written-by-sdk7", "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.get("/sdk7/kv/default/written-by-sdk7").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_is_shared_across_generations() {
    let (app, _dir) = start(None).await;
    use reqwest::Method;
    let (status, body) = app
        .send(
            Method::POST,
            "/sdk3/sqlite/default",
            "CREATE TABLE pets (name TEXT, legs INTEGER, weight REAL, photo BLOB)",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for name in GENERATIONS {
        let insert = format!(
            "INSERT INTO pets VALUES ('{name}', 4, 2.5, x'0102'), ('{name}-null', NULL, NULL, NULL)"
        );
        let (status, body) = app
            .send(Method::POST, &format!("/{name}/sqlite/default"), &insert)
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    for name in GENERATIONS {
        let (status, body) = app
            .send(
                Method::POST,
                &format!("/{name}/sqlite/default"),
                "SELECT name, legs, weight, photo FROM pets ORDER BY name",
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(
            body,
            "name|legs|weight|photo\n\
             sdk3|4|2.5|blob:2\nsdk3-null|null|null|null\n\
             sdk5|4|2.5|blob:2\nsdk5-null|null|null|null\n\
             sdk7|4|2.5|blob:2\nsdk7-null|null|null|null\n",
            "{name}"
        );
        let (status, body) = app
            .send(
                Method::POST,
                &format!("/{name}/sqlite/default"),
                "SELECT * FROM no_such_table",
            )
            .await;
        assert_eq!(status, 500, "{name}: {body}");
        assert!(body.contains("no such table"), "{name}: {body}");
        let (status, body) = app
            .send(
                Method::POST,
                &format!("/{name}/sqlite/elsewhere"),
                "SELECT 1",
            )
            .await;
        assert_eq!(status, 500, "{name}: {body}");
        assert!(
            body.contains("AccessDenied") || body.contains("NoSuchDatabase"),
            "{name}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_and_outbound_http_from_every_generation() {
    let database = match std::env::var("SPINDLE_TEST_MYSQL_URL") {
        Ok(url) => Some(support::TestDatabase::create(&url, "sdks").await),
        Err(_) => None,
    };
    let (app, _dir) = start(database.as_ref().map(|d| d.url.as_str())).await;
    for name in GENERATIONS {
        // The embedded engine without a server (label `default`), the
        // server's URL with one.
        let (status, body) = app
            .send(
                reqwest::Method::POST,
                &format!("/{name}/mysql"),
                "SELECT 41 + 1 AS answer",
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body, "answer\n42\n", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_and_unserved_interfaces() {
    let (app, dir) = start(None).await;
    let manifest = std::fs::read_to_string(dir.path().join("spin.toml")).unwrap();
    let upstream = manifest
        .split("\"http://")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    for name in GENERATIONS {
        assert_eq!(
            app.get(&format!("/{name}/outbound?http://{upstream}/"))
                .await,
            (200, "upstream says hi".to_string()),
            "{name}"
        );
        // Outbound Redis is linked so the app starts; the call fails with
        // the interface's own error, and the host keeps serving.
        let (status, body) = app.get(&format!("/{name}/redis")).await;
        assert_eq!(status, 500, "{name}: {body}");
        assert!(
            body.contains("not available on this host yet"),
            "{name}: {body}"
        );
        assert_eq!(app.get(&format!("/{name}/hello")).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spin_sdk_6_on_the_wasi_0_3_release_candidate() {
    let [_, _, sdk6] = support::build_sdk_components();
    let (_dir, manifest) = support::write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"sdk6\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"sdk6\"\n\
         [component.sdk6]\nsource = \"{}\"\nkey_value_stores = [\"default\"]\n",
        sdk6.display()
    ));
    let host = up(UpOptions::new(&manifest));
    let c = support::client();
    let hello = c.get(format!("{}/hello", host.url)).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.text().await.unwrap(), "hello from spin-sdk 6");
    let kv = c.get(format!("{}/kv", host.url)).send().await.unwrap();
    assert_eq!(kv.text().await.unwrap(), "6");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_componentized_module_is_cached_with_its_compiled_code() {
    let [sdk3, _, _] = support::build_sdk_components();
    let (dir, manifest) = support::write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"sdk3\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"sdk3\"\n\
         [component.sdk3]\nsource = \"{}\"\n",
        sdk3.display()
    ));
    let cache = dir.path().join("cache");
    // The log is read on another thread: wait for the line.
    let logged = |host: &support::Spindle, how: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let seen = host
                .stderr()
                .lines()
                .any(|l| l.contains("sdk3") && l.contains(how));
            if seen {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    };
    let mut opts = UpOptions::new(&manifest);
    opts.cache_dir = cache.clone();
    let first = up(opts);
    assert!(logged(&first, "compiled"), "{}", first.stderr());
    drop(first);
    let mut opts = UpOptions::new(&manifest);
    opts.cache_dir = cache;
    let second = up(opts);
    assert!(logged(&second, "from cache"), "{}", second.stderr());
    let hello = support::client()
        .get(format!("{}/hello", second.url))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello from spin-sdk 3");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_on_redis_from_every_generation() {
    let Ok(redis) = std::env::var("SPINDLE_TEST_REDIS_URL") else {
        eprintln!("SPINDLE_TEST_REDIS_URL is not set: the Redis key-value run is skipped");
        return;
    };
    let upstream = support::upstream("unused").await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), &upstream.to_string(), None);
    let (host, _config) = support::up_with_config(
        &manifest,
        &format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{redis}\"\n"),
    );
    let app = App {
        host,
        client: support::client(),
    };
    let key = support::unique("sdk-redis");
    for (writer, reader) in [("sdk3", "sdk7"), ("sdk7", "sdk5"), ("sdk5", "sdk3")] {
        let path = format!("/{writer}/kv/default/{key}-{writer}");
        let (status, body) = app.send(reqwest::Method::PUT, &path, writer).await;
        assert_eq!(status, 200, "{writer}: {body}");
        assert_eq!(
            app.get(&format!("/{reader}/kv/default/{key}-{writer}"))
                .await,
            (200, writer.to_string()),
            "{reader} reading {writer}'s key on Redis"
        );
    }
    // The values are plain Redis strings under the key, as Spin keeps them.
    let mut raw = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: Option<String> = redis::cmd("GET")
        .arg(format!("{key}-sdk3"))
        .query(&mut raw)
        .unwrap();
    assert_eq!(stored.as_deref(), Some("sdk3"));
    for writer in GENERATIONS {
        let path = format!("/{writer}/kv/default/{key}-{writer}");
        assert_eq!(app.send(reqwest::Method::DELETE, &path, "").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_and_sqlite_are_seeded_from_the_command_line() {
    let sdk7 = support::build_components().join("sdk7.wasm");
    let (dir, manifest) = support::write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"seeded\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"sdk7\"\n\
         [component.sdk7]\nsource = \"{}\"\n\
         key_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]\n",
        sdk7.display()
    ));
    let file = dir.path().join("pets.sql");
    std::fs::write(&file, "INSERT INTO pets VALUES ('from a file');\n").unwrap();
    let host = up(UpOptions::new(&manifest)
        .arg("--key-value")
        .arg("greeting=from the command line")
        .arg("--sqlite")
        .arg("CREATE TABLE pets (name TEXT)")
        .arg("--sqlite")
        .arg(format!("@{}", file.display())));
    let app = App {
        host,
        client: support::client(),
    };
    assert_eq!(
        app.get("/kv/default/greeting").await,
        (200, "from the command line".to_string())
    );
    assert_eq!(
        app.send(
            reqwest::Method::POST,
            "/sqlite/default",
            "SELECT name FROM pets"
        )
        .await,
        (200, "name\nfrom a file\n".to_string())
    );

    // A statement that fails stops start-up, naming it.
    let stderr = support::up_fails(
        UpOptions::new(&manifest)
            .arg("--sqlite")
            .arg("INSERT INTO nowhere VALUES (1)"),
    );
    assert!(stderr.contains("INSERT INTO nowhere"), "{stderr}");
}

//! The runtime config's `[sqlite_database.LABEL]` sections, grants and
//! labels, and what statements may not reach.

use super::{App, Setup, file_has_table, io_message, run, scalar};
use spindle_platform::capabilities::registry;
use spindle_platform::capabilities::sqlite::{
    Databases, Error, Location, SqliteLimits, SqliteState,
};
use spindle_platform::manifest::Manifest;
use std::time::Duration;

fn limits() -> SqliteLimits {
    SqliteLimits {
        max_result_bytes: 1 << 20,
        busy_timeout: Duration::from_secs(1),
        connections_per_instance: 4,
    }
}

async fn start_error(setup: Setup<'_>) -> String {
    match App::start(setup).await {
        Ok(_) => panic!("start-up succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn libsql_is_refused_naming_the_database() {
    let e = start_error(Setup {
        runtime_config: "[sqlite_database.remote]\ntype = \"libsql\"\nurl = \"https://x.turso.io\"\ntoken = \"t\"\n",
        ..Setup::default()
    })
    .await;
    assert!(e.contains("[sqlite_database.remote]"), "{e}");
    assert!(e.contains("\"libsql\""), "{e}");
    assert!(e.contains("not supported on this host"), "{e}");
}

#[tokio::test]
async fn unknown_types_and_keys_are_refused() {
    let e = start_error(Setup {
        runtime_config: "[sqlite_database.x]\ntype = \"postgres\"\n",
        ..Setup::default()
    })
    .await;
    assert!(e.contains("unknown type \"postgres\""), "{e}");
    let e = start_error(Setup {
        runtime_config: "[sqlite_database.x]\ntype = \"spin\"\npth = \"x.db\"\n",
        ..Setup::default()
    })
    .await;
    assert!(
        e.contains("[sqlite_database.x]") && e.contains("pth"),
        "{e}"
    );
    let e = start_error(Setup {
        runtime_config: "[sqlite_database.x]\npath = \"x.db\"\n",
        ..Setup::default()
    })
    .await;
    assert!(e.contains("type"), "{e}");
}

#[tokio::test]
async fn a_configured_path_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nested/folder/orders.db");
    let config = format!(
        "[sqlite_database.orders]\ntype = \"spin\"\npath = {:?}\n",
        file.display().to_string()
    );
    let app = App::start(Setup {
        components: &[("c", &["orders"])],
        runtime_config: &config,
        ..Setup::default()
    })
    .await
    .unwrap();
    let conn = app.instance("c").open("orders").await.unwrap();
    run(&conn, "CREATE TABLE orders (id INTEGER)").await;
    assert!(file_has_table(&file, "orders"));
    let described = app.databases.describe();
    assert!(
        described.contains(&format!("`orders` in {}", file.display())),
        "{described}"
    );
    assert!(described.contains("`default` in "), "{described}");
}

#[tokio::test]
async fn a_configured_default_replaces_the_state_directory_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("main.db");
    let config = format!(
        "[sqlite_database.default]\ntype = \"spin\"\npath = {:?}\n",
        file.display().to_string()
    );
    let app = App::with_config(&config).await;
    run(&app.open().await, "CREATE TABLE here (x INTEGER)").await;
    assert!(file_has_table(&file, "here"));
    assert!(!app.path("state/sqlite/default.db").exists());
}

#[tokio::test]
async fn a_relative_path_resolves_from_the_base_directory() {
    // `spindle up` passes its working directory, as Spin resolves them.
    let base = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let section: toml::Value =
        toml::from_str("[rel]\ntype = \"spin\"\npath = \"data/rel.db\"\n").unwrap();
    let dbs = Databases::from_config(Some(&section), state.path(), base.path(), limits()).unwrap();
    let rel = dbs.get("rel").unwrap();
    assert_eq!(
        rel.location(),
        &Location::File(base.path().join("data/rel.db"))
    );
    let conn = rel.connect().await.unwrap();
    run(&conn, "CREATE TABLE r (x INTEGER)").await;
    assert!(file_has_table(&base.path().join("data/rel.db"), "r"));
    assert_eq!(
        dbs.get("default").unwrap().location(),
        &Location::File(state.path().join("sqlite/default.db"))
    );
}

#[tokio::test]
async fn ungranted_and_unknown_labels_are_refused() {
    let app = App::start(Setup {
        components: &[("c", &["default"]), ("nothing", &[])],
        runtime_config: "[sqlite_database.other]\ntype = \"spin\"\n",
        ..Setup::default()
    })
    .await
    .unwrap();
    let mut c = app.instance("c");
    // Configured but not granted to c; not configured at all: both denied
    // (an ungranted name says nothing about whether it exists).
    assert!(matches!(c.open("other").await, Err(Error::AccessDenied)));
    assert!(matches!(c.open("nope").await, Err(Error::AccessDenied)));
    assert!(matches!(
        app.instance("nothing").open("default").await,
        Err(Error::AccessDenied)
    ));
    // Granted but named by no database.
    let mut odd = SqliteState::new("odd", app.databases.clone(), &["ghost".to_string()]);
    assert!(matches!(
        odd.open("ghost").await,
        Err(Error::NoSuchDatabase)
    ));
    assert!(c.open("default").await.is_ok());
}

#[tokio::test]
async fn a_granted_label_without_a_database_stops_start_up() {
    let e = start_error(Setup {
        components: &[("api", &["default", "cache"]), ("web", &["default"])],
        ..Setup::default()
    })
    .await;
    assert!(e.contains("component `api`"), "{e}");
    assert!(e.contains("`cache`"), "{e}");
    assert!(e.contains("[sqlite_database.cache]"), "{e}");
    assert!(!e.contains("component `web`"), "{e}");
    // Configured, it starts.
    App::start(Setup {
        components: &[("api", &["default", "cache"])],
        runtime_config: "[sqlite_database.cache]\ntype = \"spin\"\n",
        ..Setup::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn grants_are_validated_and_imports_name_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
    let path = dir.path().join("spin.toml");
    let head = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";
    std::fs::write(
        &path,
        format!("{head}[component.c]\nsource = \"a.wasm\"\nsqlite_databases = [\"\"]\n"),
    )
    .unwrap();
    let e = registry::grants(&Manifest::load(&path).unwrap())
        .err()
        .unwrap();
    assert_eq!(e.key, "component.c.sqlite_databases[0]");
    std::fs::write(
        &path,
        format!("{head}[component.c]\nsource = \"a.wasm\"\nsqlite_databases = \"default\"\n"),
    )
    .unwrap();
    let e = registry::grants(&Manifest::load(&path).unwrap())
        .err()
        .unwrap();
    assert_eq!(e.key, "component.c.sqlite_databases");
    std::fs::write(
        &path,
        format!("{head}[component.c]\nsource = \"a.wasm\"\n[component.d]\nsource = \"a.wasm\"\nsqlite_databases = [\"default\"]\n"),
    )
    .unwrap();
    let grants = registry::grants(&Manifest::load(&path).unwrap()).unwrap();
    let imports = [
        "spin:sqlite/sqlite@3.0.0".to_string(),
        "spin:sqlite/sqlite@3.1.0".to_string(),
        "fermyon:spin/sqlite@2.0.0".to_string(),
        "fermyon:spin/key-value@2.0.0".to_string(),
    ];
    let need = "(grant: sqlite_databases = [\"default\"])";
    let missing = grants["c"].ungranted(&imports[..3]);
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(missing.iter().all(|m| m.ends_with(need)), "{missing:?}");
    assert!(grants["d"].ungranted(&imports[..3]).is_empty());
    assert!(grants["c"].granted().iter().all(|n| *n != "spin:sqlite"));
    assert!(grants["d"].granted().contains(&"spin:sqlite"));
}

#[tokio::test]
async fn statements_cannot_reach_outside_the_database() {
    let app = App::with_config("").await;
    let conn = app.open().await;
    let outside = app.path("outside.db");
    rusqlite::Connection::open(&outside)
        .unwrap()
        .execute_batch("CREATE TABLE secret (x TEXT)")
        .unwrap();
    let copy = app.path("copy.db");
    for sql in [
        format!("ATTACH DATABASE '{}' AS o", outside.display()),
        format!("ATTACH DATABASE 'file:{}?mode=ro' AS o", outside.display()),
        format!("VACUUM INTO '{}'", copy.display()),
        "PRAGMA temp_store_directory = '/nonexistent'".into(),
        "PRAGMA hard_heap_limit = 1".into(),
        "PRAGMA soft_heap_limit = 1".into(),
    ] {
        let m = io_message(conn.execute(sql.clone(), Vec::new()).await);
        assert!(m.contains("may not ATTACH files"), "{sql}: {m}");
    }
    assert!(!copy.exists());
    // A private temporary or in-memory database, and ordinary pragmas, are fine.
    run(&conn, "ATTACH DATABASE ':memory:' AS scratch").await;
    run(&conn, "CREATE TABLE scratch.t (x INTEGER)").await;
    run(&conn, "PRAGMA foreign_keys = ON").await;
    assert_eq!(scalar(&conn, "PRAGMA foreign_keys").await, 1);
    run(&conn, "PRAGMA user_version = 3").await;
    assert_eq!(scalar(&conn, "PRAGMA user_version").await, 3);
}

#[tokio::test]
async fn allow_attach_file_lets_statements_attach_files() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE shared (x INTEGER); INSERT INTO shared VALUES (5)")
        .unwrap();
    let config = format!(
        "[sqlite_database.default]\ntype = \"spin\"\npath = {:?}\nallow_attach_file = true\n",
        dir.path().join("main.db").display().to_string()
    );
    let app = App::with_config(&config).await;
    let conn = app.open().await;
    run(
        &conn,
        &format!("ATTACH DATABASE '{}' AS o", other.display()),
    )
    .await;
    assert_eq!(scalar(&conn, "SELECT x FROM o.shared").await, 5);
    // Process-wide pragmas stay refused.
    let m = io_message(
        conn.execute("PRAGMA hard_heap_limit = 1".into(), Vec::new())
            .await,
    );
    assert!(m.contains("may not ATTACH files"), "{m}");
}

#[tokio::test]
async fn databases_are_shared_between_components_granted_the_label() {
    let app = App::start(Setup {
        components: &[("writer", &["default"]), ("reader", &["default"])],
        ..Setup::default()
    })
    .await
    .unwrap();
    let w = app.instance("writer").open("default").await.unwrap();
    run(&w, "CREATE TABLE t (x INTEGER)").await;
    run(&w, "INSERT INTO t VALUES (9)").await;
    let r = app.instance("reader").open("default").await.unwrap();
    assert_eq!(scalar(&r, "SELECT x FROM t").await, 9);
}

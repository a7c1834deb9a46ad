//! `--sqlite` flags: run in order at start-up, as `spin up --sqlite` runs them.

use super::{App, Setup, scalar};

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn start_with(flags: &[String], runtime_config: &str) -> anyhow::Result<App> {
    App::start(Setup {
        components: &[("c", &["default"])],
        runtime_config,
        flags,
    })
    .await
}

#[tokio::test]
async fn statements_and_files_run_in_order_against_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.sql");
    std::fs::write(
        &file,
        "-- several statements in one file\nINSERT INTO t VALUES (2);\nINSERT INTO t VALUES (3);\n",
    )
    .unwrap();
    let app = start_with(
        &flags(&[
            "CREATE TABLE t (x INTEGER)",
            "INSERT INTO t VALUES (1)",
            &format!("@{}", file.display()),
            "UPDATE t SET x = x * 10 WHERE x = 3",
        ]),
        "",
    )
    .await
    .unwrap();
    let conn = app.open().await;
    assert_eq!(scalar(&conn, "SELECT sum(x) FROM t").await, 1 + 2 + 30);
}

#[tokio::test]
async fn a_file_may_name_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.sql");
    std::fs::write(
        &file,
        "CREATE TABLE c (x INTEGER); INSERT INTO c VALUES (4);",
    )
    .unwrap();
    let app = App::start(Setup {
        components: &[("c", &["default", "cache"])],
        runtime_config: "[sqlite_database.cache]\ntype = \"spin\"\n",
        flags: &flags(&[&format!("@{}:cache", file.display())]),
    })
    .await
    .unwrap();
    let conn = app.instance("c").open("cache").await.unwrap();
    assert_eq!(scalar(&conn, "SELECT x FROM c").await, 4);
    // A label that names no database stops start-up.
    let e = start_with(&flags(&[&format!("@{}:nope", file.display())]), "")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`nope`"), "{e}");
}

#[tokio::test]
async fn a_failing_statement_stops_start_up_naming_it() {
    let e = start_with(
        &flags(&[
            "CREATE TABLE t (x INTEGER)",
            "INSERT INTO nowhere VALUES (1)",
            "CREATE TABLE later (x)",
        ]),
        "",
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("'INSERT INTO nowhere VALUES (1)'"), "{e}");
    assert!(e.contains("no such table: nowhere"), "{e}");
    // One flag is one statement, as in Spin.
    let e = start_with(&flags(&["CREATE TABLE a (x); CREATE TABLE b (x)"]), "")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("Multiple statements"), "{e}");
}

#[tokio::test]
async fn a_failing_file_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.sql");
    std::fs::write(&file, "CREATE TABLE ok (x);\nCREATE TABEL broken (x);\n").unwrap();
    let flag = format!("@{}", file.display());
    let e = start_with(&flags(&[&flag]), "")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&flag), "{e}");
    assert!(e.contains("syntax error"), "{e}");
    let missing = format!("@{}", dir.path().join("missing.sql").display());
    let e = start_with(&flags(&[&missing]), "").await.err().unwrap();
    assert!(format!("{e:#}").contains("cannot read"), "{e:#}");
}

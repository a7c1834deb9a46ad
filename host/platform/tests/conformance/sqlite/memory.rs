//! `[sqlite_database.default] type = "spin"` with no `path`: a database in
//! memory, shared by every connection, for the life of the process.

use super::{App, run, scalar};

every_behaviour!(|| App::with_config("[sqlite_database.default]\ntype = \"spin\"\n"));

#[tokio::test]
async fn no_path_keeps_the_database_in_memory_only() {
    let app = App::with_config("[sqlite_database.default]\ntype = \"spin\"\n").await;
    let conn = app.open().await;
    run(&conn, "CREATE TABLE t (x INTEGER)").await;
    run(&conn, "INSERT INTO t VALUES (3)").await;
    drop(conn);
    // Every connection gone, the data is still there.
    assert_eq!(scalar(&app.open().await, "SELECT x FROM t").await, 3);
    assert!(!app.path("state/sqlite").exists(), "a file was made");
    assert_eq!(app.databases.describe(), "`default` in memory");
    // Another application (another backend) has a database of its own.
    let other = App::with_config("[sqlite_database.default]\ntype = \"spin\"\n").await;
    let m = super::io_message(
        other
            .open()
            .await
            .execute("SELECT x FROM t".into(), Vec::new())
            .await,
    );
    assert!(m.contains("no such table"), "{m}");
}

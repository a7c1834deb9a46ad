//! `default` with no runtime config: a file under the state directory.

use super::{App, Setup, file_has_table, run, scalar};

every_behaviour!(|| App::with_config(""));

#[tokio::test]
async fn default_is_a_file_in_the_state_directory_and_survives_a_restart() {
    let app = App::with_config("").await;
    let conn = app.open().await;
    run(&conn, "CREATE TABLE kept (x INTEGER)").await;
    run(&conn, "INSERT INTO kept VALUES (7)").await;
    let file = app.path("state/sqlite/default.db");
    assert!(file_has_table(&file, "kept"));
    assert!(
        app.databases
            .describe()
            .contains(&file.display().to_string())
    );
    drop(conn);
    // The next start on the same state directory sees it.
    let App { dir, .. } = app;
    let app = App::start_in(
        dir,
        Setup {
            components: &[("c", &["default"])],
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(scalar(&app.open().await, "SELECT x FROM kept").await, 7);
}

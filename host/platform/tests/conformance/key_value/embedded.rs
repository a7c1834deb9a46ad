//! The embedded store: every shared behaviour, and what only it has: data
//! that outlives the process, two processes on one file, and `spin` stores
//! at paths of their own.

use std::time::Duration;

use super::backend::{Backend, build};

every_behaviour!(Backend::embedded);

const CHILD_DIR_VAR: &str = "SPINDLE_TEST_KV_CHILD_DIR";
const ROUNDS: i64 = 200;

#[tokio::test]
async fn data_outlives_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let stores = build(dir.path(), "", &[]).await.unwrap();
    let store = stores.store("default").unwrap();
    store
        .set("kept", b"across restarts".to_vec())
        .await
        .unwrap();
    store.increment("count", 3).await.unwrap();
    drop((store, stores));
    assert!(
        dir.path().join("key-value/sqlite_key_value.db").exists(),
        "the default store lives in the state directory"
    );
    let again = build(dir.path(), "", &[]).await.unwrap();
    let store = again.store("default").unwrap();
    assert_eq!(
        store.get("kept").await.unwrap(),
        Some(b"across restarts".to_vec())
    );
    assert_eq!(store.increment("count", 1).await.unwrap(), 4);
}

#[tokio::test]
async fn nothing_is_created_until_a_store_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let stores = build(dir.path(), "", &[]).await.unwrap();
    assert!(!dir.path().join("key-value").exists());
    stores.store("default").unwrap().exists("x").await.unwrap();
    assert!(dir.path().join("key-value").exists());
}

/// Not a test on its own: the child process of `two_processes_share_a_file`.
#[test]
fn increment_child_helper() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let path = std::path::Path::new(&dir).join("child");
        std::fs::create_dir_all(&path).unwrap();
        let config = format!(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
            std::path::Path::new(&dir).join("shared.db").display()
        );
        let stores = build(&path, &config, &[]).await.unwrap();
        let store = stores.store("default").unwrap();
        for _ in 0..ROUNDS {
            store.increment("n", 1).await.unwrap();
            store.set("child", b"here".to_vec()).await.unwrap();
        }
    });
}

/// What the convert worker would do if it opened the same file: another
/// process's increments interleave with ours and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("parent");
    std::fs::create_dir_all(&mine).unwrap();
    let config = format!(
        "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
        dir.path().join("shared.db").display()
    );
    let stores = build(&mine, &config, &[]).await.unwrap();
    let store = stores.store("default").unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "key_value::embedded::increment_child_helper",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child process");
    for _ in 0..ROUNDS {
        store.increment("n", 1).await.unwrap();
    }
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("the child finished")
        .unwrap();
    assert!(status.success(), "child: {status}");
    assert_eq!(store.get("child").await.unwrap(), Some(b"here".to_vec()));
    assert_eq!(store.increment("n", 0).await.unwrap(), 2 * ROUNDS);
}

#[tokio::test]
async fn spin_stores_keep_to_their_labels_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[key_value_store.cache]\ntype = \"spin\"\npath = \"data/cache.db\"\n\
                  [key_value_store.sessions]\ntype = \"spin\"\n";
    let stores = build(dir.path(), config, &[]).await.unwrap();
    let (default, cache, sessions) = (
        stores.store("default").unwrap(),
        stores.store("cache").unwrap(),
        stores.store("sessions").unwrap(),
    );
    default.set("k", b"default".to_vec()).await.unwrap();
    cache.set("k", b"cache".to_vec()).await.unwrap();
    sessions.set("k", b"sessions".to_vec()).await.unwrap();
    // A relative path starts at the runtime config's folder.
    assert!(dir.path().join("data/cache.db").exists());
    // `sessions` shares the default file, each label its own keys.
    assert_eq!(default.get("k").await.unwrap(), Some(b"default".to_vec()));
    assert_eq!(cache.get("k").await.unwrap(), Some(b"cache".to_vec()));
    assert_eq!(sessions.get("k").await.unwrap(), Some(b"sessions".to_vec()));
    assert_eq!(sessions.keys().await.unwrap(), ["k"]);
    sessions.delete("k").await.unwrap();
    assert_eq!(default.get("k").await.unwrap(), Some(b"default".to_vec()));
    let shown = stores.describe();
    assert!(shown.contains("`cache` is SQLite file"), "{shown}");
    assert!(shown.contains("data/cache.db"), "{shown}");
}

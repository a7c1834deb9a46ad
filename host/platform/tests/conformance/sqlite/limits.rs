//! `[limits]` for SQLite: result size (and the largest value), the busy
//! timeout, connections per instance; and that SQLite's waits never hold
//! up the async runtime.

use super::{App, io_message, run, scalar};
use spindle_platform::capabilities::sqlite::Value;
use spindle_platform::runtime_config::RuntimeConfig;
use std::time::{Duration, Instant};

const KIB: usize = 1024;

#[tokio::test]
async fn results_over_the_limit_fail_with_a_clear_error() {
    let app = App::with_config("[limits]\nsqlite_max_result_mb = 1\n").await;
    let conn = app.open().await;
    run(&conn, "CREATE TABLE big (b BLOB)").await;
    for _ in 0..3 {
        conn.execute(
            "INSERT INTO big VALUES (?)".into(),
            vec![Value::Blob(vec![7; 400 * KIB])],
        )
        .await
        .unwrap();
    }
    // Two rows fit, three do not.
    let two = run(&conn, "SELECT b FROM big LIMIT 2").await;
    assert_eq!(two.rows.len(), 2);
    let m = io_message(conn.execute("SELECT b FROM big".into(), Vec::new()).await);
    assert!(m.contains("exceeds limit of 1048576 bytes"), "{m}");
    assert!(m.contains("sqlite_max_result_mb"), "{m}");
    // Streamed, the limit is per row: all three arrive...
    let mut stream = conn
        .execute_stream("SELECT b FROM big".into(), Vec::new())
        .await
        .unwrap();
    assert_eq!(super::drain(&mut stream.rows).await.len(), 3);
    stream.done.await.unwrap().unwrap();
    // ...but a row over it does not.
    let m = io_message(
        conn.execute_stream("SELECT a.b, b.b, a.b FROM big a, big b".into(), Vec::new())
            .await
            .map(|s| s.columns),
    );
    assert!(m.contains("exceeds limit"), "{m}");
    // No value larger than the limit is made or stored at all.
    let m = io_message(
        conn.execute("SELECT length(zeroblob(2000000))".into(), Vec::new())
            .await,
    );
    assert!(
        m.contains("too big") && m.contains("sqlite_max_result_mb"),
        "{m}"
    );
    let m = io_message(
        conn.execute(
            "INSERT INTO big VALUES (?)".into(),
            vec![Value::Blob(vec![0; 2 * 1024 * KIB])],
        )
        .await,
    );
    assert!(m.contains("too big"), "{m}");
    assert_eq!(scalar(&conn, "SELECT count(*) FROM big").await, 3);
}

#[tokio::test]
async fn a_locked_database_fails_after_the_busy_timeout() {
    let app = App::with_config("[limits]\nsqlite_busy_timeout_secs = 0.3\n").await;
    let a = app.open().await;
    let b = app.open().await;
    run(&a, "CREATE TABLE t (x INTEGER)").await;
    // A holds the write lock across calls.
    run(&a, "BEGIN IMMEDIATE").await;
    run(&a, "INSERT INTO t VALUES (1)").await;
    let t0 = Instant::now();
    let m = io_message(
        b.execute("INSERT INTO t VALUES (2)".into(), Vec::new())
            .await,
    );
    let waited = t0.elapsed();
    assert!(m.contains("database is locked"), "{m}");
    assert!(m.contains("sqlite_busy_timeout_secs"), "{m}");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // Readers still read (WAL) while the writer holds its lock, new
    // connections included.
    assert_eq!(scalar(&b, "SELECT count(*) FROM t").await, 0);
    let t0 = Instant::now();
    let c = app.open().await;
    assert_eq!(scalar(&c, "SELECT count(*) FROM t").await, 0);
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    run(&a, "COMMIT").await;
    run(&b, "INSERT INTO t VALUES (2)").await;
    assert_eq!(scalar(&b, "SELECT count(*) FROM t").await, 2);
}

#[tokio::test]
async fn connections_per_instance_are_capped() {
    let app = App::with_config("[limits]\nsqlite_connections_per_instance = 2\n").await;
    let mut instance = app.instance("c");
    let first = instance.open("default").await.unwrap();
    let _second = instance.open("default").await.unwrap();
    let m = io_message(instance.open("default").await.map(|_| ()));
    assert!(m.contains("too many connections"), "{m}");
    assert!(m.contains("sqlite_connections_per_instance"), "{m}");
    // Another instance has its own count.
    let mut other = app.instance("c");
    other.open("default").await.unwrap();
    // Closing one makes room.
    instance.close(first);
    instance.open("default").await.unwrap();
    // A denied open takes no slot.
    let mut fresh = app.instance("c");
    for _ in 0..3 {
        assert!(fresh.open("secret").await.is_err());
    }
    fresh.open("default").await.unwrap();
    fresh.open("default").await.unwrap();
}

#[test]
fn limits_are_validated_when_the_runtime_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.toml");
    for (text, expect) in [
        ("[limits]\nsqlite_max_result_mb = 0\n", "greater than zero"),
        (
            "[limits]\nsqlite_connections_per_instance = 0\n",
            "greater than zero",
        ),
        (
            "[limits]\nsqlite_busy_timeout_secs = -1\n",
            "sqlite_busy_timeout_secs",
        ),
        ("[limits]\nsqlite_busy_timeout = 5\n", "sqlite_busy_timeout"),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = RuntimeConfig::load(&path).err().unwrap().to_string();
        assert!(e.contains(expect), "{text}: {e}");
    }
    std::fs::write(
        &path,
        "[limits]\nsqlite_max_result_mb = 64\nsqlite_busy_timeout_secs = 0\nsqlite_connections_per_instance = 1\n",
    )
    .unwrap();
    let limits = RuntimeConfig::load(&path).unwrap().limits;
    assert_eq!(limits.sqlite_max_result_bytes(), 64 << 20);
    let defaults = RuntimeConfig::default().limits;
    assert_eq!(defaults.sqlite_max_result_mb, 16);
    assert_eq!(defaults.sqlite_busy_timeout_secs, 5.0);
    assert_eq!(defaults.sqlite_connections_per_instance, 16);
}

/// On a single-threaded runtime, a statement waiting on a lock (SQLite
/// sleeps in its busy handler) leaves the runtime free to run other tasks.
#[tokio::test(flavor = "current_thread")]
async fn waiting_statements_do_not_block_the_runtime() {
    let app = App::with_config("[limits]\nsqlite_busy_timeout_secs = 1\n").await;
    let a = app.open().await;
    let b = app.open().await;
    run(&a, "CREATE TABLE t (x INTEGER)").await;
    run(&a, "BEGIN IMMEDIATE").await;
    let blocked = b.execute("INSERT INTO t VALUES (1)".into(), Vec::new());
    let mut ticks = 0u32;
    let counting = async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
    };
    let result = tokio::select! {
        r = blocked => r,
        () = counting => unreachable!(),
    };
    assert!(io_message(result).contains("database is locked"));
    // About 100 ticks fit in the 1 s wait; a blocked runtime gets none.
    assert!(ticks >= 30, "only {ticks} ticks while SQLite waited");
    run(&a, "ROLLBACK").await;
}

//! What a component's SQL does, written once for every kind of database.

use super::{App, drain, io_message, run, scalar};
use spindle_platform::capabilities::sqlite::{RowResult, Value};
use std::time::Duration;

fn row(values: Vec<Value>) -> RowResult {
    RowResult { values }
}

pub async fn create_insert_select(app: &App) {
    let conn = app.open().await;
    let created = run(
        &conn,
        "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER)",
    )
    .await;
    assert!(created.columns.is_empty() && created.rows.is_empty());
    for (title, done) in [("write tests", 1), ("ship", 0)] {
        let inserted = conn
            .execute(
                "INSERT INTO todos (title, done) VALUES (?, ?)".into(),
                vec![Value::Text(title.into()), Value::Integer(done)],
            )
            .await
            .unwrap();
        assert!(inserted.rows.is_empty());
    }
    let result = run(&conn, "SELECT id, title, done FROM todos ORDER BY id").await;
    assert_eq!(result.columns, ["id", "title", "done"]);
    assert_eq!(
        result.rows,
        [
            row(vec![
                Value::Integer(1),
                Value::Text("write tests".into()),
                Value::Integer(1)
            ]),
            row(vec![
                Value::Integer(2),
                Value::Text("ship".into()),
                Value::Integer(0)
            ]),
        ]
    );
    // Column names are the query's, aliases included.
    let result = run(&conn, "SELECT count(*) AS n, max(id) FROM todos").await;
    assert_eq!(result.columns, ["n", "max(id)"]);
}

pub async fn every_value_type_round_trips(app: &App) {
    let conn = app.open().await;
    run(&conn, "CREATE TABLE v (x)").await;
    let values = [
        Value::Integer(0),
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Real(1.5),
        Value::Real(-0.000_123),
        Value::Real(f64::MAX),
        Value::Real(f64::INFINITY),
        Value::Text(String::new()),
        Value::Text("héllo, 世界 \u{1F600} 'quoted' \"and\" \\ \0 nul".into()),
        Value::Blob(Vec::new()),
        Value::Blob((0..=255).collect()),
        Value::Null,
    ];
    for v in &values {
        conn.execute("INSERT INTO v (x) VALUES (?)".into(), vec![v.clone()])
            .await
            .unwrap();
    }
    let result = run(&conn, "SELECT x, typeof(x) FROM v ORDER BY rowid").await;
    let types = [
        "integer", "integer", "integer", "real", "real", "real", "real", "text", "text", "blob",
        "blob", "null",
    ];
    assert_eq!(result.rows.len(), values.len());
    for ((got, want), ty) in result.rows.iter().zip(&values).zip(types) {
        assert_eq!(&got.values[0], want);
        assert_eq!(got.values[1], Value::Text(ty.into()), "{want:?}");
    }
    // Values SQLite computes map the same way.
    let result = run(&conn, "SELECT 7, 2.5, 'x', x'00ff', NULL").await;
    assert_eq!(
        result.rows,
        [row(vec![
            Value::Integer(7),
            Value::Real(2.5),
            Value::Text("x".into()),
            Value::Blob(vec![0, 255]),
            Value::Null,
        ])]
    );
}

pub async fn parameters_are_bound_never_spliced(app: &App) {
    let conn = app.open().await;
    run(&conn, "CREATE TABLE users (name TEXT)").await;
    let evil = "x'); DROP TABLE users; --";
    conn.execute(
        "INSERT INTO users (name) VALUES (?)".into(),
        vec![Value::Text(evil.into())],
    )
    .await
    .unwrap();
    let found = conn
        .execute(
            "SELECT name FROM users WHERE name = ?".into(),
            vec![Value::Text(evil.into())],
        )
        .await
        .unwrap();
    assert_eq!(found.rows, [row(vec![Value::Text(evil.into())])]);
    // Numbered parameters, reused.
    let result = conn
        .execute(
            "SELECT ?2, ?1, ?2".into(),
            vec![Value::Integer(1), Value::Text("two".into())],
        )
        .await
        .unwrap();
    assert_eq!(
        result.rows,
        [row(vec![
            Value::Text("two".into()),
            Value::Integer(1),
            Value::Text("two".into())
        ])]
    );
    // A wrong count is an error, not a guess.
    let m = io_message(
        conn.execute("SELECT ?, ?".into(), vec![Value::Integer(1)])
            .await,
    );
    assert!(m.contains("parameters"), "{m}");
    assert_eq!(scalar(&conn, "SELECT count(*) FROM users").await, 1);
}

pub async fn last_insert_rowid_and_changes_are_per_connection(app: &App) {
    let a = app.open().await;
    let b = app.open().await;
    assert_eq!(a.last_insert_rowid().await.unwrap(), 0);
    assert_eq!(a.changes().await.unwrap(), 0);
    run(&a, "CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER)").await;
    run(&a, "INSERT INTO t (id, x) VALUES (41, 1)").await;
    run(&a, "INSERT INTO t (x) VALUES (2)").await;
    assert_eq!(a.last_insert_rowid().await.unwrap(), 42);
    assert_eq!(a.changes().await.unwrap(), 1);
    // The other connection has inserted nothing yet.
    assert_eq!(b.last_insert_rowid().await.unwrap(), 0);
    run(&b, "INSERT INTO t (id, x) VALUES (100, 3)").await;
    assert_eq!(b.last_insert_rowid().await.unwrap(), 100);
    assert_eq!(a.last_insert_rowid().await.unwrap(), 42);
    run(&b, "UPDATE t SET x = x + 1").await;
    assert_eq!(b.changes().await.unwrap(), 3);
    assert_eq!(a.changes().await.unwrap(), 1);
    run(&a, "DELETE FROM t WHERE x > 2").await;
    assert_eq!(a.changes().await.unwrap(), 2);
    // A SELECT leaves both as they were.
    run(&a, "SELECT * FROM t").await;
    assert_eq!(a.changes().await.unwrap(), 2);
    assert_eq!(a.last_insert_rowid().await.unwrap(), 42);
}

pub async fn one_statement_per_execute(app: &App) {
    let conn = app.open().await;
    run(&conn, "CREATE TABLE t (x INTEGER)").await;
    // As in Spin (rusqlite's prepare), a second statement is refused and
    // nothing runs.
    let m = io_message(
        conn.execute(
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)".into(),
            Vec::new(),
        )
        .await,
    );
    assert!(m.contains("Multiple statements"), "{m}");
    assert_eq!(scalar(&conn, "SELECT count(*) FROM t").await, 0);
    // A trailing semicolon, whitespace or comment is one statement.
    run(&conn, "INSERT INTO t VALUES (1);  -- done\n").await;
    assert_eq!(scalar(&conn, "SELECT count(*) FROM t").await, 1);
}

pub async fn errors_carry_sqlite_messages(app: &App) {
    let conn = app.open().await;
    let m = io_message(conn.execute("SELEKT 1".into(), Vec::new()).await);
    assert!(m.contains("syntax error"), "{m}");
    let m = io_message(
        conn.execute("SELECT * FROM missing".into(), Vec::new())
            .await,
    );
    assert!(m.contains("no such table: missing"), "{m}");
    run(
        &conn,
        "CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    )
    .await;
    run(&conn, "INSERT INTO u VALUES ('a', 1)").await;
    let m = io_message(
        conn.execute("INSERT INTO u VALUES ('a', 2)".into(), Vec::new())
            .await,
    );
    assert!(m.contains("UNIQUE constraint failed: u.k"), "{m}");
    let m = io_message(
        conn.execute("INSERT INTO u (k) VALUES ('b')".into(), Vec::new())
            .await,
    );
    assert!(m.contains("NOT NULL constraint failed: u.n"), "{m}");
    // The connection is fine after errors.
    assert_eq!(scalar(&conn, "SELECT count(*) FROM u").await, 1);
}

pub async fn streamed_rows_arrive_in_order(app: &App) {
    let conn = app.open().await;
    run(&conn, "CREATE TABLE n (i INTEGER, label TEXT)").await;
    run(
        &conn,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000) INSERT INTO n SELECT i, 'row ' || i FROM c",
    )
    .await;
    let mut stream = conn
        .execute_stream(
            "SELECT i, label FROM n WHERE i > ? ORDER BY i".into(),
            vec![Value::Integer(10)],
        )
        .await
        .unwrap();
    assert_eq!(stream.columns, ["i", "label"]);
    let mut seen = 0;
    let mut batches = 0;
    while let Some(batch) = stream.rows.recv().await {
        batches += 1;
        for r in batch {
            let i = 11 + seen;
            assert_eq!(
                r,
                row(vec![Value::Integer(i), Value::Text(format!("row {i}"))])
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 990);
    // Handed over in batches, not a row at a time.
    assert!(batches < 990 / 8, "{batches} batches");
    stream.done.await.unwrap().unwrap();
    // A statement without rows streams none, and has run when it returns.
    let mut insert = conn
        .execute_stream(
            "INSERT INTO n VALUES (?, 'late')".into(),
            vec![Value::Integer(5000)],
        )
        .await
        .unwrap();
    assert!(insert.columns.is_empty());
    assert!(insert.rows.recv().await.is_none());
    insert.done.await.unwrap().unwrap();
    assert_eq!(conn.changes().await.unwrap(), 1);
    assert_eq!(conn.last_insert_rowid().await.unwrap(), 1001);
}

pub async fn streamed_errors_arrive_where_they_happen(app: &App) {
    let conn = app.open().await;
    // Failing at the first step: the call itself fails.
    let e = conn.execute_stream("SELEKT".into(), Vec::new()).await;
    assert!(io_message(e.map(|s| s.columns)).contains("syntax error"));
    run(&conn, "CREATE TABLE u (k INTEGER PRIMARY KEY)").await;
    run(&conn, "INSERT INTO u VALUES (1)").await;
    let e = conn
        .execute_stream("INSERT INTO u VALUES (1)".into(), Vec::new())
        .await;
    assert!(io_message(e.map(|s| s.columns)).contains("UNIQUE constraint failed"));
    // Failing later: the rows so far, then the error through `done`.
    let mut stream = conn
        .execute_stream(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5) SELECT CASE WHEN i < 4 THEN i ELSE abs(i - 4 - 9223372036854775807 - 1) END FROM c".into(),
            Vec::new(),
        )
        .await
        .unwrap();
    let got: Vec<Value> = drain(&mut stream.rows)
        .await
        .into_iter()
        .map(|r| r.values[0].clone())
        .collect();
    assert_eq!(
        got,
        [Value::Integer(1), Value::Integer(2), Value::Integer(3)]
    );
    let m = io_message(stream.done.await.unwrap());
    assert!(m.contains("integer overflow"), "{m}");
}

pub async fn dropping_a_stream_frees_the_connection(app: &App) {
    let conn = app.open().await;
    let endless = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i FROM c";
    // Endless rows: only dropping the stream ends the statement.
    let mut stream = conn
        .execute_stream(endless.into(), Vec::new())
        .await
        .unwrap();
    assert_eq!(
        stream.rows.recv().await.unwrap()[0].values,
        [Value::Integer(1)]
    );
    drop(stream.rows);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.done)
        .await
        .expect("the statement went on after its rows were dropped");
    let next = tokio::time::timeout(Duration::from_secs(5), scalar(&conn, "SELECT 42")).await;
    assert_eq!(next.expect("the connection stayed busy"), 42);
    // An endless statement that yields nothing never gets past its first
    // step; the caller giving up interrupts it.
    let first = tokio::time::timeout(
        Duration::from_millis(200),
        conn.execute_stream(format!("{endless} WHERE i < 0"), Vec::new()),
    )
    .await;
    assert!(first.is_err(), "an endless statement returned");
    let next = tokio::time::timeout(Duration::from_secs(5), scalar(&conn, "SELECT 43")).await;
    assert_eq!(next.expect("the connection stayed busy"), 43);
}

pub async fn connections_share_the_database(app: &App) {
    let a = app.open().await;
    run(&a, "CREATE TABLE t (x INTEGER)").await;
    run(&a, "INSERT INTO t VALUES (1)").await;
    // Another instance of another kind of call sees it at once.
    let b = app.open().await;
    assert_eq!(scalar(&b, "SELECT sum(x) FROM t").await, 1);
    drop(a);
    drop(b);
    let c = app.open().await;
    assert_eq!(scalar(&c, "SELECT sum(x) FROM t").await, 1);
}

pub async fn concurrent_writers_all_land(app: &App) {
    let setup = app.open().await;
    run(&setup, "CREATE TABLE hits (writer INTEGER, n INTEGER)").await;
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let conn = app.open().await;
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                conn.execute(
                    "INSERT INTO hits VALUES (?, ?)".into(),
                    vec![Value::Integer(writer), Value::Integer(n)],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(scalar(&setup, "SELECT count(*) FROM hits").await, 200);
    assert_eq!(
        scalar(&setup, "SELECT count(DISTINCT writer) FROM hits").await,
        4
    );
}

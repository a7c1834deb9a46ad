//! Redis: every shared behaviour when `SPINDLE_TEST_REDIS_URL` is set, the
//! key layout Spin uses, and a server that does not answer.

use std::time::{Duration, Instant};

use spindle_platform::capabilities::key_value::KvError;

use super::backend::{Backend, build, redis_url};

every_behaviour!(Backend::redis);

/// Keys are the component's keys, unprefixed, as Redis strings, whatever
/// the label: what Spin's Redis store writes and reads.
#[tokio::test]
async fn keys_are_laid_out_as_spin_lays_them_out() {
    let Some(b) = Backend::redis("keys_are_laid_out_as_spin_lays_them_out").await else {
        return;
    };
    let url = redis_url().unwrap();
    let key = b.key("layout");
    b.default_store().set(&key, vec![0, 1, 2]).await.unwrap();

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "string");
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, [0, 1, 2]);
    // What another program writes, a component reads.
    let () = redis::cmd("SET")
        .arg(b.key("from-outside"))
        .arg("hi")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        b.default_store().get(&b.key("from-outside")).await.unwrap(),
        Some(b"hi".to_vec())
    );

    // Another label on the same server sees the same keys.
    let config = format!(
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n\
         [key_value_store.other]\ntype = \"redis\"\nurl = \"{url}\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let stores = build(dir.path(), &config, &[]).await.unwrap();
    assert_eq!(
        stores.store("other").unwrap().get(&key).await.unwrap(),
        Some(vec![0, 1, 2])
    );
    stores.ping().await.unwrap();
    b.clean_up().await;
}

/// A server that does not answer: start-up still works (connections are
/// made on first use), readiness says no quickly, and calls fail plainly.
#[tokio::test]
async fn an_unreachable_server_fails_fast_and_plainly() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1; the password must not be shown.
    let config =
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:1\"\n";
    let stores = build(dir.path(), config, &[]).await.unwrap();
    let shown = stores.describe();
    assert!(shown.contains("Redis at redis://"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");

    let started = Instant::now();
    let e = stores.ping().await.unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
    assert!(e.contains("127.0.0.1:1"), "{e}");
    let e = stores.store("default").unwrap().get("k").await.unwrap_err();
    assert!(matches!(e, KvError::Backend { .. }), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

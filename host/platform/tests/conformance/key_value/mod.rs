//! The key-value stores' behaviour, each written once and run on every
//! backend: `key_value::embedded::NAME` on the SQLite file in the state
//! directory, `key_value::redis::NAME` on the Redis server at
//! `SPINDLE_TEST_REDIS_URL` (saying so when it is not set). Each test's
//! keys carry a prefix of its own, so runs sharing a server stay apart.
//! The backend-only tests are in `embedded.rs` and `redis.rs`; labels,
//! grants and the runtime config in `config.rs`; `linking.rs` checks that
//! components importing each interface link against the host.

use std::collections::BTreeSet;

use spindle_platform::capabilities::key_value::{KvError, Store};

use backend::Backend;

/// Small limits, so the limit tests need little data.
const LIMITS: &str = "key_value_max_key_bytes = 64\nkey_value_max_value_bytes = 1024\nkey_value_max_result_bytes = 8192";

/// One test per shared behaviour, on the backend `$backend` makes for a
/// test name (`None`: it cannot run here, and it said so).
macro_rules! every_behaviour {
    ($backend:expr) => {
        every_behaviour!(@ $backend;
            get_set_delete_exists,
            values_are_bytes_and_empty_is_not_missing,
            keys_are_listed_whole_and_streamed,
            batches_answer_in_order,
            increments_count_from_a_missing_key,
            compare_and_swap_notices_a_change,
            concurrent_writers_lose_nothing,
            limits_are_enforced,
            flags_seed_the_default_store,
        );
    };
    (@ $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = ($backend)(stringify!($name)).await else {
                    return;
                };
                super::$name(&backend).await;
                backend.clean_up().await;
            }
        )*
    };
}

mod backend;
mod config;
mod embedded;
mod linking;
mod redis;

async fn get_set_delete_exists(b: &Backend) {
    let store = b.default_store();
    let k = b.key("greeting");
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert!(!store.exists(&k).await.unwrap());
    store.set(&k, b"hello".to_vec()).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(b"hello".to_vec()));
    assert!(store.exists(&k).await.unwrap());
    // Overwrite.
    store.set(&k, b"bye".to_vec()).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(b"bye".to_vec()));
    store.delete(&k).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert!(!store.exists(&k).await.unwrap());
    // Deleting a missing key is not an error.
    store.delete(&k).await.unwrap();
}

async fn values_are_bytes_and_empty_is_not_missing(b: &Backend) {
    let store = b.default_store();
    let every_byte: Vec<u8> = (0..=255).collect();
    store.set(&b.key("bin"), every_byte.clone()).await.unwrap();
    assert_eq!(store.get(&b.key("bin")).await.unwrap(), Some(every_byte));
    store.set(&b.key("empty"), Vec::new()).await.unwrap();
    assert_eq!(store.get(&b.key("empty")).await.unwrap(), Some(Vec::new()));
    assert!(store.exists(&b.key("empty")).await.unwrap());
    assert_eq!(store.get(&b.key("missing")).await.unwrap(), None);
    // Keys are any UTF-8, the empty string's suffix included.
    for name in ["", "ünï/cödé ✓", "a b\tc", "x:y:z"] {
        store
            .set(&b.key(name), name.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.get(&b.key(name)).await.unwrap(),
            Some(name.as_bytes().to_vec())
        );
    }
}

async fn keys_are_listed_whole_and_streamed(b: &Backend) {
    let store = b.default_store();
    // More than a page on either backend.
    let names: BTreeSet<String> = (0..1200).map(|i| format!("k{i:04}")).collect();
    let pairs = names
        .iter()
        .map(|n| (b.key(n), n.as_bytes().to_vec()))
        .collect();
    store.set_many(pairs).await.unwrap();
    store.set(&b.key("gone"), b"x".to_vec()).await.unwrap();
    store.delete(&b.key("gone")).await.unwrap();

    let listed = b.mine(store.keys().await.unwrap());
    assert_eq!(listed, names.iter().cloned().collect::<Vec<_>>());

    let (mut pages, done) = store.key_pages();
    let mut streamed = Vec::new();
    while let Some(page) = pages.recv().await {
        assert!(!page.is_empty(), "empty pages are not sent");
        streamed.extend(page);
    }
    done.await.unwrap().unwrap();
    let streamed_set: BTreeSet<String> = b.mine(streamed).into_iter().collect();
    assert_eq!(streamed_set, names);

    // A reader that stops early stops the listing.
    let (pages, done) = store.key_pages();
    drop(pages);
    assert!(done.await.is_err(), "no outcome for a listing nobody reads");
}

async fn batches_answer_in_order(b: &Backend) {
    let store = b.default_store();
    store
        .set_many(vec![
            (b.key("a"), b"1".to_vec()),
            (b.key("b"), b"2".to_vec()),
            (b.key("c"), Vec::new()),
        ])
        .await
        .unwrap();
    let asked = vec![b.key("c"), b.key("nope"), b.key("a"), b.key("b")];
    let got = store.get_many(asked.clone()).await.unwrap();
    assert_eq!(
        got,
        vec![
            (asked[0].clone(), Some(Vec::new())),
            (asked[1].clone(), None),
            (asked[2].clone(), Some(b"1".to_vec())),
            (asked[3].clone(), Some(b"2".to_vec())),
        ]
    );
    assert!(store.get_many(Vec::new()).await.unwrap().is_empty());
    store
        .delete_many(vec![b.key("a"), b.key("nope"), b.key("c")])
        .await
        .unwrap();
    assert_eq!(b.mine(store.keys().await.unwrap()), ["b"]);
}

async fn increments_count_from_a_missing_key(b: &Backend) {
    let store = b.default_store();
    let k = b.key("counter");
    assert_eq!(store.increment(&k, 10).await.unwrap(), 10);
    assert_eq!(store.increment(&k, 5).await.unwrap(), 15);
    assert_eq!(store.increment(&k, -20).await.unwrap(), -5);
    // Kept as decimal text on every backend.
    assert_eq!(store.get(&k).await.unwrap(), Some(b"-5".to_vec()));
    store.set(&k, b"41".to_vec()).await.unwrap();
    assert_eq!(store.increment(&k, 1).await.unwrap(), 42);
    store.set(&k, b"forty".to_vec()).await.unwrap();
    let e = store.increment(&k, 1).await.unwrap_err();
    assert!(matches!(e, KvError::Backend { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot increment"), "{e}");
    assert_eq!(store.get(&k).await.unwrap(), Some(b"forty".to_vec()));
}

async fn compare_and_swap_notices_a_change(b: &Backend) {
    let store = b.default_store();
    let k = b.key("cas");
    // A key that was not set: the swap inserts only while it still is not.
    let absent = store.snapshot(&k).await.unwrap();
    store.set(&k, b"someone".to_vec()).await.unwrap();
    assert!(!store.swap(&k, &absent, b"me".to_vec()).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), Some(b"someone".to_vec()));
    store.delete(&k).await.unwrap();
    assert!(store.swap(&k, &absent, b"me".to_vec()).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), Some(b"me".to_vec()));

    // A value read, changed under the reader, then swapped: refused.
    let (value, seen) = store.current(&k).await.unwrap();
    assert_eq!(value, Some(b"me".to_vec()));
    store.set(&k, b"other".to_vec()).await.unwrap();
    assert!(!store.swap(&k, &seen, b"mine".to_vec()).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), Some(b"other".to_vec()));
    // Read again: now it holds.
    let (_, seen) = store.current(&k).await.unwrap();
    assert!(store.swap(&k, &seen, b"mine".to_vec()).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), Some(b"mine".to_vec()));
    // The same snapshot cannot win twice.
    assert!(!store.swap(&k, &seen, b"again".to_vec()).await.unwrap());
}

/// Increments, compare-and-swap loops and plain writes from many tasks at
/// once: nothing is lost.
async fn concurrent_writers_lose_nothing(b: &Backend) {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let store = b.default_store();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, counter, cas, own) = (
            store.clone(),
            b.key("counter"),
            b.key("cas-counter"),
            b.key(&format!("task{t}")),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                store.increment(&counter, 1).await.unwrap();
                cas_add_one(&store, &cas).await;
                store.set(&own, i.to_string().into_bytes()).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = (TASKS * EACH).to_string().into_bytes();
    assert_eq!(
        store.get(&b.key("counter")).await.unwrap(),
        Some(total.clone())
    );
    assert_eq!(store.get(&b.key("cas-counter")).await.unwrap(), Some(total));
    for t in 0..TASKS {
        let last = (EACH - 1).to_string().into_bytes();
        assert_eq!(
            store.get(&b.key(&format!("task{t}"))).await.unwrap(),
            Some(last)
        );
    }
}

/// Adds one to the decimal at `key` with compare-and-swap, retrying.
async fn cas_add_one(store: &Store, key: &str) {
    loop {
        let (value, seen) = store.current(key).await.unwrap();
        let n: u64 = value.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
        if store
            .swap(key, &seen, (n + 1).to_string().into_bytes())
            .await
            .unwrap()
        {
            return;
        }
    }
}

async fn limits_are_enforced(b: &Backend) {
    let stores = b.rebuild(LIMITS, &[]).await.unwrap();
    let store = stores.store("default").unwrap();
    let limits = stores.limits();
    assert_eq!(
        (
            limits.max_key_bytes,
            limits.max_value_bytes,
            limits.max_result_bytes
        ),
        (64, 1024, 8192)
    );
    // Values up to the limit, not past it.
    store.set(&b.key("v"), vec![7; 1024]).await.unwrap();
    let e = store.set(&b.key("v"), vec![7; 1025]).await.unwrap_err();
    assert!(
        matches!(
            e,
            KvError::TooLarge {
                size: 1025,
                limit: 1024,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("key_value_max_value_bytes"), "{e}");
    assert_eq!(store.get(&b.key("v")).await.unwrap(), Some(vec![7; 1024]));
    let e = store
        .set_many(vec![(b.key("ok"), vec![1]), (b.key("big"), vec![1; 2000])])
        .await
        .unwrap_err();
    assert!(matches!(e, KvError::TooLarge { .. }), "{e:?}");
    assert_eq!(
        store.get(&b.key("ok")).await.unwrap(),
        None,
        "a refused batch sets nothing"
    );

    // Keys: every call checks them.
    let long = b.key(&"k".repeat(64));
    assert!(long.len() > 64);
    for e in [
        store.get(&long).await.unwrap_err(),
        store.set(&long, vec![1]).await.unwrap_err(),
        store.exists(&long).await.unwrap_err(),
        store.delete(&long).await.unwrap_err(),
        store.increment(&long, 1).await.unwrap_err(),
    ] {
        assert!(e.to_string().contains("key_value_max_key_bytes"), "{e}");
    }

    // Answers: 9 values of 1 KiB are over 8 KiB, in a batch or as a list.
    let names: Vec<String> = (0..9).map(|i| b.key(&format!("r{i}"))).collect();
    for n in &names {
        store.set(n, vec![0; 1000]).await.unwrap();
    }
    let e = store.get_many(names.clone()).await.unwrap_err();
    assert!(matches!(e, KvError::ResultTooLarge(8192)), "{e:?}");
    assert!(e.to_string().contains("query result exceeds limit"), "{e}");
    store.get_many(names[..4].to_vec()).await.unwrap();
    // 200 keys of ~50 bytes (plus a String each) are over 8 KiB too.
    let many = (0..200)
        .map(|i| (b.key(&format!("m{i:03}")), Vec::new()))
        .collect();
    store.set_many(many).await.unwrap();
    let e = store.keys().await.unwrap_err();
    assert!(matches!(e, KvError::ResultTooLarge(8192)), "{e:?}");
    // A stream has no total bound: the reader takes keys as it goes.
    let (mut pages, done) = store.key_pages();
    let mut streamed = 0;
    while let Some(page) = pages.recv().await {
        streamed += b.mine(page).len();
    }
    done.await.unwrap().unwrap();
    assert_eq!(streamed, 210, "v, r0-r8 and m000-m199");
}

async fn flags_seed_the_default_store(b: &Backend) {
    let flags = vec![
        format!("{}=one", b.key("a")),
        format!("{}=x=y", b.key("b")),
        format!("{}=", b.key("empty")),
    ];
    let stores = b.rebuild("", &flags).await.unwrap();
    let store = stores.store("default").unwrap();
    assert_eq!(store.get(&b.key("a")).await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(store.get(&b.key("b")).await.unwrap(), Some(b"x=y".to_vec()));
    assert_eq!(store.get(&b.key("empty")).await.unwrap(), Some(Vec::new()));
    // The backend under test sees them too.
    assert_eq!(
        b.default_store().get(&b.key("a")).await.unwrap(),
        Some(b"one".to_vec())
    );
    let e = b
        .rebuild("", &["novalue".to_string()])
        .await
        .err()
        .expect("a flag without `=` is refused");
    assert!(
        e.to_string()
            .contains("--key-value `novalue` is not in the form KEY=VALUE"),
        "{e}"
    );
}

//! The same behaviour on every backend: files on disk, GridFS through the
//! official driver against the in-process MongoDB wire server, and a real
//! `mongod` when `SPINDLE_TEST_MONGODB_URL` is set.

use super::*;
use sha2::{Digest, Sha256};

const SIZE: usize = 5 * 1024 * 1024 + 123;

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 % 251) as u8).collect()
}

/// Sends `data` in 64 KiB pieces, as a guest stream would arrive.
fn feed(data: Vec<u8>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        for piece in data.chunks(64 * 1024) {
            if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn drain(mut rx: ChunkReceiver) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn behaves(store: BlobStore, bucket: &str) {
    let data = content();
    let owner = format!("owner-{}", ObjectId::new());
    let file = NewFile {
        filename: "talk.mp4".into(),
        content_type: Some("video/mp4".into()),
        metadata: meta(&[("owner", &owner), ("state", "queued")]),
    };
    let created = store
        .create(bucket, file, feed(data.clone()))
        .await
        .unwrap();
    assert_eq!(created.length, SIZE as u64);
    assert_eq!(created.filename, "talk.mp4");
    assert_eq!(created.content_type.as_deref(), Some("video/mp4"));
    assert!(created.uploaded_at > 0);

    // Whole file, byte for byte.
    let (info, rx) = store.read(bucket, &created.id, 0, None).await.unwrap();
    assert_eq!(info.id, created.id);
    let back = drain(rx).await.unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));

    // Ranges across chunk boundaries, to the end, and past it.
    for (offset, len) in [(300_000u64, 1_000_000u64), (0, 1), (SIZE as u64 - 10, 100)] {
        let (_, rx) = store
            .read(bucket, &created.id, offset, Some(len))
            .await
            .unwrap();
        let got = drain(rx).await.unwrap();
        let end = (offset + len).min(SIZE as u64) as usize;
        assert_eq!(got, data[offset as usize..end], "range {offset}+{len}");
    }
    assert!(matches!(
        store.read(bucket, &created.id, SIZE as u64 + 1, None).await,
        Err(Error::Invalid(_))
    ));

    // Metadata: update keeps other keys; find by key.
    let updated = store
        .update_metadata(
            bucket,
            &created.id,
            meta(&[("state", "done"), ("mp3", "x")]),
        )
        .await
        .unwrap();
    let m: std::collections::BTreeMap<_, _> = updated.metadata.into_iter().collect();
    assert_eq!(m["owner"], owner);
    assert_eq!(m["state"], "done");
    assert_eq!(m["mp3"], "x");
    assert!(!m.contains_key(CONTENT_TYPE_KEY));
    let found = store.find(bucket, "owner", &owner).await.unwrap();
    assert_eq!(
        found.iter().map(|f| f.id.clone()).collect::<Vec<_>>(),
        vec![created.id.clone()]
    );
    assert!(
        store
            .find(bucket, "owner", "nobody")
            .await
            .unwrap()
            .is_empty()
    );

    // Bad ids and keys are refused, not looked up.
    assert!(matches!(
        store.stat(bucket, "not-an-id").await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store
            .update_metadata(bucket, &created.id, meta(&[("a.b", "x")]))
            .await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store.stat("../etc", &created.id).await,
        Err(Error::Invalid(_))
    ));
    let missing = ObjectId::new().to_hex();
    assert!(matches!(
        store.stat(bucket, &missing).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.read(bucket, &missing, 0, None).await,
        Err(Error::NotFound(_))
    ));

    // An empty file is a file.
    let empty = store
        .create(
            bucket,
            NewFile {
                filename: "empty".into(),
                content_type: None,
                metadata: vec![],
            },
            feed(vec![]),
        )
        .await
        .unwrap();
    assert_eq!(empty.length, 0);
    let (_, rx) = store.read(bucket, &empty.id, 0, None).await.unwrap();
    assert!(drain(rx).await.unwrap().is_empty());

    // Dropping the content keeps the description, metadata included.
    let kept = store
        .create(
            bucket,
            NewFile {
                filename: "record.mp4".into(),
                content_type: Some("video/mp4".into()),
                metadata: meta(&[("owner", &owner), ("state", "done")]),
            },
            feed(content()),
        )
        .await
        .unwrap();
    let emptied = store.drop_content(bucket, &kept.id).await.unwrap();
    assert_eq!(emptied.length, 0);
    let found = store.stat(bucket, &kept.id).await.unwrap();
    assert_eq!((found.length, found.filename.as_str()), (0, "record.mp4"));
    assert!(
        found
            .metadata
            .contains(&("state".to_string(), "done".to_string()))
    );
    let (_, rx) = store.read(bucket, &kept.id, 0, None).await.unwrap();
    assert!(drain(rx).await.unwrap().is_empty());
    store.delete(bucket, &kept.id).await.unwrap();

    // Delete removes it; a second delete says so.
    store.delete(bucket, &created.id).await.unwrap();
    assert!(matches!(
        store.stat(bucket, &created.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.delete(bucket, &created.id).await,
        Err(Error::NotFound(_))
    ));
    store.delete(bucket, &empty.id).await.unwrap();
}

#[tokio::test]
async fn files_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    store.ping().await.unwrap();
    behaves(store, "videos").await;
    // Nothing half-written is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs/videos"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn gridfs_backend_on_the_wire_server() {
    let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let store = BlobStore::connect(Some(&server.url()), Path::new("/nonexistent"))
        .await
        .unwrap();
    store.ping().await.unwrap();
    behaves(store, "videos").await;
}

#[tokio::test]
async fn gridfs_backend_on_a_real_mongod() {
    let Ok(url) = std::env::var("SPINDLE_TEST_MONGODB_URL") else {
        eprintln!("SPINDLE_TEST_MONGODB_URL is not set: the real-mongod GridFS test did not run");
        return;
    };
    let store = BlobStore::connect(Some(&url), Path::new("/nonexistent"))
        .await
        .unwrap();
    behaves(store, "spindle_test_videos").await;
}

#[tokio::test]
async fn an_aborted_upload_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    let (tx, rx) = mpsc::channel(2);
    let task = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create(
                    "videos",
                    NewFile {
                        filename: "x".into(),
                        content_type: None,
                        metadata: vec![],
                    },
                    rx,
                )
                .await
        })
    };
    tx.send(Bytes::from_static(b"partial")).await.unwrap();
    let bucket_dir = dir.path().join("blobs/videos");
    let in_progress = || {
        std::fs::read_dir(&bucket_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    for _ in 0..100 {
        if in_progress() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(in_progress(), 1, "the upload did not start");
    // The caller goes away mid-upload (a trapped guest, a dropped request).
    task.abort();
    let _ = task.await;
    assert_eq!(in_progress(), 0, "a partial upload was left behind");
}

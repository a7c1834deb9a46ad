//! The blob store's behaviour, each written once and run on every backend:
//! `blobs::files::NAME` on files on disk, `blobs::gridfs::NAME` on GridFS
//! through the official driver against the in-process MongoDB wire server,
//! and `blobs::mongod::NAME` on a real `mongod` when
//! `SPINDLE_TEST_MONGODB_URL` is set (saying so when it is not). The
//! backend-only tests are in `files.rs` and `gridfs.rs`.

use std::path::Path;

use bytes::Bytes;
use mongodb::bson::oid::ObjectId;
use sha2::{Digest, Sha256};
use spindle_platform::capabilities::blobs::{
    BlobError, BlobStore, ChunkReceiver, FileInfo, NewFile,
};
use spindle_platform::metrics::Metrics;
use tokio::sync::mpsc;

/// The metadata key under which a file's content type is kept; no caller
/// may set it, and it never shows among a file's metadata.
const CONTENT_TYPE_KEY: &str = "contentType";

/// One test per shared behaviour, on the backend `$backend` makes for a
/// test name (`None`: it cannot run here, and it said so).
macro_rules! every_behaviour {
    ($backend:expr) => {
        every_behaviour!(@ $backend;
            stores_reads_updates_and_deletes,
            claims_are_compare_and_set,
            bytes_are_counted_per_bucket,
        );
    };
    (@ $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(backend) = ($backend)(stringify!($name)).await else {
                    return;
                };
                super::$name(&backend).await;
                backend.assert_nothing_left();
            }
        )*
    };
}

mod files;
mod gridfs;
mod mongod;

/// A blob backend under test: its store, the bucket the behaviours use,
/// and what must live as long as the store.
pub(crate) struct Backend {
    store: BlobStore,
    bucket: &'static str,
    /// The files backend's state directory.
    dir: Option<tempfile::TempDir>,
    /// The wire-protocol server GridFS talks to.
    _server: Option<mongo_wire::ServerHandle>,
}

impl Backend {
    /// Files under a state directory of their own.
    async fn files(_test: &str) -> Option<Backend> {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::connect(None, dir.path()).await.unwrap();
        store.ping().await.unwrap();
        Some(Backend {
            store,
            bucket: "videos",
            dir: Some(dir),
            _server: None,
        })
    }

    /// GridFS on an in-process MongoDB wire-protocol server of its own.
    async fn gridfs(_test: &str) -> Option<Backend> {
        let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let store = BlobStore::connect(Some(&server.url()), Path::new("/nonexistent"))
            .await
            .unwrap();
        store.ping().await.unwrap();
        Some(Backend {
            store,
            bucket: "videos",
            dir: None,
            _server: Some(server),
        })
    }

    /// GridFS on the real `mongod` at `SPINDLE_TEST_MONGODB_URL`; `None`
    /// (after saying so) when it is not set.
    async fn mongod(test: &str) -> Option<Backend> {
        let Ok(url) = std::env::var("SPINDLE_TEST_MONGODB_URL") else {
            eprintln!(
                "SPINDLE_TEST_MONGODB_URL is not set: the real-mongod GridFS variant of `{test}` did not run"
            );
            return None;
        };
        let store = BlobStore::connect(Some(&url), Path::new("/nonexistent"))
            .await
            .unwrap();
        Some(Backend {
            store,
            bucket: "spindle_test_videos",
            dir: None,
            _server: None,
        })
    }

    /// On files: nothing half-written is left behind (every behaviour
    /// deletes what it stored).
    fn assert_nothing_left(&self) {
        if let Some(dir) = &self.dir {
            let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs").join(self.bucket))
                .unwrap()
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}

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

async fn drain(mut rx: ChunkReceiver) -> Result<Vec<u8>, BlobError> {
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

/// Create, read (whole and ranges), update and find metadata, refuse bad
/// input, keep empty files, drop content, delete.
async fn stores_reads_updates_and_deletes(backend: &Backend) {
    let (store, bucket) = (&backend.store, backend.bucket);
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
        Err(BlobError::Invalid(_))
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
    // A value the file no longer has finds nothing, its new one finds it.
    assert!(
        store
            .find(bucket, "state", "queued")
            .await
            .unwrap()
            .iter()
            .all(|f| f.id != created.id)
    );
    assert!(
        store
            .find(bucket, "state", "done")
            .await
            .unwrap()
            .iter()
            .any(|f| f.id == created.id)
    );

    // Bad ids and keys are refused, not looked up.
    assert!(matches!(
        store.stat(bucket, "not-an-id").await,
        Err(BlobError::Invalid(_))
    ));
    assert!(matches!(
        store
            .update_metadata(bucket, &created.id, meta(&[("a.b", "x")]))
            .await,
        Err(BlobError::Invalid(_))
    ));
    assert!(matches!(
        store.stat("../etc", &created.id).await,
        Err(BlobError::Invalid(_))
    ));
    let missing = ObjectId::new().to_hex();
    assert!(matches!(
        store.stat(bucket, &missing).await,
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        store.read(bucket, &missing, 0, None).await,
        Err(BlobError::NotFound { .. })
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
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(bucket, &created.id).await,
        Err(BlobError::NotFound { .. })
    ));
    store.delete(bucket, &empty.id).await.unwrap();
}

/// A stored file with `state = queued` and no `worker`, to claim.
async fn queued_job(store: &BlobStore, bucket: &str) -> FileInfo {
    store
        .create(
            bucket,
            NewFile {
                filename: "job.mp4".into(),
                content_type: None,
                metadata: meta(&[("state", "queued"), ("job_id", &ObjectId::new().to_hex())]),
            },
            feed(b"video".to_vec()),
        )
        .await
        .unwrap()
}

fn metadata_of(info: &FileInfo) -> std::collections::BTreeMap<String, String> {
    info.metadata.iter().cloned().collect()
}

/// Compare-and-set: many concurrent claims of one job, exactly one wins;
/// an absent key as a precondition; a failed precondition changes nothing.
async fn claims_are_compare_and_set(backend: &Backend) {
    let (store, bucket) = (&backend.store, backend.bucket);
    let job = queued_job(store, bucket).await;
    let claimers: Vec<_> = (0..24)
        .map(|i| {
            let (store, bucket, id) = (store.clone(), bucket.to_string(), job.id.clone());
            tokio::spawn(async move {
                let won = store
                    .update_metadata_if(
                        &bucket,
                        &id,
                        vec![
                            ("state".into(), Some("queued".into())),
                            ("worker".into(), None),
                        ],
                        meta(&[("state", "processing"), ("worker", &format!("w{i}"))]),
                    )
                    .await
                    .unwrap();
                won.map(|info| (i, info))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for claimer in claimers {
        winners.extend(claimer.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "{} claims won", winners.len());
    let (winner, claimed) = &winners[0];
    let m = metadata_of(claimed);
    assert_eq!(m["state"], "processing");
    assert_eq!(m["worker"], format!("w{winner}"));
    // What the winner saw is what is stored.
    assert_eq!(metadata_of(&store.stat(bucket, &job.id).await.unwrap()), m);

    // A mismatch changes nothing, neither the keys it would set nor others.
    let before = store.stat(bucket, &job.id).await.unwrap();
    let refused = store
        .update_metadata_if(
            bucket,
            &job.id,
            vec![("state".into(), Some("queued".into()))],
            meta(&[("state", "failed"), ("error", "x")]),
        )
        .await
        .unwrap();
    assert!(refused.is_none());
    assert_eq!(
        metadata_of(&store.stat(bucket, &job.id).await.unwrap()),
        metadata_of(&before)
    );
    // A key expected absent that is present is a mismatch too.
    assert!(
        store
            .update_metadata_if(
                bucket,
                &job.id,
                vec![("worker".into(), None)],
                meta(&[("x", "y")])
            )
            .await
            .unwrap()
            .is_none()
    );

    // An absent key as the only precondition: holds once, then not.
    let first = store
        .update_metadata_if(
            bucket,
            &job.id,
            vec![("mp3_fid".into(), None)],
            meta(&[("mp3_fid", "abc")]),
        )
        .await
        .unwrap()
        .expect("mp3_fid was absent");
    assert_eq!(metadata_of(&first)["mp3_fid"], "abc");
    assert_eq!(metadata_of(&first)["state"], "processing");
    assert!(
        store
            .update_metadata_if(
                bucket,
                &job.id,
                vec![("mp3_fid".into(), None)],
                meta(&[("mp3_fid", "def")]),
            )
            .await
            .unwrap()
            .is_none()
    );
    // The claimed state is what `find` sees (the file index follows CAS too).
    let found = store
        .find(bucket, "worker", &format!("w{winner}"))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        store
            .find(bucket, "mp3_fid", "def")
            .await
            .unwrap()
            .is_empty()
    );

    // A missing file is an error, not a failed precondition; bad keys are refused.
    let missing = ObjectId::new().to_hex();
    assert!(matches!(
        store
            .update_metadata_if(bucket, &missing, vec![], meta(&[("a", "b")]))
            .await,
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .update_metadata_if(bucket, &job.id, vec![("$where".into(), None)], vec![])
            .await,
        Err(BlobError::Invalid(_))
    ));
    store.delete(bucket, &job.id).await.unwrap();
}

/// Bytes are counted once per transfer, per bucket, whichever backend, and
/// the families are on the registry before any traffic.
async fn bytes_are_counted_per_bucket(backend: &Backend) {
    let (store, bucket) = (&backend.store, backend.bucket);
    let metrics = Metrics::new(store.metrics());
    // A declared bucket's series show at 0 before any transfer.
    store.metrics().declare(bucket);
    let text = metrics.encode();
    for family in ["spindle_blob_written_bytes", "spindle_blob_read_bytes"] {
        assert!(text.contains(&format!("# TYPE {family} counter")), "{text}");
        assert!(
            text.contains(&format!("{family}_total{{bucket=\"{bucket}\"}} 0")),
            "{text}"
        );
    }
    let file = store
        .create(
            bucket,
            NewFile {
                filename: "f".into(),
                content_type: None,
                metadata: vec![],
            },
            feed(content()),
        )
        .await
        .unwrap();
    let (_, rx) = store.read(bucket, &file.id, 0, None).await.unwrap();
    drain(rx).await.unwrap();
    let (_, rx) = store.read(bucket, &file.id, 10, Some(1000)).await.unwrap();
    drain(rx).await.unwrap();
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "spindle_blob_written_bytes_total{{bucket=\"{bucket}\"}} {SIZE}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "spindle_blob_read_bytes_total{{bucket=\"{bucket}\"}} {}",
            SIZE + 1000
        )),
        "{text}"
    );
    assert!(!text.contains("bucket=\"mp3s\""), "{text}");
    store.delete(bucket, &file.id).await.unwrap();
}

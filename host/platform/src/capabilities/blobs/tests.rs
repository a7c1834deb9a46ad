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
async fn claims(store: BlobStore, bucket: &str) {
    let job = queued_job(&store, bucket).await;
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

#[tokio::test]
async fn files_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    store.ping().await.unwrap();
    behaves(store.clone(), "videos").await;
    claims(store, "videos").await;
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
    behaves(store.clone(), "videos").await;
    claims(store, "videos").await;
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
    behaves(store.clone(), "spindle_test_videos").await;
    claims(store, "spindle_test_videos").await;
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

/// Two stores on one directory lock like two processes would: `flock`
/// locks belong to an open file, and each store opens its own.
#[tokio::test]
async fn claims_hold_across_processes_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        BlobStore::connect(None, dir.path()).await.unwrap(),
        BlobStore::connect(None, dir.path()).await.unwrap(),
    ];
    for _ in 0..5 {
        let job = queued_job(&stores[0], "videos").await;
        let claimers: Vec<_> = (0..16)
            .map(|i| {
                let (store, id) = (stores[i % 2].clone(), job.id.clone());
                tokio::spawn(async move {
                    store
                        .update_metadata_if(
                            "videos",
                            &id,
                            vec![("state".into(), Some("queued".into()))],
                            meta(&[("state", "processing"), ("worker", &i.to_string())]),
                        )
                        .await
                        .unwrap()
                        .is_some()
                })
            })
            .collect();
        let mut won = 0;
        for claimer in claimers {
            won += usize::from(claimer.await.unwrap());
        }
        assert_eq!(won, 1);
    }
}

/// Sets a file's modification time `age` into the past.
fn age_file(path: &Path, age: std::time::Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

#[tokio::test]
async fn opening_the_files_store_removes_what_crashed_writes_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    let kept = queued_job(&store, "videos").await;
    drop(store);
    let bucket = dir.path().join("blobs/videos");
    let two_hours = std::time::Duration::from_secs(2 * 3600);
    // An upload and a description cut off by a crash, long ago...
    for name in [".tmpA1b2C3", ".tmpD4e5F6"] {
        std::fs::write(bucket.join(name), b"partial").unwrap();
        age_file(&bucket.join(name), two_hours);
    }
    // ...data whose description was never written...
    let orphan = bucket.join(format!("{}.data", ObjectId::new()));
    std::fs::write(&orphan, b"bytes").unwrap();
    age_file(&orphan, two_hours);
    // ...also when its writer died only two minutes ago (data gets its
    // description at once; an upload may run for long)...
    let recent_orphan = bucket.join(format!("{}.data", ObjectId::new()));
    std::fs::write(&recent_orphan, b"bytes").unwrap();
    age_file(&recent_orphan, std::time::Duration::from_secs(120));
    let recent_tmp = bucket.join(".tmpJ1k2L3");
    std::fs::write(&recent_tmp, b"partial").unwrap();
    age_file(&recent_tmp, std::time::Duration::from_secs(120));
    // ...and the same from writes still running (another process's).
    let fresh_tmp = bucket.join(".tmpG7h8I9");
    std::fs::write(&fresh_tmp, b"partial").unwrap();
    let fresh_data = bucket.join(format!("{}.data", ObjectId::new()));
    std::fs::write(&fresh_data, b"bytes").unwrap();
    // A complete file, also old, stays whole.
    age_file(&bucket.join(format!("{}.data", kept.id)), two_hours);
    age_file(&bucket.join(format!("{}.json", kept.id)), two_hours);

    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&bucket)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    let mut expected = vec![
        recent_tmp,
        fresh_tmp,
        fresh_data,
        bucket.join(format!("{}.data", kept.id)),
        bucket.join(format!("{}.json", kept.id)),
    ];
    expected.sort();
    assert_eq!(left, expected);
    let (_, rx) = store.read("videos", &kept.id, 0, None).await.unwrap();
    assert_eq!(drain(rx).await.unwrap(), b"video");
}

#[tokio::test]
async fn the_files_index_survives_restarts_and_is_rebuilt_when_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    let a = queued_job(&store, "videos").await;
    let b = queued_job(&store, "mp3s").await;
    store
        .update_metadata("videos", &a.id, meta(&[("state", "done")]))
        .await
        .unwrap();
    drop(store);
    let job_of = |f: &FileInfo| metadata_of(f)["job_id"].clone();
    let index = dir.path().join("blobs/index.db");
    for damage in [None, Some(&b"this is not a database"[..]), Some(&b""[..])] {
        if let Some(bytes) = damage {
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", index.display()));
            }
            std::fs::write(&index, bytes).unwrap();
        }
        let store = BlobStore::connect(None, dir.path()).await.unwrap();
        let found = store.find("videos", "job_id", &job_of(&a)).await.unwrap();
        assert_eq!(found.len(), 1, "after {damage:?}");
        assert_eq!(found[0].id, a.id);
        assert_eq!(
            store.find("videos", "state", "done").await.unwrap().len(),
            1
        );
        assert!(
            store
                .find("videos", "state", "queued")
                .await
                .unwrap()
                .is_empty()
        );
        // Buckets are apart: b's job is in mp3s only.
        assert!(
            store
                .find("videos", "job_id", &job_of(&b))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .find("mp3s", "job_id", &job_of(&b))
                .await
                .unwrap()
                .len(),
            1
        );
    }
    // Removed outright: rebuilt too.
    std::fs::remove_file(&index).unwrap();
    let store = BlobStore::connect(None, dir.path()).await.unwrap();
    assert_eq!(
        store
            .find("mp3s", "job_id", &job_of(&b))
            .await
            .unwrap()
            .len(),
        1
    );
    store.delete("mp3s", &b.id).await.unwrap();
    assert!(
        store
            .find("mp3s", "job_id", &job_of(&b))
            .await
            .unwrap()
            .is_empty()
    );
}

/// An ObjectId from `age` ago (unique: the rest comes from a new id).
fn id_aged(age: std::time::Duration) -> ObjectId {
    let secs = (std::time::SystemTime::now() - age)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut bytes = ObjectId::new().bytes();
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

#[tokio::test]
async fn gridfs_orphaned_chunks_are_swept_and_running_uploads_kept() {
    use mongodb::bson::{Binary, doc, spec::BinarySubtype};
    let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = mongodb::Client::with_uri_str(server.url()).await.unwrap();
    let db = client.database("videos");
    let chunks = db.collection::<mongodb::bson::Document>("fs.chunks");
    let files = db.collection::<mongodb::bson::Document>("fs.files");
    let two_days = std::time::Duration::from_secs(2 * 24 * 3600);
    let crashed = id_aged(two_days); // an upload that died two days ago
    let running = ObjectId::new(); // an upload in progress
    let stored = id_aged(two_days); // a file completed two days ago
    for id in [crashed, running, stored] {
        for n in 0..3 {
            let data = Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![n as u8; 4],
            };
            chunks
                .insert_one(doc! { "files_id": id, "n": n, "data": data })
                .await
                .unwrap();
        }
    }
    files
        .insert_one(doc! { "_id": stored, "length": 12_i64, "chunkSize": 4, "filename": "old" })
        .await
        .unwrap();
    let cutoff = std::time::SystemTime::now() - gridfs::ORPHAN_GRACE;
    let swept = gridfs::sweep_orphans(&db, None, cutoff).await.unwrap();
    assert_eq!(swept, 1);
    let count = |id: ObjectId| {
        let chunks = chunks.clone();
        async move {
            chunks
                .count_documents(doc! { "files_id": id })
                .await
                .unwrap()
        }
    };
    assert_eq!(count(crashed).await, 0);
    assert_eq!(count(running).await, 3);
    assert_eq!(count(stored).await, 3);
    // Nothing left to sweep; a window after the crash finds nothing either.
    assert_eq!(gridfs::sweep_orphans(&db, None, cutoff).await.unwrap(), 0);
}

#[tokio::test]
async fn gridfs_find_creates_its_metadata_index() {
    let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let store = BlobStore::connect(Some(&server.url()), Path::new("/nonexistent"))
        .await
        .unwrap();
    let job = queued_job(&store, "videos").await;
    let job_id = metadata_of(&job)["job_id"].clone();
    for _ in 0..2 {
        let found = store.find("videos", "job_id", &job_id).await.unwrap();
        assert_eq!(found.len(), 1);
    }
    let client = mongodb::Client::with_uri_str(server.url()).await.unwrap();
    let names: Vec<String> = client
        .database("videos")
        .collection::<mongodb::bson::Document>("fs.files")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        names.contains(&"metadata.job_id_1".to_string()),
        "{names:?}"
    );
}

/// Bytes are counted once per transfer, per bucket, whichever backend, and
/// the families are on the registry before any traffic.
#[tokio::test]
async fn blob_bytes_are_counted_per_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let server = mongo_wire::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for url in [None, Some(server.url())] {
        let store = BlobStore::connect(url.as_deref(), dir.path())
            .await
            .unwrap();
        let metrics = crate::metrics::Metrics::new(store.metrics());
        // A declared bucket's series show at 0 before any transfer.
        store.metrics().declare("videos");
        let text = metrics.encode();
        for family in ["spindle_blob_written_bytes", "spindle_blob_read_bytes"] {
            assert!(text.contains(&format!("# TYPE {family} counter")), "{text}");
            assert!(
                text.contains(&format!("{family}_total{{bucket=\"videos\"}} 0")),
                "{text}"
            );
        }
        let file = store
            .create(
                "videos",
                NewFile {
                    filename: "f".into(),
                    content_type: None,
                    metadata: vec![],
                },
                feed(content()),
            )
            .await
            .unwrap();
        let (_, rx) = store.read("videos", &file.id, 0, None).await.unwrap();
        drain(rx).await.unwrap();
        let (_, rx) = store
            .read("videos", &file.id, 10, Some(1000))
            .await
            .unwrap();
        drain(rx).await.unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "spindle_blob_written_bytes_total{{bucket=\"videos\"}} {SIZE}"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "spindle_blob_read_bytes_total{{bucket=\"videos\"}} {}",
                SIZE + 1000
            )),
            "{text}"
        );
        assert!(!text.contains("bucket=\"mp3s\""), "{text}");
    }
}

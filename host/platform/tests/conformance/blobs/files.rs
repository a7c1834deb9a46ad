//! Files on disk: every shared behaviour, and what only they have: uploads
//! cut off, locks across processes, what crashed writes left, and the
//! `index.db` that `find` uses.

use super::*;

every_behaviour!(Backend::files);

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

use futures::TryStreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::{ErrorKind, GridFsErrorKind};
use mongodb::gridfs::{FilesCollectionDocument, GridFsBucket};
use mongodb::options::{GridFsBucketOptions, GridFsUploadOptions};
use sha2::{Digest, Sha256};

use crate::setup;

/// Deterministic, incompressible-looking bytes (xorshift).
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn upload(
    bucket: &GridFsBucket,
    name: &str,
    data: &[u8],
    chunk: Option<u32>,
    metadata: Option<Document>,
) -> Bson {
    let mut stream = bucket
        .open_upload_stream(name)
        .with_options(
            GridFsUploadOptions::builder()
                .chunk_size_bytes(chunk)
                .metadata(metadata)
                .build(),
        )
        .await
        .unwrap();
    // Write in uneven pieces so chunks straddle writes.
    for piece in data.chunks(70_001) {
        stream.write_all(piece).await.unwrap();
    }
    stream.close().await.unwrap();
    stream.id().clone()
}

async fn download(bucket: &GridFsBucket, id: Bson) -> Vec<u8> {
    let mut stream = bucket.open_download_stream(id).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn gridfs_round_trip_find_update_delete() {
    let (_server, client) = setup().await;
    let db = client.database("blobs");
    let bucket = db.gridfs_bucket(None);

    let data = payload(5 * 1024 * 1024 + 123);
    let chunk_size = 100_000u32;
    let id = upload(
        &bucket,
        "video.bin",
        &data,
        Some(chunk_size),
        Some(doc! { "owner": "alice", "kind": "video", "size": data.len() as i64 }),
    )
    .await;
    let small = upload(
        &bucket,
        "note.txt",
        b"hello gridfs",
        None,
        Some(doc! { "owner": "bob" }),
    )
    .await;
    let empty = upload(&bucket, "empty", b"", None, None).await;

    let back = download(&bucket, id.clone()).await;
    assert_eq!(back.len(), data.len());
    assert_eq!(
        hex::encode(Sha256::digest(&back)),
        hex::encode(Sha256::digest(&data))
    );
    assert!(back == data);
    assert_eq!(download(&bucket, small.clone()).await, b"hello gridfs");
    assert_eq!(download(&bucket, empty.clone()).await, b"");

    // The files and chunks collections look as the GridFS spec says.
    let files = db.collection::<Document>("fs.files");
    let chunks = db.collection::<Document>("fs.chunks");
    let file = files
        .find_one(doc! { "_id": id.clone() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file.get_i64("length").unwrap(), data.len() as i64);
    assert_eq!(file.get_i32("chunkSize").unwrap(), chunk_size as i32);
    let expected_chunks = data.len().div_ceil(chunk_size as usize) as u64;
    assert_eq!(
        chunks
            .count_documents(doc! { "files_id": id.clone() })
            .await
            .unwrap(),
        expected_chunks
    );
    let index_names: Vec<String> = chunks.list_index_names().await.unwrap();
    assert!(
        index_names.contains(&"files_id_1_n_1".to_owned()),
        "{index_names:?}"
    );

    // Find by metadata through the bucket.
    let found: Vec<FilesCollectionDocument> = bucket
        .find(doc! { "metadata.owner": "alice" })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, id);
    assert_eq!(found[0].filename.as_deref(), Some("video.bin"));
    assert_eq!(found[0].length, data.len() as u64);
    assert_eq!(found[0].chunk_size_bytes, chunk_size);

    // Update the metadata through fs.files, then see it through the bucket.
    let r = files
        .update_one(
            doc! { "_id": id.clone() },
            doc! { "$set": { "metadata.status": "ready", "metadata.views": 1 } },
        )
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    let file = bucket
        .find_one(doc! { "metadata.status": "ready" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file.id, id);
    let metadata = file.metadata.unwrap();
    assert_eq!(metadata.get_str("owner").unwrap(), "alice");
    assert_eq!(metadata.get_i32("views").unwrap(), 1);

    // Delete removes the file document and all its chunks, nothing else.
    bucket.delete(id.clone()).await.unwrap();
    assert!(
        files
            .find_one(doc! { "_id": id.clone() })
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        chunks
            .count_documents(doc! { "files_id": id.clone() })
            .await
            .unwrap(),
        0
    );
    assert_eq!(download(&bucket, small).await, b"hello gridfs");

    // Missing files give the driver's FileNotFound error.
    for missing in [id, Bson::ObjectId(ObjectId::new())] {
        let Err(err) = bucket.open_download_stream(missing.clone()).await else {
            panic!("downloading a missing file should fail");
        };
        assert!(
            matches!(
                err.kind.as_ref(),
                ErrorKind::GridFs(GridFsErrorKind::FileNotFound { .. })
            ),
            "{err:?}"
        );
        let err = bucket.delete(missing).await.unwrap_err();
        assert!(
            matches!(
                err.kind.as_ref(),
                ErrorKind::GridFs(GridFsErrorKind::FileNotFound { .. })
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn gridfs_custom_bucket_and_names() {
    let (_server, client) = setup().await;
    let db = client.database("blobs");
    let bucket = db.gridfs_bucket(
        GridFsBucketOptions::builder()
            .bucket_name("media".to_owned())
            .chunk_size_bytes(1024)
            .build(),
    );
    let v1 = upload(&bucket, "doc", &payload(3000), None, None).await;
    let v2 = upload(&bucket, "doc", &payload(5000), None, None).await;
    assert_ne!(v1, v2);
    assert_eq!(
        db.collection::<Document>("media.chunks")
            .count_documents(doc! {})
            .await
            .unwrap(),
        3 + 5
    );

    // By name: the latest revision by default.
    let mut stream = bucket.open_download_stream_by_name("doc").await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, payload(5000));

    bucket.rename(v1.clone(), "old-doc").await.unwrap();
    assert_eq!(
        bucket
            .find_one(doc! { "filename": "old-doc" })
            .await
            .unwrap()
            .unwrap()
            .id,
        v1
    );
    bucket.drop().await.unwrap();
    assert!(db.list_collection_names().await.unwrap().is_empty());
}

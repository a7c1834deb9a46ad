//! The GridFS backend, on the official `mongodb` driver. Uploads go through
//! the driver's upload stream; reads query `fs.chunks` from the chunk that
//! holds `offset`, so a range read never touches the chunks before it.
//!
//! `find` creates the index on `metadata.<key>` the first time it is asked
//! for a key (lazily, not at connect: the backend does not know which keys
//! the components use, and a key nobody searches by needs no index);
//! `createIndexes` is idempotent, and which indexes exist is remembered so
//! it is sent once per bucket and key. A background sweep removes the
//! chunks that interrupted uploads left (see [`GridFs::sweep_orphans`]).

use super::{BlobError, CONTENT_TYPE_KEY, ChunkReceiver, FileInfo, NewFile, ObjectId, range_end};
use bytes::Bytes;
use futures::{AsyncWriteExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, GridFsErrorKind};
use mongodb::options::ReturnDocument;
use mongodb::{Client, Database, IndexModel};
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// 255 KiB: the GridFS default, small enough that one chunk in flight per
/// transfer keeps memory flat.
const CHUNK_SIZE: u32 = 255 * 1024;

/// How old (by its ObjectId's timestamp, the upload's start) a file id
/// must be before its chunks count as orphaned when no `fs.files` document
/// names it: longer than any upload runs, so running uploads, which have
/// no `fs.files` document until they finish, are never touched.
pub(super) const ORPHAN_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How often the sweep looks for orphaned chunks again.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// File ids checked against `fs.files` per query.
const SWEEP_BATCH: usize = 500;

pub struct GridFs {
    client: Client,
    shown_url: String,
    /// `(bucket, key)` whose `metadata.<key>` index is known to exist.
    indexed: Mutex<HashSet<(String, String)>>,
    /// Stops the orphan sweep when the store goes.
    _sweep: DropGuard,
}

impl GridFs {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = Client::with_uri_str(url)
            .await
            .map_err(|e| anyhow::anyhow!("invalid [gridfs] url: {e}"))?;
        let stop = CancellationToken::new();
        let (sweeper, stopped) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = sweep_forever(sweeper) => {}
                () = stopped.cancelled() => {}
            }
        });
        Ok(GridFs {
            client,
            shown_url: crate::urls::redact_url(url),
            indexed: Mutex::default(),
            _sweep: stop.drop_guard(),
        })
    }

    pub fn describe(&self) -> String {
        format!("GridFS at {}", self.shown_url)
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await?;
        Ok(())
    }

    fn db(&self, bucket: &str) -> Database {
        self.client.database(bucket)
    }

    pub async fn create(
        &self,
        bucket: &str,
        file: NewFile,
        mut data: mpsc::Receiver<Bytes>,
    ) -> Result<FileInfo, BlobError> {
        let mut metadata: Document = file
            .metadata
            .into_iter()
            .map(|(k, v)| (k, Bson::String(v)))
            .collect();
        if let Some(ct) = &file.content_type {
            metadata.insert(CONTENT_TYPE_KEY, ct.clone());
        }
        let id = ObjectId::new();
        let mut upload = self
            .db(bucket)
            .gridfs_bucket(None)
            .open_upload_stream(&file.filename)
            .id(Bson::ObjectId(id))
            .chunk_size_bytes(CHUNK_SIZE)
            .metadata(metadata)
            .await
            .map_err(|e| BlobError::backend("starting the upload", e))?;
        while let Some(chunk) = data.recv().await {
            if let Err(e) = upload.write_all(&chunk).await {
                let _ = upload.abort().await;
                return Err(BlobError::backend("writing to GridFS", e));
            }
        }
        upload
            .close()
            .await
            .map_err(|e| BlobError::backend("finishing the upload", e))?;
        self.stat(bucket, id).await
    }

    async fn files_doc(&self, bucket: &str, id: ObjectId) -> Result<Document, BlobError> {
        self.db(bucket)
            .collection::<Document>("fs.files")
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| BlobError::backend("reading fs.files", e))?
            .ok_or_else(|| BlobError::not_found(bucket, id))
    }

    pub async fn stat(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, BlobError> {
        info(bucket, &self.files_doc(bucket, id).await?)
    }

    pub async fn read(
        &self,
        bucket: &str,
        id: ObjectId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(FileInfo, ChunkReceiver), BlobError> {
        let files_doc = self.files_doc(bucket, id).await?;
        let file = info(bucket, &files_doc)?;
        let chunk_size = int(&files_doc, "chunkSize")?.max(1);
        let end = range_end(file.length, offset, length)?;
        let first = offset / chunk_size;
        let mut skip = (offset % chunk_size) as usize;
        let mut left = end - offset;
        let chunks = self.db(bucket).collection::<Document>("fs.chunks");
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            if left == 0 {
                return;
            }
            let cursor = chunks
                .find(doc! { "files_id": id, "n": { "$gte": first as i64 } })
                .sort(doc! { "n": 1 })
                .batch_size(4)
                .await;
            let mut cursor = match cursor {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(BlobError::backend("reading fs.chunks", e)))
                        .await;
                    return;
                }
            };
            let mut expected = first;
            while left > 0 {
                let chunk = match cursor.try_next().await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(BlobError::Damaged(format!(
                                "file {id} is missing chunk {expected}"
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(BlobError::backend("reading fs.chunks", e)))
                            .await;
                        return;
                    }
                };
                let n = chunk.get("n").and_then(Bson::as_i64_lossy);
                let data = match chunk.get_binary_generic("data") {
                    Ok(d) if n == Some(expected as i64) => d,
                    _ => {
                        let _ = tx
                            .send(Err(BlobError::Damaged(format!(
                                "file {id} has a damaged chunk {expected}"
                            ))))
                            .await;
                        return;
                    }
                };
                let piece = &data[skip.min(data.len())..];
                let piece = &piece[..piece.len().min(left as usize)];
                skip = 0;
                left -= piece.len() as u64;
                expected += 1;
                if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                    return;
                }
            }
        });
        Ok((file, rx))
    }

    pub async fn update_metadata(
        &self,
        bucket: &str,
        id: ObjectId,
        set: Vec<(String, String)>,
    ) -> Result<FileInfo, BlobError> {
        let fields: Document = set
            .into_iter()
            .map(|(k, v)| (format!("metadata.{k}"), Bson::String(v)))
            .collect();
        let result = self
            .db(bucket)
            .collection::<Document>("fs.files")
            .update_one(doc! { "_id": id }, doc! { "$set": fields })
            .await
            .map_err(|e| BlobError::backend("updating fs.files", e))?;
        if result.matched_count == 0 {
            return Err(BlobError::not_found(bucket, id));
        }
        self.stat(bucket, id).await
    }

    /// Applies `set` with one `findOneAndUpdate` whose filter carries the
    /// preconditions, so the server decides atomically.
    pub async fn update_metadata_if(
        &self,
        bucket: &str,
        id: ObjectId,
        expect: Vec<(String, Option<String>)>,
        set: Vec<(String, String)>,
    ) -> Result<Option<FileInfo>, BlobError> {
        let mut filter = doc! { "_id": id };
        if !expect.is_empty() {
            let conditions: Vec<Document> = expect
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => doc! { format!("metadata.{k}"): v },
                    None => doc! { format!("metadata.{k}"): { "$exists": false } },
                })
                .collect();
            filter.insert("$and", conditions);
        }
        let files = self.db(bucket).collection::<Document>("fs.files");
        let updated = if set.is_empty() {
            // Nothing to set: the answer is whether the preconditions hold.
            files.find_one(filter).await
        } else {
            let fields: Document = set
                .into_iter()
                .map(|(k, v)| (format!("metadata.{k}"), Bson::String(v)))
                .collect();
            files
                .find_one_and_update(filter, doc! { "$set": fields })
                .return_document(ReturnDocument::After)
                .await
        }
        .map_err(|e| BlobError::backend("updating fs.files", e))?;
        match updated {
            Some(d) => info(bucket, &d).map(Some),
            // No match: either no such file (an error) or a precondition failed.
            None => self.files_doc(bucket, id).await.map(|_| None),
        }
    }

    /// Creates the index `find` needs for `key`, once per bucket and key.
    /// A failure is logged and retried on the next `find`: the query
    /// answers without the index too, only slower.
    async fn ensure_index(&self, bucket: &str, key: &str) {
        let wanted = (bucket.to_string(), key.to_string());
        if self
            .indexed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&wanted)
        {
            return;
        }
        let index = IndexModel::builder()
            .keys(doc! { format!("metadata.{key}"): 1 })
            .build();
        match self
            .db(bucket)
            .collection::<Document>("fs.files")
            .create_index(index)
            .await
        {
            Ok(_) => {
                self.indexed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(wanted);
            }
            Err(e) => {
                tracing::warn!(bucket, key, error = %e, "could not create a GridFS metadata index");
            }
        }
    }

    pub async fn find(
        &self,
        bucket: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<FileInfo>, BlobError> {
        self.ensure_index(bucket, key).await;
        let docs: Vec<Document> = self
            .db(bucket)
            .collection::<Document>("fs.files")
            .find(doc! { format!("metadata.{key}"): value })
            .sort(doc! { "uploadDate": 1 })
            .await
            .map_err(|e| BlobError::backend("querying fs.files", e))?
            .try_collect()
            .await
            .map_err(|e| BlobError::backend("querying fs.files", e))?;
        docs.iter().map(|d| info(bucket, d)).collect()
    }

    pub async fn drop_content(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, BlobError> {
        // fs.files first: a crash in between leaves orphaned chunks, never a
        // file whose length promises chunks that are gone.
        let result = self
            .db(bucket)
            .collection::<Document>("fs.files")
            .update_one(doc! { "_id": id }, doc! { "$set": { "length": 0_i64 } })
            .await
            .map_err(|e| BlobError::backend("updating fs.files", e))?;
        if result.matched_count == 0 {
            return Err(BlobError::not_found(bucket, id));
        }
        self.db(bucket)
            .collection::<Document>("fs.chunks")
            .delete_many(doc! { "files_id": id })
            .await
            .map_err(|e| BlobError::backend("deleting from fs.chunks", e))?;
        self.stat(bucket, id).await
    }

    pub async fn delete(&self, bucket: &str, id: ObjectId) -> Result<(), BlobError> {
        match self
            .db(bucket)
            .gridfs_bucket(None)
            .delete(Bson::ObjectId(id))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match *e.kind {
                ErrorKind::GridFs(GridFsErrorKind::FileNotFound { .. }) => {
                    Err(BlobError::not_found(bucket, id))
                }
                _ => Err(BlobError::backend("deleting from GridFS", e)),
            },
        }
    }
}

/// Sweeps every bucket for orphaned chunks now and then every
/// `SWEEP_EVERY`. After the first sweep only ids that came of age since
/// the previous one are looked at, so a sweep costs what was uploaded
/// meanwhile; chunks left by a delete that crashed halfway (their file's
/// id is older) are found by the first sweep after the next start.
async fn sweep_forever(client: Client) {
    let mut since = None;
    loop {
        let cutoff = SystemTime::now()
            .checked_sub(ORPHAN_GRACE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match sweep_all(&client, since, cutoff).await {
            Ok(()) => since = Some(cutoff),
            Err(e) => {
                tracing::warn!(error = %e, "sweeping orphaned GridFS chunks failed; trying again later")
            }
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

async fn sweep_all(
    client: &Client,
    since: Option<SystemTime>,
    cutoff: SystemTime,
) -> Result<(), BlobError> {
    let names = client
        .list_database_names()
        .await
        .map_err(|e| BlobError::backend("listing databases", e))?;
    for name in names {
        // Any database named like a bucket: chunks whose file is gone are
        // garbage by the GridFS spec, whoever left them.
        if super::check_bucket(&name).is_ok()
            && !matches!(name.as_str(), "admin" | "local" | "config")
        {
            sweep_orphans(&client.database(&name), since, cutoff).await?;
        }
    }
    Ok(())
}

/// An ObjectId whose timestamp is `t` (and the rest zero: the smallest id
/// of that second).
fn id_at(t: SystemTime) -> ObjectId {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(u64::from(u32::MAX)) as u32;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// Removes the chunks in `db` whose `files_id` names no `fs.files`
/// document and is from before `cutoff` (and from `since` on, when given):
/// what an upload interrupted by a crash left, since the driver writes the
/// `fs.files` document only after the last chunk. Returns how many file
/// ids were orphaned.
pub(super) async fn sweep_orphans(
    db: &Database,
    since: Option<SystemTime>,
    cutoff: SystemTime,
) -> Result<usize, BlobError> {
    let mut range = doc! { "$lt": id_at(cutoff) };
    if let Some(since) = since {
        range.insert("$gte", id_at(since));
    }
    let chunks = db.collection::<Document>("fs.chunks");
    let files = db.collection::<Document>("fs.files");
    // Grouped on the server, through a cursor: no size limit on the result.
    let mut ids = chunks
        .aggregate([
            doc! { "$match": { "files_id": range } },
            doc! { "$group": { "_id": "$files_id" } },
        ])
        .await
        .map_err(|e| BlobError::backend("listing fs.chunks", e))?;
    let mut orphans = 0;
    let mut batch = Vec::new();
    loop {
        let next = ids
            .try_next()
            .await
            .map_err(|e| BlobError::backend("listing fs.chunks", e))?;
        if let Some(id) = next.as_ref().and_then(|d| d.get("_id")) {
            batch.push(id.clone());
        }
        if batch.len() < SWEEP_BATCH && next.is_some() {
            continue;
        }
        if !batch.is_empty() {
            let existing: HashSet<String> = files
                .find(doc! { "_id": { "$in": batch.clone() } })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| BlobError::backend("reading fs.files", e))?
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| BlobError::backend("reading fs.files", e))?
                .iter()
                .filter_map(|d| d.get("_id").map(Bson::to_string))
                .collect();
            let gone: Vec<Bson> = batch
                .drain(..)
                .filter(|id| !existing.contains(&id.to_string()))
                .collect();
            if !gone.is_empty() {
                orphans += gone.len();
                let deleted = chunks
                    .delete_many(doc! { "files_id": { "$in": gone } })
                    .await
                    .map_err(|e| BlobError::backend("deleting from fs.chunks", e))?;
                tracing::info!(
                    bucket = db.name(),
                    chunks = deleted.deleted_count,
                    "removed orphaned GridFS chunks"
                );
            }
        }
        if next.is_none() {
            return Ok(orphans);
        }
    }
}

fn int(d: &Document, key: &str) -> Result<u64, BlobError> {
    d.get(key)
        .and_then(Bson::as_i64_lossy)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| BlobError::Damaged(format!("fs.files document has no valid `{key}`")))
}

/// Reads GridFS's `fs.files` shape, which other drivers also write.
fn info(bucket: &str, d: &Document) -> Result<FileInfo, BlobError> {
    let id = d
        .get_object_id("_id")
        .map_err(|_| BlobError::Damaged("fs.files document without an ObjectId _id".into()))?;
    let mut content_type = None;
    let mut metadata = Vec::new();
    if let Ok(m) = d.get_document("metadata") {
        for (k, v) in m {
            let text = match v {
                Bson::String(s) => s.clone(),
                other => other.to_string(),
            };
            if k == CONTENT_TYPE_KEY {
                content_type = Some(text);
            } else {
                metadata.push((k.clone(), text));
            }
        }
    }
    Ok(FileInfo {
        id: id.to_hex(),
        bucket: bucket.to_string(),
        filename: d.get_str("filename").unwrap_or_default().to_string(),
        length: int(d, "length")?,
        content_type,
        metadata,
        uploaded_at: d
            .get_datetime("uploadDate")
            .map(|t| t.timestamp_millis().max(0) as u64)
            .unwrap_or_default(),
    })
}

trait AsI64Lossy {
    fn as_i64_lossy(&self) -> Option<i64>;
}

impl AsI64Lossy for Bson {
    /// GridFS writers differ in whether they store numbers as int32, int64 or double.
    fn as_i64_lossy(&self) -> Option<i64> {
        match self {
            Bson::Int32(v) => Some(i64::from(*v)),
            Bson::Int64(v) => Some(*v),
            Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
            _ => None,
        }
    }
}

/// The orphan sweep's own rules (which ids it looks at, what it returns);
/// the GridFS backend's behaviour is in `host/platform/tests/conformance/blobs/`.
#[cfg(test)]
mod tests {
    use super::*;

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
        let cutoff = std::time::SystemTime::now() - ORPHAN_GRACE;
        let swept = sweep_orphans(&db, None, cutoff).await.unwrap();
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
        assert_eq!(sweep_orphans(&db, None, cutoff).await.unwrap(), 0);
    }
}

//! The GridFS backend, on the official `mongodb` driver. Uploads go through
//! the driver's upload stream; reads query `fs.chunks` from the chunk that
//! holds `offset`, so a range read never touches the chunks before it.

use super::{CONTENT_TYPE_KEY, ChunkReceiver, Error, FileInfo, NewFile, ObjectId, range_end};
use bytes::Bytes;
use futures::{AsyncWriteExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, GridFsErrorKind};
use mongodb::{Client, Database};
use tokio::sync::mpsc;

/// 255 KiB: the GridFS default, small enough that one chunk in flight per
/// transfer keeps memory flat.
const CHUNK_SIZE: u32 = 255 * 1024;

pub struct GridFs {
    client: Client,
    shown_url: String,
}

fn backend(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("{what}: {e}"))
}

impl GridFs {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = Client::with_uri_str(url)
            .await
            .map_err(|e| anyhow::anyhow!("invalid [gridfs] url: {e}"))?;
        Ok(GridFs {
            client,
            shown_url: crate::capabilities::mysql::redact_url(url),
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
    ) -> Result<FileInfo, Error> {
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
            .map_err(|e| backend("starting the upload", e))?;
        while let Some(chunk) = data.recv().await {
            if let Err(e) = upload.write_all(&chunk).await {
                let _ = upload.abort().await;
                return Err(backend("writing to GridFS", e));
            }
        }
        upload
            .close()
            .await
            .map_err(|e| backend("finishing the upload", e))?;
        self.stat(bucket, id).await
    }

    async fn files_doc(&self, bucket: &str, id: ObjectId) -> Result<Document, Error> {
        self.db(bucket)
            .collection::<Document>("fs.files")
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| backend("reading fs.files", e))?
            .ok_or_else(|| Error::NotFound(format!("no file {id} in bucket `{bucket}`")))
    }

    pub async fn stat(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, Error> {
        info(bucket, &self.files_doc(bucket, id).await?)
    }

    pub async fn read(
        &self,
        bucket: &str,
        id: ObjectId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(FileInfo, ChunkReceiver), Error> {
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
                    let _ = tx.send(Err(backend("reading fs.chunks", e))).await;
                    return;
                }
            };
            let mut expected = first;
            while left > 0 {
                let chunk = match cursor.try_next().await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Error::Backend(format!(
                                "file {id} is missing chunk {expected}"
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(backend("reading fs.chunks", e))).await;
                        return;
                    }
                };
                let n = chunk.get("n").and_then(Bson::as_i64_lossy);
                let data = match chunk.get_binary_generic("data") {
                    Ok(d) if n == Some(expected as i64) => d,
                    _ => {
                        let _ = tx
                            .send(Err(Error::Backend(format!(
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
    ) -> Result<FileInfo, Error> {
        let fields: Document = set
            .into_iter()
            .map(|(k, v)| (format!("metadata.{k}"), Bson::String(v)))
            .collect();
        let result = self
            .db(bucket)
            .collection::<Document>("fs.files")
            .update_one(doc! { "_id": id }, doc! { "$set": fields })
            .await
            .map_err(|e| backend("updating fs.files", e))?;
        if result.matched_count == 0 {
            return Err(Error::NotFound(format!(
                "no file {id} in bucket `{bucket}`"
            )));
        }
        self.stat(bucket, id).await
    }

    pub async fn find(&self, bucket: &str, key: &str, value: &str) -> Result<Vec<FileInfo>, Error> {
        let docs: Vec<Document> = self
            .db(bucket)
            .collection::<Document>("fs.files")
            .find(doc! { format!("metadata.{key}"): value })
            .sort(doc! { "uploadDate": 1 })
            .await
            .map_err(|e| backend("querying fs.files", e))?
            .try_collect()
            .await
            .map_err(|e| backend("querying fs.files", e))?;
        docs.iter().map(|d| info(bucket, d)).collect()
    }

    pub async fn drop_content(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, Error> {
        // fs.files first: a crash in between leaves orphaned chunks, never a
        // file whose length promises chunks that are gone.
        let result = self
            .db(bucket)
            .collection::<Document>("fs.files")
            .update_one(doc! { "_id": id }, doc! { "$set": { "length": 0_i64 } })
            .await
            .map_err(|e| backend("updating fs.files", e))?;
        if result.matched_count == 0 {
            return Err(Error::NotFound(format!(
                "no file {id} in bucket `{bucket}`"
            )));
        }
        self.db(bucket)
            .collection::<Document>("fs.chunks")
            .delete_many(doc! { "files_id": id })
            .await
            .map_err(|e| backend("deleting from fs.chunks", e))?;
        self.stat(bucket, id).await
    }

    pub async fn delete(&self, bucket: &str, id: ObjectId) -> Result<(), Error> {
        match self
            .db(bucket)
            .gridfs_bucket(None)
            .delete(Bson::ObjectId(id))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match *e.kind {
                ErrorKind::GridFs(GridFsErrorKind::FileNotFound { .. }) => Err(Error::NotFound(
                    format!("no file {id} in bucket `{bucket}`"),
                )),
                _ => Err(backend("deleting from GridFS", e)),
            },
        }
    }
}

fn int(d: &Document, key: &str) -> Result<u64, Error> {
    d.get(key)
        .and_then(Bson::as_i64_lossy)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| Error::Backend(format!("fs.files document has no valid `{key}`")))
}

/// Reads GridFS's `fs.files` shape, which other drivers also write.
fn info(bucket: &str, d: &Document) -> Result<FileInfo, Error> {
    let id = d
        .get_object_id("_id")
        .map_err(|_| Error::Backend("fs.files document without an ObjectId _id".into()))?;
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

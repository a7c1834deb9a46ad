//! The embedded blob backend: `<dir>/<bucket>/<id>.data` holds the bytes and
//! `<id>.json` the description. The data file is complete before the
//! description appears, so a file is visible only once it is whole.

use super::{ChunkReceiver, Error, FileInfo, NewFile, ObjectId, now_ms, range_end};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};

const READ_CHUNK: usize = 256 * 1024;

pub struct Files {
    dir: PathBuf,
    /// Serialises read-modify-write of descriptions.
    metadata_lock: Mutex<()>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    filename: String,
    length: u64,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    uploaded_at: u64,
}

fn backend(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("{what}: {e}"))
}

/// A write that failed: a full disk is said so, so the caller can answer
/// 507 instead of "try again".
fn write_failed(what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Error::StorageFull(format!("{what}: the disk of the blob store is full ({e})"))
        }
        _ => backend(what, e),
    }
}

impl Files {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Files {
            dir: dir.to_path_buf(),
            metadata_lock: Mutex::new(()),
        })
    }

    pub fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }

    pub fn ping(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.dir.is_dir(), "{} is missing", self.dir.display());
        Ok(())
    }

    fn paths(&self, bucket: &str, id: ObjectId) -> (PathBuf, PathBuf) {
        let base = self.dir.join(bucket);
        (
            base.join(format!("{id}.data")),
            base.join(format!("{id}.json")),
        )
    }

    pub async fn create(
        &self,
        bucket: &str,
        file: NewFile,
        mut data: mpsc::Receiver<Bytes>,
    ) -> Result<FileInfo, Error> {
        let dir = self.dir.join(bucket);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| backend("creating the bucket directory", e))?;
        // Removed on drop, so a write cut short (or a cancelled call) leaves nothing.
        let tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| backend("creating a file", e))?;
        let std_file = tmp.reopen().map_err(|e| backend("opening a file", e))?;
        let mut out = tokio::fs::File::from_std(std_file);
        let mut length = 0u64;
        while let Some(chunk) = data.recv().await {
            length += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| write_failed("writing data", e))?;
        }
        out.sync_all()
            .await
            .map_err(|e| write_failed("syncing data", e))?;
        drop(out);
        let id = ObjectId::new();
        let (data_path, info_path) = self.paths(bucket, id);
        tmp.persist(&data_path)
            .map_err(|e| backend("storing data", e))?;
        let stored = Stored {
            filename: file.filename,
            length,
            content_type: file.content_type,
            metadata: file.metadata.into_iter().collect(),
            uploaded_at: now_ms(),
        };
        if let Err(e) = write_json(&info_path, &stored).await {
            // Without its description the data is unreachable: remove it.
            let _ = tokio::fs::remove_file(&data_path).await;
            return Err(e);
        }
        Ok(info(bucket, id, stored))
    }

    async fn load(&self, bucket: &str, id: ObjectId) -> Result<Stored, Error> {
        let (_, info_path) = self.paths(bucket, id);
        let text = match tokio::fs::read(&info_path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "no file {id} in bucket `{bucket}`"
                )));
            }
            Err(e) => return Err(backend("reading a description", e)),
        };
        serde_json::from_slice(&text).map_err(|e| backend("parsing a description", e))
    }

    pub async fn stat(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, Error> {
        Ok(info(bucket, id, self.load(bucket, id).await?))
    }

    pub async fn read(
        &self,
        bucket: &str,
        id: ObjectId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(FileInfo, ChunkReceiver), Error> {
        let stored = self.load(bucket, id).await?;
        let end = range_end(stored.length, offset, length)?;
        let (data_path, _) = self.paths(bucket, id);
        let mut file = tokio::fs::File::open(&data_path)
            .await
            .map_err(|e| backend("opening data", e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| backend("seeking", e))?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut left = end - offset;
            while left > 0 {
                let mut buf = vec![0u8; READ_CHUNK.min(left as usize)];
                match file.read(&mut buf).await {
                    Ok(0) => {
                        let _ = tx
                            .send(Err(Error::Backend(
                                "the data file is shorter than recorded".into(),
                            )))
                            .await;
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(backend("reading data", e))).await;
                        return;
                    }
                }
            }
        });
        Ok((info(bucket, id, stored), rx))
    }

    pub async fn update_metadata(
        &self,
        bucket: &str,
        id: ObjectId,
        set: Vec<(String, String)>,
    ) -> Result<FileInfo, Error> {
        let _guard = self.metadata_lock.lock().await;
        let mut stored = self.load(bucket, id).await?;
        stored.metadata.extend(set);
        let (_, info_path) = self.paths(bucket, id);
        write_json(&info_path, &stored).await?;
        Ok(info(bucket, id, stored))
    }

    pub async fn find(&self, bucket: &str, key: &str, value: &str) -> Result<Vec<FileInfo>, Error> {
        let mut found = Vec::new();
        let mut entries = match tokio::fs::read_dir(self.dir.join(bucket)).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(backend("listing the bucket", e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| backend("listing the bucket", e))?
        {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| ObjectId::parse_str(n).ok())
            else {
                continue;
            };
            // A file deleted while listing is simply skipped.
            if let Ok(stored) = self.load(bucket, id).await
                && stored.metadata.get(key).map(String::as_str) == Some(value)
            {
                found.push(info(bucket, id, stored));
            }
        }
        found.sort_by_key(|f| f.uploaded_at);
        Ok(found)
    }

    pub async fn drop_content(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, Error> {
        let _guard = self.metadata_lock.lock().await;
        let mut stored = self.load(bucket, id).await?;
        let (data_path, info_path) = self.paths(bucket, id);
        // The description first: a crash in between leaves unread bytes,
        // never a description promising bytes that are gone.
        stored.length = 0;
        write_json(&info_path, &stored).await?;
        match tokio::fs::File::create(&data_path).await {
            Ok(_) => Ok(info(bucket, id, stored)),
            Err(e) => Err(backend("emptying data", e)),
        }
    }

    pub async fn delete(&self, bucket: &str, id: ObjectId) -> Result<(), Error> {
        let (data_path, info_path) = self.paths(bucket, id);
        match tokio::fs::remove_file(&info_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "no file {id} in bucket `{bucket}`"
                )));
            }
            Err(e) => return Err(backend("deleting a description", e)),
        }
        match tokio::fs::remove_file(&data_path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend("deleting data", e)),
        }
    }
}

/// Writes JSON next to `path` and renames it into place.
async fn write_json(path: &Path, stored: &Stored) -> Result<(), Error> {
    let bytes = serde_json::to_vec(stored).map_err(|e| backend("encoding a description", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| write_failed("writing a description", e))?;
    tokio::fs::write(tmp.path(), bytes)
        .await
        .map_err(|e| write_failed("writing a description", e))?;
    tmp.persist(path)
        .map_err(|e| backend("storing a description", e))?;
    Ok(())
}

fn info(bucket: &str, id: ObjectId, stored: Stored) -> FileInfo {
    FileInfo {
        id: id.to_hex(),
        bucket: bucket.to_string(),
        filename: stored.filename,
        length: stored.length,
        content_type: stored.content_type,
        metadata: stored.metadata.into_iter().collect(),
        uploaded_at: stored.uploaded_at,
    }
}

//! The embedded blob backend: `<dir>/<bucket>/<id>.data` holds the bytes and
//! `<id>.json` the description. The data file is complete before the
//! description appears, so a file is visible only once it is whole.
//!
//! Every acknowledged change is durable: file contents are fsynced before
//! they are renamed into place, and the bucket directory after every
//! rename or removal (and the store directory when a bucket directory is
//! made), so a power loss cannot forget a file that was acknowledged or
//! leave a description whose data is gone. `<dir>/index.db` indexes the
//! metadata for `find` (see `index.rs`).

use super::index::{Index, Row};
use super::{BlobError, ChunkReceiver, FileInfo, NewFile, ObjectId, range_end};
use crate::clock::now_ms;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{Mutex, MutexGuard, mpsc};

const READ_CHUNK: usize = 256 * 1024;

/// How long a leftover temp file or a data file without a description
/// must have been untouched before opening the store removes it. An
/// upload writes its temp file at least every few seconds (the request
/// body has a minimum rate) and a data file gets its description within
/// milliseconds, so an hour only ever finds the remains of a crash, also
/// when another process (a separate convert worker) shares the directory.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3600);
/// How long data may wait for its description: the description is written
/// right after the data is synced and renamed, so older data without one
/// was left by a writer that died in between.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// The prefix `tempfile` gives the files it creates.
const TEMP_PREFIX: &str = ".tmp";

/// Held across processes while a description is read, changed and
/// written back (`flock` on this file in the store directory).
const LOCK_FILE: &str = ".metadata.lock";

pub struct Files {
    dir: PathBuf,
    /// Serialises read-modify-write of descriptions in this process; the
    /// lock file does it across processes.
    metadata_lock: Mutex<()>,
    /// Buckets whose directory is known to be durable (its entry in `dir`
    /// fsynced), so it is made durable once per bucket, not per file.
    durable_buckets: std::sync::Mutex<HashSet<String>>,
    index: Index,
}

/// Both metadata locks, released on drop.
struct MetadataLock<'a> {
    _in_process: MutexGuard<'a, ()>,
    _across_processes: std::fs::File,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    filename: String,
    length: u64,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    uploaded_at: u64,
}

impl Files {
    /// Opens (or makes) the store in `dir`: removes what interrupted writes
    /// left and opens the index, building it from the descriptions if it
    /// is missing or damaged. Blocking; run it off the async executor.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Its own entry too, in case this call made it.
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir_blocking(parent).with_context(|| format!("syncing {}", parent.display()))?;
        remove_leftovers(dir, SystemTime::now())?;
        let index = Index::open(&dir.join("index.db"), || all_rows(dir))
            .with_context(|| format!("opening the blob index in {}", dir.display()))?;
        Ok(Files {
            dir: dir.to_path_buf(),
            metadata_lock: Mutex::new(()),
            durable_buckets: Default::default(),
            index,
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

    /// The bucket's directory, made (durably) if missing.
    async fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, BlobError> {
        let dir = self.dir.join(bucket);
        let known = self
            .durable_buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(bucket);
        if !known {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| BlobError::write_failed("creating the bucket directory", e))?;
            // Also when another call made it: that call may not have
            // synced the entry yet, and this one must not acknowledge a
            // file before it is.
            sync_dir(&self.dir).await?;
            self.durable_buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(bucket.to_string());
        }
        Ok(dir)
    }

    pub async fn create(
        &self,
        bucket: &str,
        file: NewFile,
        mut data: mpsc::Receiver<Bytes>,
    ) -> Result<FileInfo, BlobError> {
        let dir = self.bucket_dir(bucket).await?;
        // Removed on drop, so a write cut short (or a cancelled call) leaves nothing.
        let tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| BlobError::write_failed("creating a file", e))?;
        let std_file = tmp
            .reopen()
            .map_err(|e| BlobError::backend("opening a file", e))?;
        let mut out = tokio::fs::File::from_std(std_file);
        let mut length = 0u64;
        while let Some(chunk) = data.recv().await {
            length += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| BlobError::write_failed("writing data", e))?;
        }
        out.sync_all()
            .await
            .map_err(|e| BlobError::write_failed("syncing data", e))?;
        drop(out);
        let id = ObjectId::new();
        let (data_path, info_path) = self.paths(bucket, id);
        tmp.persist(&data_path)
            .map_err(|e| BlobError::backend("storing data", e))?;
        let stored = Stored {
            filename: file.filename,
            length,
            content_type: file.content_type,
            metadata: file.metadata.into_iter().collect(),
            uploaded_at: now_ms(),
        };
        // The data's name is durable before a description can point at it.
        let described = async {
            sync_dir(&dir).await?;
            self.index.add(bucket, id, pairs(&stored.metadata)).await?;
            write_json(&info_path, &stored).await
        };
        if let Err(e) = described.await {
            // Without its description the data is unreachable: remove it.
            // (A crash here leaves it to `remove_leftovers`.)
            let _ = tokio::fs::remove_file(&data_path).await;
            return Err(e);
        }
        Ok(info(bucket, id, stored))
    }

    async fn load(&self, bucket: &str, id: ObjectId) -> Result<Stored, BlobError> {
        let (_, info_path) = self.paths(bucket, id);
        let text = match tokio::fs::read(&info_path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::not_found(bucket, id));
            }
            Err(e) => return Err(BlobError::backend("reading a description", e)),
        };
        serde_json::from_slice(&text).map_err(|e| BlobError::backend("parsing a description", e))
    }

    pub async fn stat(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, BlobError> {
        Ok(info(bucket, id, self.load(bucket, id).await?))
    }

    pub async fn read(
        &self,
        bucket: &str,
        id: ObjectId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(FileInfo, ChunkReceiver), BlobError> {
        let stored = self.load(bucket, id).await?;
        let end = range_end(stored.length, offset, length)?;
        let (data_path, _) = self.paths(bucket, id);
        let mut file = tokio::fs::File::open(&data_path)
            .await
            .map_err(|e| BlobError::backend("opening data", e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| BlobError::backend("seeking", e))?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut left = end - offset;
            while left > 0 {
                let mut buf = vec![0u8; READ_CHUNK.min(left as usize)];
                match file.read(&mut buf).await {
                    Ok(0) => {
                        let _ = tx
                            .send(Err(BlobError::Damaged(
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
                        let _ = tx.send(Err(BlobError::backend("reading data", e))).await;
                        return;
                    }
                }
            }
        });
        Ok((info(bucket, id, stored), rx))
    }

    /// Takes the metadata locks: this process's mutex, then the lock
    /// file (waiting for it on the blocking pool).
    async fn lock(&self) -> Result<MetadataLock<'_>, BlobError> {
        let in_process = self.metadata_lock.lock().await;
        let path = self.dir.join(LOCK_FILE);
        let file = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| BlobError::backend("locking the blob store", e))?
        .map_err(|e| BlobError::write_failed("locking the blob store", e))?;
        Ok(MetadataLock {
            _in_process: in_process,
            _across_processes: file,
        })
    }

    pub async fn update_metadata(
        &self,
        bucket: &str,
        id: ObjectId,
        set: Vec<(String, String)>,
    ) -> Result<FileInfo, BlobError> {
        let _lock = self.lock().await?;
        let stored = self.load(bucket, id).await?;
        self.set_metadata(bucket, id, stored, set).await
    }

    pub async fn update_metadata_if(
        &self,
        bucket: &str,
        id: ObjectId,
        expect: Vec<(String, Option<String>)>,
        set: Vec<(String, String)>,
    ) -> Result<Option<FileInfo>, BlobError> {
        let _lock = self.lock().await?;
        let stored = self.load(bucket, id).await?;
        let holds = expect
            .iter()
            .all(|(key, expected)| stored.metadata.get(key) == expected.as_ref());
        if !holds {
            return Ok(None);
        }
        Ok(Some(self.set_metadata(bucket, id, stored, set).await?))
    }

    /// Writes `stored` with `set` applied; the caller holds the lock.
    async fn set_metadata(
        &self,
        bucket: &str,
        id: ObjectId,
        mut stored: Stored,
        set: Vec<(String, String)>,
    ) -> Result<FileInfo, BlobError> {
        let changed: Vec<(String, String)> = set
            .into_iter()
            .filter(|(k, v)| stored.metadata.get(k) != Some(v))
            .collect();
        let replaced: Vec<(String, String)> = changed
            .iter()
            .filter_map(|(k, _)| Some((k.clone(), stored.metadata.get(k)?.clone())))
            .collect();
        if changed.is_empty() {
            return Ok(info(bucket, id, stored));
        }
        self.index.add(bucket, id, changed.clone()).await?;
        stored.metadata.extend(changed);
        let (_, info_path) = self.paths(bucket, id);
        write_json(&info_path, &stored).await?;
        // The change is made: a row left behind only costs `find` a look.
        if let Err(e) = self.index.remove(bucket, id, replaced).await {
            tracing::warn!(bucket, %id, error = %e, "could not remove replaced values from the blob index");
        }
        Ok(info(bucket, id, stored))
    }

    pub async fn find(
        &self,
        bucket: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<FileInfo>, BlobError> {
        let mut found = Vec::new();
        for id in self.index.candidates(bucket, key, value).await? {
            // A row can outlive its file's value (a crash between the
            // steps of a change, a file being deleted): check it.
            match self.load(bucket, id).await {
                Ok(stored) if stored.metadata.get(key).map(String::as_str) == Some(value) => {
                    found.push(info(bucket, id, stored));
                }
                Ok(_) | Err(BlobError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        found.sort_by_key(|f| f.uploaded_at);
        Ok(found)
    }

    pub async fn drop_content(&self, bucket: &str, id: ObjectId) -> Result<FileInfo, BlobError> {
        let _lock = self.lock().await?;
        let mut stored = self.load(bucket, id).await?;
        let (data_path, info_path) = self.paths(bucket, id);
        // The description first: a crash in between leaves unread bytes,
        // never a description promising bytes that are gone.
        stored.length = 0;
        write_json(&info_path, &stored).await?;
        match tokio::fs::File::create(&data_path).await {
            Ok(_) => Ok(info(bucket, id, stored)),
            Err(e) => Err(BlobError::backend("emptying data", e)),
        }
    }

    pub async fn delete(&self, bucket: &str, id: ObjectId) -> Result<(), BlobError> {
        // Under the lock, so a concurrent metadata change cannot write the
        // description back after it is gone.
        let _lock = self.lock().await?;
        let (data_path, info_path) = self.paths(bucket, id);
        match tokio::fs::remove_file(&info_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::not_found(bucket, id));
            }
            Err(e) => return Err(BlobError::backend("deleting a description", e)),
        }
        let bucket_dir = self.dir.join(bucket);
        // The description is gone for good before the data goes, so a
        // crash cannot leave it pointing at nothing.
        sync_dir(&bucket_dir).await?;
        match tokio::fs::remove_file(&data_path).await {
            Ok(()) => sync_dir(&bucket_dir).await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BlobError::backend("deleting data", e)),
        }
        // The file is gone: rows left behind only cost `find` a look.
        if let Err(e) = self.index.remove_file(bucket, id).await {
            tracing::warn!(bucket, %id, error = %e, "could not remove a deleted file from the blob index");
        }
        Ok(())
    }
}

/// The metadata as index rows' (key, value) pairs.
fn pairs(metadata: &BTreeMap<String, String>) -> Vec<(String, String)> {
    metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Makes the entries of `dir` (renames, removals in it) durable.
async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || sync_dir_blocking(&dir))
        .await
        .map_err(|e| BlobError::backend("syncing a directory", e))?
        .map_err(|e| BlobError::write_failed("syncing a directory", e))
}

fn sync_dir_blocking(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The bucket directories under `dir`.
fn buckets(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
            && super::check_bucket(&name).is_ok()
        {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

/// Removes what interrupted writes left: `tempfile`'s temp files (an
/// upload or a description being written) untouched for `LEFTOVER_GRACE`,
/// and data files without a description untouched for `ORPHAN_GRACE`.
/// Removing such a data file is safe because a file's data is persisted
/// before its description is written: data without a description was
/// never acknowledged (its `create` failed or crashed before the
/// description), nobody can reach it, and it will not get a description
/// later (its writer writes it right after the data).
fn remove_leftovers(dir: &Path, now: SystemTime) -> anyhow::Result<()> {
    use anyhow::Context;
    for (_, bucket_dir) in buckets(dir).with_context(|| format!("listing {}", dir.display()))? {
        let mut removed = 0;
        for entry in std::fs::read_dir(&bucket_dir)
            .with_context(|| format!("listing {}", bucket_dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let temp = name.starts_with(TEMP_PREFIX);
            let leftover = temp
                || name
                    .strip_suffix(".data")
                    .is_some_and(|id| !bucket_dir.join(format!("{id}.json")).exists());
            let grace = if temp { LEFTOVER_GRACE } else { ORPHAN_GRACE };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > grace));
            if leftover && old {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("removing {}", entry.path().display()));
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(bucket = %bucket_dir.display(), removed, "removed the leftovers of interrupted blob writes");
            sync_dir_blocking(&bucket_dir)?;
        }
    }
    Ok(())
}

/// Every metadata pair of every description under `dir`, to build the index.
fn all_rows(dir: &Path) -> anyhow::Result<Vec<Row>> {
    use anyhow::Context;
    let mut rows = Vec::new();
    for (bucket, bucket_dir) in buckets(dir)? {
        for entry in std::fs::read_dir(&bucket_dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| ObjectId::parse_str(n).ok())
            else {
                continue;
            };
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                // Deleted meanwhile by another process.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let stored: Stored = serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            rows.extend(stored.metadata.into_iter().map(|(key, value)| Row {
                bucket: bucket.clone(),
                id,
                key,
                value,
            }));
        }
    }
    Ok(rows)
}

/// Writes JSON next to `path`, syncs it, renames it into place and syncs
/// the directory: when this returns the new description is durable.
async fn write_json(path: &Path, stored: &Stored) -> Result<(), BlobError> {
    let bytes =
        serde_json::to_vec(stored).map_err(|e| BlobError::backend("encoding a description", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| BlobError::write_failed("writing a description", e))?;
    let mut out = tokio::fs::File::from_std(
        tmp.reopen()
            .map_err(|e| BlobError::backend("opening a description", e))?,
    );
    out.write_all(&bytes)
        .await
        .map_err(|e| BlobError::write_failed("writing a description", e))?;
    out.sync_all()
        .await
        .map_err(|e| BlobError::write_failed("syncing a description", e))?;
    drop(out);
    tmp.persist(path)
        .map_err(|e| BlobError::backend("storing a description", e))?;
    sync_dir(dir).await
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

//! `spindle:blobs/store`: files in named buckets, streamed in and out.
//!
//! Backends, chosen by the runtime config: MongoDB GridFS through the
//! official `mongodb` driver (`[gridfs] url`; each bucket is a database with
//! the standard `fs` GridFS bucket, as the original application used), or
//! files under `<state-dir>/blobs/` when no server is configured. Data moves
//! through bounded channels chunk by chunk, never as a whole file. The same
//! behaviour tests run on every backend
//! (`host/platform/tests/conformance/blobs/`).

mod capability;
mod error;
mod files;
mod gridfs;
mod index;

use crate::capabilities::streams::{ChannelConsumer, ChannelProducer};
use crate::metrics::BlobMetrics;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use wasmtime::component::{Accessor, FutureReader, HasData, StreamReader};

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/capabilities/blobs/wit",
        world: "spindle:blobs/blobs-client",
        imports: { default: trappable },
    });
}

use bindings::spindle::blobs::store as wit;
pub use error::BlobError;
pub use wit::{FileInfo, NewFile};

/// Chunks read from a backend, with an error ending the stream early.
pub type ChunkReceiver = mpsc::Receiver<Result<Bytes, BlobError>>;

/// Where blobs live, and the byte counters every transfer goes through.
#[derive(Clone)]
pub struct BlobStore {
    backend: Backend,
    metrics: BlobMetrics,
}

#[derive(Clone)]
enum Backend {
    GridFs(Arc<gridfs::GridFs>),
    Files(Arc<files::Files>),
}

impl BlobStore {
    /// GridFS when `url` is given, else files under `state_dir/blobs`.
    pub async fn connect(url: Option<&str>, state_dir: &Path) -> anyhow::Result<Self> {
        let backend = match url {
            Some(url) => Backend::GridFs(Arc::new(gridfs::GridFs::connect(url).await?)),
            None => {
                // Opening checks the index and clears leftovers: disk work.
                let dir = state_dir.join("blobs");
                let files = tokio::task::spawn_blocking(move || files::Files::new(&dir)).await??;
                Backend::Files(Arc::new(files))
            }
        };
        Ok(BlobStore {
            backend,
            metrics: BlobMetrics::default(),
        })
    }

    /// The byte counters of this store, for the metrics registry.
    pub fn metrics(&self) -> &BlobMetrics {
        &self.metrics
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::GridFs(g) => g.describe(),
            Backend::Files(f) => f.describe(),
        }
    }

    /// Checks that the backend answers (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::GridFs(g) => g.ping().await,
            Backend::Files(f) => f.ping(),
        }
    }

    pub async fn create(
        &self,
        bucket: &str,
        file: NewFile,
        data: mpsc::Receiver<Bytes>,
    ) -> Result<FileInfo, BlobError> {
        check_bucket(bucket)?;
        check_metadata(&file.metadata)?;
        let created = match &self.backend {
            Backend::GridFs(g) => g.create(bucket, file, data).await,
            Backend::Files(f) => f.create(bucket, file, data).await,
        }?;
        self.metrics.bytes_in(bucket).inc_by(created.length);
        Ok(created)
    }

    pub async fn stat(&self, bucket: &str, id: &str) -> Result<FileInfo, BlobError> {
        check_bucket(bucket)?;
        let id = parse_id(id)?;
        match &self.backend {
            Backend::GridFs(g) => g.stat(bucket, id).await,
            Backend::Files(f) => f.stat(bucket, id).await,
        }
    }

    /// The file's description and its bytes from `offset`, at most `length`.
    pub async fn read(
        &self,
        bucket: &str,
        id: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(FileInfo, ChunkReceiver), BlobError> {
        check_bucket(bucket)?;
        let id = parse_id(id)?;
        let (info, chunks) = match &self.backend {
            Backend::GridFs(g) => g.read(bucket, id, offset, length).await,
            Backend::Files(f) => f.read(bucket, id, offset, length).await,
        }?;
        Ok((info, counted(chunks, self.metrics.bytes_out(bucket))))
    }

    pub async fn update_metadata(
        &self,
        bucket: &str,
        id: &str,
        set: Vec<(String, String)>,
    ) -> Result<FileInfo, BlobError> {
        check_bucket(bucket)?;
        check_metadata(&set)?;
        let id = parse_id(id)?;
        match &self.backend {
            Backend::GridFs(g) => g.update_metadata(bucket, id, set).await,
            Backend::Files(f) => f.update_metadata(bucket, id, set).await,
        }
    }

    /// Compare-and-set: applies `set` only if, for every `(key, expected)`
    /// in `expect`, the file's metadata has that value (`None`: the key is
    /// absent). `Ok(None)` when a precondition does not hold (nothing
    /// changed), `Ok(Some(info))` after applying. Atomic against every
    /// other metadata change, in this process and in others sharing the
    /// store, so it can claim a job: of many callers expecting the same
    /// state, exactly one wins.
    pub async fn update_metadata_if(
        &self,
        bucket: &str,
        id: &str,
        expect: Vec<(String, Option<String>)>,
        set: Vec<(String, String)>,
    ) -> Result<Option<FileInfo>, BlobError> {
        check_bucket(bucket)?;
        check_metadata(&set)?;
        expect.iter().try_for_each(|(k, _)| check_key(k))?;
        let id = parse_id(id)?;
        match &self.backend {
            Backend::GridFs(g) => g.update_metadata_if(bucket, id, expect, set).await,
            Backend::Files(f) => f.update_metadata_if(bucket, id, expect, set).await,
        }
    }

    pub async fn find(
        &self,
        bucket: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<FileInfo>, BlobError> {
        check_bucket(bucket)?;
        check_key(key)?;
        match &self.backend {
            Backend::GridFs(g) => g.find(bucket, key, value).await,
            Backend::Files(f) => f.find(bucket, key, value).await,
        }
    }

    /// Empties a file but keeps its description (name, metadata): the
    /// record of something whose bytes are no longer needed.
    pub async fn drop_content(&self, bucket: &str, id: &str) -> Result<FileInfo, BlobError> {
        check_bucket(bucket)?;
        let id = parse_id(id)?;
        match &self.backend {
            Backend::GridFs(g) => g.drop_content(bucket, id).await,
            Backend::Files(f) => f.drop_content(bucket, id).await,
        }
    }

    pub async fn delete(&self, bucket: &str, id: &str) -> Result<(), BlobError> {
        check_bucket(bucket)?;
        let id = parse_id(id)?;
        match &self.backend {
            Backend::GridFs(g) => g.delete(bucket, id).await,
            Backend::Files(f) => f.delete(bucket, id).await,
        }
    }
}

/// `chunks` passed on with each delivered chunk's bytes counted in `out`.
/// One forwarding task per read keeps the count out of both backends.
fn counted(mut chunks: ChunkReceiver, out: Counter) -> ChunkReceiver {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(item) = chunks.recv().await {
            let length = item.as_ref().map_or(0, |c| c.len() as u64);
            if tx.send(item).await.is_err() {
                return;
            }
            out.inc_by(length);
        }
    });
    rx
}

type ObjectId = mongodb::bson::oid::ObjectId;

/// File ids are ObjectIds on every backend, so ids move between them.
fn parse_id(id: &str) -> Result<ObjectId, BlobError> {
    ObjectId::parse_str(id)
        .map_err(|_| BlobError::Invalid(format!("`{id}` is not a file id (24 hex digits)")))
}

/// Bucket names are also MongoDB database names and directory names.
pub fn check_bucket(bucket: &str) -> Result<(), BlobError> {
    let ok = !bucket.is_empty()
        && bucket.len() <= 63
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BlobError::Invalid(format!(
            "`{bucket}` is not a bucket name (letters, digits, - and _, at most 63)"
        )))
    }
}

/// Metadata keys become MongoDB field names: no dots, no leading `$`.
fn check_key(key: &str) -> Result<(), BlobError> {
    if key.is_empty() || key.contains('.') || key.starts_with('$') || key == CONTENT_TYPE_KEY {
        return Err(BlobError::Invalid(format!(
            "`{key}` cannot be a metadata key (no dots, no leading $, not {CONTENT_TYPE_KEY})"
        )));
    }
    Ok(())
}

fn check_metadata(pairs: &[(String, String)]) -> Result<(), BlobError> {
    pairs.iter().try_for_each(|(k, _)| check_key(k))
}

/// Where the content type is kept inside GridFS's `metadata` document, as
/// the GridFS spec suggests now that the top-level field is deprecated.
const CONTENT_TYPE_KEY: &str = "contentType";

/// The exclusive end of `offset..offset+length` within a file of `size`.
fn range_end(size: u64, offset: u64, length: Option<u64>) -> Result<u64, BlobError> {
    if offset > size || (offset == size && size > 0) {
        return Err(BlobError::Invalid(format!(
            "offset {offset} is beyond the end of the file ({size} bytes)"
        )));
    }
    Ok(match length {
        Some(l) => offset.saturating_add(l).min(size),
        None => size,
    })
}

/// What one component may use: the store and its granted buckets.
#[derive(Clone)]
pub struct BlobsState {
    component: Arc<str>,
    store: BlobStore,
    buckets: Arc<Vec<String>>,
}

impl BlobsState {
    pub fn new(component: &str, store: BlobStore, buckets: &[String]) -> Self {
        BlobsState {
            component: component.into(),
            store,
            buckets: Arc::new(buckets.to_vec()),
        }
    }

    fn granted(&self, bucket: &str) -> Result<BlobStore, BlobError> {
        if self.buckets.iter().any(|b| b == bucket) {
            return Ok(self.store.clone());
        }
        tracing::warn!(component = %self.component, bucket, "blob access refused: bucket not granted");
        Err(BlobError::PermissionDenied {
            component: self.component.to_string(),
            bucket: bucket.to_string(),
        })
    }
}

/// The `HasData` marker for `spindle:blobs`.
pub struct Blobs;

impl HasData for Blobs {
    type Data<'a> = &'a BlobsState;
}

impl wit::Host for &BlobsState {}

fn granted<T>(store: &Accessor<T, Blobs>, bucket: &str) -> Result<BlobStore, BlobError> {
    store.with(|mut view| view.get().granted(bucket))
}

// The component-facing side: these answer in the WIT `error`, converted
// from [`BlobError`] here and nowhere else.
impl<T> wit::HostWithStore<T> for Blobs {
    async fn create(
        store: &Accessor<T, Self>,
        bucket: String,
        file: NewFile,
        mut data: StreamReader<u8>,
    ) -> wasmtime::Result<Result<FileInfo, wit::Error>> {
        let blobs = match granted(store, &bucket) {
            Ok(b) => b,
            Err(e) => {
                store.with(|mut access| data.close(&mut access))?;
                return Ok(Err(e.into()));
            }
        };
        let (consumer, rx) = ChannelConsumer::new();
        store.with(|mut access| data.pipe(&mut access, consumer))?;
        Ok(blobs
            .create(&bucket, file, rx)
            .await
            .map_err(wit::Error::from))
    }

    async fn stat(
        store: &Accessor<T, Self>,
        bucket: String,
        id: String,
    ) -> wasmtime::Result<Result<FileInfo, wit::Error>> {
        let result = async { granted(store, &bucket)?.stat(&bucket, &id).await };
        Ok(result.await.map_err(wit::Error::from))
    }

    async fn read(
        store: &Accessor<T, Self>,
        bucket: String,
        id: String,
        offset: u64,
        length: Option<u64>,
    ) -> wasmtime::Result<
        Result<
            (
                FileInfo,
                StreamReader<u8>,
                FutureReader<Result<(), wit::Error>>,
            ),
            wit::Error,
        >,
    > {
        let opened = async {
            granted(store, &bucket)?
                .read(&bucket, &id, offset, length)
                .await
        };
        let (info, chunks) = match opened.await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        let (err_tx, err_rx) = tokio::sync::oneshot::channel::<BlobError>();
        store.with(|mut access| {
            let stream = StreamReader::new(&mut access, ChannelProducer::new(chunks, err_tx))?;
            let done = FutureReader::new(&mut access, async move {
                // No error was sent when the producer finished normally.
                Ok::<_, wasmtime::Error>(match err_rx.await {
                    Ok(e) => Err(wit::Error::from(e)),
                    Err(_) => Ok(()),
                })
            })?;
            Ok(Ok((info, stream, done)))
        })
    }

    async fn update_metadata(
        store: &Accessor<T, Self>,
        bucket: String,
        id: String,
        set: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<FileInfo, wit::Error>> {
        let result = async {
            granted(store, &bucket)?
                .update_metadata(&bucket, &id, set)
                .await
        };
        Ok(result.await.map_err(wit::Error::from))
    }

    async fn update_metadata_if(
        store: &Accessor<T, Self>,
        bucket: String,
        id: String,
        expect: Vec<(String, Option<String>)>,
        set: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<Option<FileInfo>, wit::Error>> {
        let result = async {
            granted(store, &bucket)?
                .update_metadata_if(&bucket, &id, expect, set)
                .await
        };
        Ok(result.await.map_err(wit::Error::from))
    }

    async fn find(
        store: &Accessor<T, Self>,
        bucket: String,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<Vec<FileInfo>, wit::Error>> {
        let result = async { granted(store, &bucket)?.find(&bucket, &key, &value).await };
        Ok(result.await.map_err(wit::Error::from))
    }

    async fn delete(
        store: &Accessor<T, Self>,
        bucket: String,
        id: String,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        let result = async { granted(store, &bucket)?.delete(&bucket, &id).await };
        Ok(result.await.map_err(wit::Error::from))
    }
}

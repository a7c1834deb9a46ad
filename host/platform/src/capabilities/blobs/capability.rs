//! `spindle:blobs` as a capability: `blob_buckets` grants buckets; `[gridfs]
//! url` selects MongoDB GridFS, files in the state directory otherwise.

use super::{BlobStore, Blobs, BlobsState, check_bucket, wit};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use crate::manifest::is_reserved;
use crate::runtime_config::UrlConfig;
use std::sync::Arc;
use wasmtime::component::Linker;

impl Capability for Blobs {
    const NAME: &'static str = "spindle:blobs";
    const GRANT_KEYS: &'static [&'static str] = &["blob_buckets"];
    const CONFIG_SECTION: Option<&'static str> = Some("gridfs");
    const BACKEND_NAME: &'static str = "the blob store";

    /// The buckets granted.
    type Grant = Arc<Vec<String>>;
    type Backend = BlobStore;
    type State = BlobsState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let buckets: Vec<String> = entry.get("blob_buckets")?;
        for (i, bucket) in buckets.iter().enumerate() {
            check_bucket(bucket).map_err(|e| {
                GrantError::new(
                    format!("blob_buckets[{i}]"),
                    e.to_string(),
                    "name buckets with letters, digits, - and _",
                )
            })?;
            if is_reserved(bucket) {
                return Err(GrantError::reserved("blob_buckets", bucket));
            }
        }
        Ok(Arc::new(buckets))
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let gridfs: Option<UrlConfig> = env.section::<Self, _>()?;
        BlobStore::connect(gridfs.as_ref().map(|g| g.url.as_str()), env.state_dir).await
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        Some(backend.describe())
    }

    async fn ready(backend: &Self::Backend) -> anyhow::Result<()> {
        backend.ping().await
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn state<T: HasState<Blobs>>(t: &mut T) -> &BlobsState {
            t.view().state
        }
        wit::add_to_linker::<T, Blobs>(linker, state::<T>)
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        // Every granted bucket's series shows from start-up.
        for bucket in grant.iter() {
            backend.metrics().declare(bucket);
        }
        BlobsState::new(id, backend.clone(), grant)
    }

    fn is_granted(grant: &Self::Grant) -> bool {
        !grant.is_empty()
    }

    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str> {
        (import.starts_with("spindle:blobs/") && grant.is_empty())
            .then_some("blob_buckets = [\"BUCKET\"]")
    }
}

//! Deployed artifacts and version records in the blob store (bucket
//! `spindle-deploys`): GridFS shared by every replica in production, files
//! under the state directory on the embedded default.
//!
//! - An **artifact** is a component's bytes, stored once per content hash
//!   (metadata `spindle_kind=artifact`, `version=<sha256>`), checked against
//!   that hash when read back.
//! - A **record** is an empty file whose metadata is a [`VersionRecord`]
//!   (`spindle_kind=record`, `component`, `version`, `action`, `source`,
//!   `host`, `deployed_at_ms`). Records are only ever added, so concurrent
//!   writers never lose each other's; a component's history is its records
//!   in time order (see [`super::history`]).

use super::{Action, VersionRecord};
use crate::capabilities::blobs::{BlobStore, Error, FileInfo, NewFile};
use crate::runtime::cache::CompileCache;
use bytes::Bytes;
use tokio::sync::mpsc;

pub(crate) const BUCKET: &str = "spindle-deploys";
const KIND: &str = "spindle_kind";
const CHUNK: usize = 1 << 20;

fn meta<'a>(info: &'a FileInfo, key: &str) -> Option<&'a str> {
    info.metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn create(
    blobs: &BlobStore,
    filename: String,
    metadata: Vec<(String, String)>,
    data: Bytes,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel(4);
    let feed = tokio::spawn(async move {
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + CHUNK).min(data.len());
            if tx.send(data.slice(offset..end)).await.is_err() {
                return;
            }
            offset = end;
        }
    });
    let file = NewFile {
        filename,
        content_type: Some("application/wasm".into()),
        metadata,
    };
    let created = blobs.create(BUCKET, file, rx).await;
    let _ = feed.await;
    created.map(drop)
}

/// Stores `wasm` unless an artifact with its hash is already there.
pub(crate) async fn put_artifact(
    blobs: &BlobStore,
    component: &str,
    version: &str,
    wasm: &[u8],
) -> Result<(), Error> {
    let found = blobs.find(BUCKET, "version", version).await?;
    if found.iter().any(|f| meta(f, KIND) == Some("artifact")) {
        return Ok(());
    }
    let metadata = vec![
        (KIND.into(), "artifact".into()),
        ("version".into(), version.into()),
        ("component".into(), component.into()),
    ];
    create(
        blobs,
        format!("{component}-{}.wasm", &version[..12.min(version.len())]),
        metadata,
        Bytes::copy_from_slice(wasm),
    )
    .await
}

/// The bytes of the artifact with content hash `version`.
pub(crate) async fn artifact(blobs: &BlobStore, version: &str) -> Result<Vec<u8>, Error> {
    let found = blobs.find(BUCKET, "version", version).await?;
    let Some(file) = found.iter().find(|f| meta(f, KIND) == Some("artifact")) else {
        return Err(Error::NotFound(format!(
            "no artifact for version {version} in bucket `{BUCKET}`"
        )));
    };
    let (_, mut chunks) = blobs.read(BUCKET, &file.id, 0, None).await?;
    let mut wasm = Vec::with_capacity(file.length as usize);
    while let Some(chunk) = chunks.recv().await {
        wasm.extend_from_slice(&chunk?);
    }
    if CompileCache::digest(&wasm) != version {
        return Err(Error::Invalid(format!(
            "the artifact for version {version} in bucket `{BUCKET}` is damaged (its sha256 differs)"
        )));
    }
    Ok(wasm)
}

pub(crate) async fn add_record(blobs: &BlobStore, record: &VersionRecord) -> Result<(), Error> {
    let metadata = vec![
        (KIND.into(), "record".into()),
        ("component".into(), record.component.clone()),
        ("version".into(), record.version.clone()),
        ("action".into(), record.action.as_str().into()),
        ("source".into(), record.source.clone()),
        ("host".into(), record.host.clone()),
        ("deployed_at_ms".into(), record.deployed_at_ms.to_string()),
    ];
    create(
        blobs,
        format!("{}-{}.record", record.component, record.deployed_at_ms),
        metadata,
        Bytes::new(),
    )
    .await
}

/// Every record of `component`, oldest first.
pub(crate) async fn records(
    blobs: &BlobStore,
    component: &str,
) -> Result<Vec<VersionRecord>, Error> {
    let found = blobs.find(BUCKET, "component", component).await?;
    let mut records: Vec<(u64, String, VersionRecord)> = found
        .iter()
        .filter(|f| meta(f, KIND) == Some("record"))
        .filter_map(|f| {
            let record = VersionRecord {
                component: component.to_string(),
                version: meta(f, "version")?.to_string(),
                action: Action::parse(meta(f, "action")?)?,
                source: meta(f, "source").unwrap_or_default().to_string(),
                host: meta(f, "host").unwrap_or_default().to_string(),
                deployed_at_ms: meta(f, "deployed_at_ms")?.parse().ok()?,
            };
            Some((f.uploaded_at, f.id.clone(), record))
        })
        .collect();
    // Ids are ObjectIds: they order files written in the same millisecond.
    records.sort_by(|a, b| (a.2.deployed_at_ms, a.0, &a.1).cmp(&(b.2.deployed_at_ms, b.0, &b.1)));
    Ok(records.into_iter().map(|(_, _, r)| r).collect())
}

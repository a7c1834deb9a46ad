//! Deployed artifacts and version records in the blob store (bucket
//! `spindle-deploys`): GridFS shared by every replica in production, files
//! under the state directory on the embedded default.
//!
//! What is stored is [`Stored`], a serde type kept as the file's metadata
//! (one string per field, the enum's tag in `spindle_kind`):
//!
//! - An **artifact** is a component's bytes, stored once per content hash
//!   (`spindle_kind=artifact`, `version=<sha256>`, `component`), checked
//!   against that hash when read back.
//! - A **record** is an empty file whose metadata is a [`VersionRecord`]
//!   (`spindle_kind=record`, `component`, `version`, `action`, `source`,
//!   `host`, `deployed_at_ms`). Records are only ever added, so concurrent
//!   writers never lose each other's; a component's history is its records
//!   in time order (see [`super::history`]).
//!
//! These are the keys hosts have always written, so records from before
//! [`Stored`] (written field by field) read as they are, and hosts of
//! either version sharing a store during an upgrade read each other's.

use super::{Action, VersionRecord};
use crate::capabilities::blobs::{BlobError, BlobStore, FileInfo, NewFile};
use crate::runtime::cache::CompileCache;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub(crate) const BUCKET: &str = "spindle-deploys";
const CHUNK: usize = 1 << 20;

/// Why the deploy store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Blobs(#[from] BlobError),
    #[error("no artifact for version {version} in bucket `spindle-deploys`")]
    NoArtifact { version: String },
    #[error(
        "the artifact for version {version} in bucket `spindle-deploys` is damaged (its sha256 differs)"
    )]
    Damaged { version: String },
    #[error("encoding the metadata of a deploy file: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A file of the deploy store, as its metadata says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "spindle_kind", rename_all = "lowercase")]
enum Stored {
    Artifact { version: String, component: String },
    Record(StoredRecord),
}

/// A [`VersionRecord`] as metadata: every value a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredRecord {
    component: String,
    version: String,
    action: Action,
    #[serde(default)]
    source: String,
    #[serde(default)]
    host: String,
    #[serde(with = "decimal")]
    deployed_at_ms: u64,
}

/// A number kept as its decimal string (metadata values are strings).
mod decimal {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("`{text}` is not a whole number")))
    }
}

impl From<&VersionRecord> for StoredRecord {
    fn from(r: &VersionRecord) -> Self {
        StoredRecord {
            component: r.component.clone(),
            version: r.version.clone(),
            action: r.action,
            source: r.source.clone(),
            host: r.host.clone(),
            deployed_at_ms: r.deployed_at_ms,
        }
    }
}

impl From<StoredRecord> for VersionRecord {
    fn from(r: StoredRecord) -> Self {
        VersionRecord {
            component: r.component,
            version: r.version,
            action: r.action,
            source: r.source,
            host: r.host,
            deployed_at_ms: r.deployed_at_ms,
        }
    }
}

impl Stored {
    /// The metadata pairs this is kept as.
    fn to_metadata(&self) -> Result<Vec<(String, String)>, serde_json::Error> {
        let serde_json::Value::Object(fields) = serde_json::to_value(self)? else {
            return Err(serde::ser::Error::custom("not a map"));
        };
        Ok(fields
            .into_iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => (key, text),
                other => (key, other.to_string()),
            })
            .collect())
    }

    /// What a file's metadata says it is; `None` for anything else (files
    /// of other kinds, or damaged records, which are left out).
    fn from_metadata(info: &FileInfo) -> Option<Stored> {
        let fields: serde_json::Map<String, serde_json::Value> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(fields)).ok()
    }
}

async fn create(
    blobs: &BlobStore,
    filename: String,
    stored: &Stored,
    data: Bytes,
) -> Result<(), StoreError> {
    let metadata = stored.to_metadata()?;
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
    created?;
    Ok(())
}

/// The artifact among `found` with content hash `version`.
fn find_artifact<'a>(found: &'a [FileInfo], version: &str) -> Option<&'a FileInfo> {
    found.iter().find(|f| {
        matches!(Stored::from_metadata(f), Some(Stored::Artifact { version: v, .. }) if v == version)
    })
}

/// Stores `wasm` unless an artifact with its hash is already there.
pub(crate) async fn put_artifact(
    blobs: &BlobStore,
    component: &str,
    version: &str,
    wasm: &[u8],
) -> Result<(), StoreError> {
    let found = blobs.find(BUCKET, "version", version).await?;
    if find_artifact(&found, version).is_some() {
        return Ok(());
    }
    let stored = Stored::Artifact {
        version: version.into(),
        component: component.into(),
    };
    create(
        blobs,
        format!("{component}-{}.wasm", &version[..12.min(version.len())]),
        &stored,
        Bytes::copy_from_slice(wasm),
    )
    .await
}

/// The bytes of the artifact with content hash `version`.
pub(crate) async fn artifact(blobs: &BlobStore, version: &str) -> Result<Vec<u8>, StoreError> {
    let found = blobs.find(BUCKET, "version", version).await?;
    let Some(file) = find_artifact(&found, version) else {
        return Err(StoreError::NoArtifact {
            version: version.into(),
        });
    };
    let (_, mut chunks) = blobs.read(BUCKET, &file.id, 0, None).await?;
    let mut wasm = Vec::with_capacity(usize::try_from(file.length).unwrap_or_default());
    while let Some(chunk) = chunks.recv().await {
        wasm.extend_from_slice(&chunk?);
    }
    if CompileCache::digest(&wasm) != version {
        return Err(StoreError::Damaged {
            version: version.into(),
        });
    }
    Ok(wasm)
}

pub(crate) async fn add_record(
    blobs: &BlobStore,
    record: &VersionRecord,
) -> Result<(), StoreError> {
    create(
        blobs,
        format!("{}-{}.record", record.component, record.deployed_at_ms),
        &Stored::Record(record.into()),
        Bytes::new(),
    )
    .await
}

/// The records among `found` that belong to `component`, oldest first.
fn records_of(found: &[FileInfo], component: &str) -> Vec<VersionRecord> {
    let mut records: Vec<(u64, &str, VersionRecord)> = found
        .iter()
        .filter_map(|f| match Stored::from_metadata(f)? {
            Stored::Record(r) if r.component == component => {
                Some((f.uploaded_at, f.id.as_str(), r.into()))
            }
            _ => None,
        })
        .collect();
    // Ids are ObjectIds: they order files written in the same millisecond.
    records.sort_by(|a, b| (a.2.deployed_at_ms, a.0, a.1).cmp(&(b.2.deployed_at_ms, b.0, b.1)));
    records.into_iter().map(|(_, _, r)| r).collect()
}

/// Every record of `component`, oldest first.
pub(crate) async fn records(
    blobs: &BlobStore,
    component: &str,
) -> Result<Vec<VersionRecord>, StoreError> {
    let found = blobs.find(BUCKET, "component", component).await?;
    Ok(records_of(&found, component))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, uploaded_at: u64, metadata: &[(&str, &str)]) -> FileInfo {
        FileInfo {
            id: id.into(),
            bucket: BUCKET.into(),
            filename: "x".into(),
            length: 0,
            content_type: Some("application/wasm".into()),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            uploaded_at,
        }
    }

    /// Written by hosts before records were a serde type, key by key.
    fn written_by_an_old_host(
        id: &str,
        version: &str,
        action: &str,
        at: &str,
        extra: &[(&str, &str)],
    ) -> FileInfo {
        let mut pairs = vec![
            ("spindle_kind", "record"),
            ("component", "probe"),
            ("version", version),
            ("action", action),
            ("source", "/x/probe.wasm"),
            ("host", "old@127.0.0.1:3000"),
            ("deployed_at_ms", at),
        ];
        pairs.extend_from_slice(extra);
        file(id, 1, &pairs)
    }

    #[test]
    fn records_of_old_hosts_are_read() {
        let found = vec![
            written_by_an_old_host("b", "v1", "deploy", "20", &[]),
            written_by_an_old_host("a", "v0", "manifest", "10", &[]),
            // Source and host were optional to the old reader too.
            file(
                "c",
                1,
                &[
                    ("spindle_kind", "record"),
                    ("component", "probe"),
                    ("version", "v0"),
                    ("action", "rollback"),
                    ("deployed_at_ms", "30"),
                ],
            ),
            // Skipped: damaged, someone else's, or not a record.
            written_by_an_old_host("d", "v9", "launch", "40", &[]),
            written_by_an_old_host("e", "v9", "deploy", "soon", &[]),
            file("f", 1, &[("spindle_kind", "artifact"), ("version", "v0")]),
        ];
        let records = records_of(&found, "probe");
        let seen: Vec<(&str, Action, u64, &str)> = records
            .iter()
            .map(|r| {
                (
                    r.version.as_str(),
                    r.action,
                    r.deployed_at_ms,
                    r.host.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("v0", Action::Manifest, 10, "old@127.0.0.1:3000"),
                ("v1", Action::Deploy, 20, "old@127.0.0.1:3000"),
                ("v0", Action::Rollback, 30, ""),
            ]
        );
        assert_eq!(records[0].source, "/x/probe.wasm");
        assert!(records_of(&found, "other").is_empty());
    }

    #[test]
    fn records_are_stored_under_the_keys_old_hosts_read() {
        let record = VersionRecord {
            component: "probe".into(),
            version: "v1".into(),
            action: Action::Watch,
            source: "/x/probe.wasm".into(),
            host: "h@127.0.0.1:3000".into(),
            deployed_at_ms: 1_709_210_096_789,
        };
        let mut metadata = Stored::Record((&record).into()).to_metadata().unwrap();
        metadata.sort();
        let expected = [
            ("action", "watch"),
            ("component", "probe"),
            ("deployed_at_ms", "1709210096789"),
            ("host", "h@127.0.0.1:3000"),
            ("source", "/x/probe.wasm"),
            ("spindle_kind", "record"),
            ("version", "v1"),
        ];
        let pairs: Vec<(&str, &str)> = metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, expected);
        let back = records_of(&[file("a", 1, &expected)], "probe");
        assert_eq!(back, [record]);
    }

    #[test]
    fn artifacts_are_found_by_kind_and_version() {
        let stored = Stored::Artifact {
            version: "v1".into(),
            component: "probe".into(),
        };
        let metadata = stored.to_metadata().unwrap();
        let pairs: Vec<(&str, &str)> = metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let found = vec![
            written_by_an_old_host("r", "v1", "deploy", "1", &[]),
            file("a", 1, &pairs),
        ];
        assert_eq!(
            find_artifact(&found, "v1").map(|f| f.id.as_str()),
            Some("a")
        );
        assert!(find_artifact(&found, "v2").is_none());
    }
}

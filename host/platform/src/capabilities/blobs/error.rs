//! What can go wrong in the blob store, each saying what was being done.
//! The backends and [`super::BlobStore`] use [`BlobError`]; only the
//! `spindle:blobs` imports turn it into the WIT `error` a component sees
//! (`From<BlobError> for wit::Error`), with the same message.

use super::wit;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A component asked for a bucket its manifest entry does not grant.
    #[error(
        "component `{component}` may not use bucket `{bucket}`; add \"{bucket}\" to its blob_buckets in spin.toml"
    )]
    PermissionDenied { component: String, bucket: String },

    /// No file with this id in this bucket.
    #[error("no file {id} in bucket `{bucket}`")]
    NotFound { bucket: String, id: String },

    /// A malformed id, bucket name, metadata key or range.
    #[error("{0}")]
    Invalid(String),

    /// The backend failed or did not answer while `doing` something.
    #[error("{doing}: {cause}")]
    Backend { doing: &'static str, cause: String },

    /// Stored data that does not match its description (a missing or
    /// damaged chunk, a data file shorter than recorded).
    #[error("{0}")]
    Damaged(String),

    /// The backend has no room left; nothing was stored.
    #[error("{doing}: the disk of the blob store is full ({cause})")]
    StorageFull { doing: &'static str, cause: String },
}

impl BlobError {
    /// A backend failure while `doing` something.
    pub(crate) fn backend(doing: &'static str, cause: impl std::fmt::Display) -> Self {
        BlobError::Backend {
            doing,
            cause: cause.to_string(),
        }
    }

    pub(crate) fn not_found(bucket: &str, id: impl std::fmt::Display) -> Self {
        BlobError::NotFound {
            bucket: bucket.to_string(),
            id: id.to_string(),
        }
    }

    /// A write that failed: a full disk is said so, so the caller can
    /// answer 507 instead of "try again".
    pub(crate) fn write_failed(doing: &'static str, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                BlobError::StorageFull {
                    doing,
                    cause: e.to_string(),
                }
            }
            _ => BlobError::backend(doing, e),
        }
    }
}

impl From<BlobError> for wit::Error {
    fn from(e: BlobError) -> Self {
        let message = e.to_string();
        match e {
            BlobError::PermissionDenied { .. } => wit::Error::PermissionDenied(message),
            BlobError::NotFound { .. } => wit::Error::NotFound(message),
            BlobError::Invalid(_) => wit::Error::Invalid(message),
            BlobError::Backend { .. } | BlobError::Damaged(_) => wit::Error::Backend(message),
            BlobError::StorageFull { .. } => wit::Error::StorageFull(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_see_the_same_message_under_the_wit_variant() {
        let e = BlobError::write_failed(
            "writing data",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("writing data: the disk of the blob store is full ("),
            "{shown}"
        );
        assert!(matches!(wit::Error::from(e), wit::Error::StorageFull(m) if m == shown));
        let e = BlobError::not_found("videos", "0123");
        assert_eq!(e.to_string(), "no file 0123 in bucket `videos`");
        assert!(matches!(wit::Error::from(e), wit::Error::NotFound(_)));
        let e = BlobError::Damaged("file 1 is missing chunk 2".into());
        assert!(
            matches!(wit::Error::from(e), wit::Error::Backend(m) if m == "file 1 is missing chunk 2")
        );
    }
}

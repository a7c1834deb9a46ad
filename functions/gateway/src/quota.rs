//! Per-account limits on `/upload`: a storage quota (bytes of the account's
//! videos plus MP3s, variable `storage_quota_bytes`) and a cap on its jobs
//! queued or processing (variable `max_jobs_in_flight`). Beyond them the
//! upload is refused, saying what is used and what is allowed, and nothing
//! is stored.
//!
//! Usage is read from the blob store's metadata (`owner`) at each upload.
//! Two uploads racing from one account may each see the other not yet
//! stored, so the quota can be passed by at most what is in flight at once
//! (itself capped by `max_jobs_in_flight`).

use spin_sdk::http::{HeaderName, StatusCode};
use spin_sdk::variables;

use crate::bindings::blobs::store;
use crate::errors::{ApiError, blob_error};
use crate::expiry::Ttl;
use crate::{MP3S_BUCKET, VIDEOS_BUCKET, metadata};

/// `storage_quota_bytes` when undefined: 10 GiB.
pub const DEFAULT_STORAGE_QUOTA_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// `max_jobs_in_flight` when undefined.
pub const DEFAULT_MAX_JOBS_IN_FLIGHT: u64 = 5;
/// When to try again after too many jobs in flight: about a conversion.
const RETRY_AFTER_SECS: &str = "30";

/// What one account may use.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub storage_bytes: u64,
    pub jobs_in_flight: u64,
}

/// What one account uses now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub bytes: u64,
    pub jobs_in_flight: u64,
}

/// The most an upload may be, and which limit says so.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// The server's `max_upload_bytes`.
    Upload(u64),
    /// The room left in the account's quota.
    Quota { used: u64, allowed: u64 },
}

impl Bound {
    /// The tighter of the upload limit and the room left in the quota.
    pub fn for_upload(max_upload_bytes: u64, quota: Quota, usage: Usage) -> Bound {
        let room = quota.storage_bytes.saturating_sub(usage.bytes);
        if room < max_upload_bytes {
            Bound::Quota {
                used: usage.bytes,
                allowed: quota.storage_bytes,
            }
        } else {
            Bound::Upload(max_upload_bytes)
        }
    }

    pub fn max(&self) -> u64 {
        match *self {
            Bound::Upload(max) => max,
            Bound::Quota { used, allowed } => allowed.saturating_sub(used),
        }
    }

    /// The 413 for an upload past this bound.
    pub fn exceeded(&self) -> ApiError {
        let message = match *self {
            Bound::Upload(max) => format!(
                "the upload is larger than this server's limit of {max} bytes (max_upload_bytes)"
            ),
            Bound::Quota { used, allowed } => format!(
                "this upload would pass your storage quota: your videos and MP3s use {used} of {allowed} bytes, so at most {} more fit; delete files you no longer need",
                allowed.saturating_sub(used)
            ),
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
}

/// The 429 when `usage` has as many jobs in flight as `quota` allows.
pub fn check_in_flight(quota: Quota, usage: Usage) -> Result<(), ApiError> {
    if usage.jobs_in_flight < quota.jobs_in_flight {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "you have {} jobs queued or processing and at most {} may be at once; upload again when one has finished",
            usage.jobs_in_flight, quota.jobs_in_flight
        ),
    )
    .with_header(HeaderName::from_static("retry-after"), RETRY_AFTER_SECS))
}

/// The limits from their variables.
pub async fn limits() -> Result<Quota, ApiError> {
    Ok(Quota {
        storage_bytes: variable("storage_quota_bytes", DEFAULT_STORAGE_QUOTA_BYTES).await?,
        jobs_in_flight: variable("max_jobs_in_flight", DEFAULT_MAX_JOBS_IN_FLIGHT).await?,
    })
}

/// What `owner` stores and has in flight; expired MP3s are deleted on the
/// way and not counted.
pub async fn usage(owner: &str) -> Result<Usage, ApiError> {
    let ttl = Ttl::load().await?;
    let mut usage = Usage::default();
    for bucket in [VIDEOS_BUCKET, MP3S_BUCKET] {
        let files = store::find(bucket.to_owned(), "owner".to_owned(), owner.to_owned())
            .await
            .map_err(|e| blob_error("could not read your storage use", e))?;
        for file in files {
            if bucket == MP3S_BUCKET && ttl.expired(file.uploaded_at) {
                crate::expiry::forget(&file).await;
                continue;
            }
            usage.bytes = usage.bytes.saturating_add(file.length);
            let state = metadata(&file.metadata, "state");
            if bucket == VIDEOS_BUCKET && matches!(state, None | Some("queued" | "processing")) {
                usage.jobs_in_flight += 1;
            }
        }
    }
    Ok(usage)
}

/// A whole number from variable `name`, or `default` when undefined.
async fn variable(name: &str, default: u64) -> Result<u64, ApiError> {
    match variables::get(name).await {
        Ok(raw) => parse(name, &raw),
        Err(variables::Error::Undefined(_)) => Ok(default),
        Err(e) => Err(ApiError::unavailable(format!(
            "could not read the {name} variable: {e}"
        ))),
    }
}

fn parse(name: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::internal(format!(
            "server misconfigured: {name} must be a whole number, not {raw:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        storage_bytes: 1000,
        jobs_in_flight: 2,
    };

    #[test]
    fn the_tighter_limit_bounds_the_upload() {
        let roomy = Usage {
            bytes: 100,
            jobs_in_flight: 0,
        };
        assert!(matches!(
            Bound::for_upload(500, QUOTA, roomy),
            Bound::Upload(500)
        ));
        let full = Usage {
            bytes: 800,
            jobs_in_flight: 0,
        };
        let bound = Bound::for_upload(500, QUOTA, full);
        assert_eq!(bound.max(), 200);
        let e = bound.exceeded();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            e.message().contains("use 800 of 1000 bytes"),
            "{}",
            e.message()
        );
        let over = Usage {
            bytes: 1200,
            jobs_in_flight: 0,
        };
        assert_eq!(Bound::for_upload(500, QUOTA, over).max(), 0);
    }

    #[test]
    fn jobs_in_flight_are_capped() {
        let one = Usage {
            bytes: 0,
            jobs_in_flight: 1,
        };
        assert!(check_in_flight(QUOTA, one).is_ok());
        let two = Usage {
            bytes: 0,
            jobs_in_flight: 2,
        };
        let e = check_in_flight(QUOTA, two).unwrap_err();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            e.message().contains("2 jobs queued or processing"),
            "{}",
            e.message()
        );
        assert!(parse("x", "ten").is_err());
    }
}

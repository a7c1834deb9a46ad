//! One delivery's claim on a job: who converts it now.
//!
//! Two deliveries of one message can run at once (a RabbitMQ connection
//! drops while a conversion goes on and the broker hands the message to
//! another worker). The video's metadata key `claim` holds
//! `"<token> <expires-unix-ms>"`; it is taken and renewed with
//! compare-and-set on the blob store, so exactly one delivery converts and
//! records the result. The holder renews the lease every third of
//! [`LEASE`]; a holder that died loses the job to the next delivery once
//! its lease has run out. An empty value means nobody holds it.
//!
//! Every write under the claim (renewals, progress, the outcome) is a
//! compare-and-set on the claim's value, so a job deleted meanwhile is
//! never written back: its writes find no file and report [`Lost::Gone`].

use spindle_platform::capabilities::blobs::{BlobError, BlobStore, FileInfo};
use spindle_platform::clock::now_ms;
use std::time::Duration;

use crate::job::VIDEOS;

/// The metadata key of the claim.
pub const CLAIM: &str = "claim";
/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);

/// A claim as stored: the holder's token and when it runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub token: String,
    pub expires_ms: u64,
}

impl Held {
    fn parse(value: &str) -> Option<Held> {
        let (token, expires) = value.split_once(' ')?;
        Some(Held {
            token: token.to_string(),
            expires_ms: expires.parse().ok()?,
        })
    }

    /// The claim `info` carries that has not run out, if any.
    pub fn live(info: &FileInfo) -> Option<Held> {
        crate::job::meta(info, CLAIM)
            .and_then(Held::parse)
            .filter(|held| held.expires_ms > now_ms())
    }
}

/// This delivery's claim on the job of `video_fid`.
pub struct Claim {
    blobs: BlobStore,
    video_fid: String,
    token: String,
    /// The stored value, as the next compare-and-set expects it.
    value: String,
}

/// Why a claim could not be taken or kept.
pub enum Lost {
    /// Another delivery holds (or just took) the job.
    Taken,
    /// The job's video is gone: its owner deleted the job.
    Gone,
    Backend(BlobError),
}

impl From<BlobError> for Lost {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound { .. } => Lost::Gone,
            e => Lost::Backend(e),
        }
    }
}

impl Claim {
    /// Takes the job of `video` unless another delivery holds a live claim:
    /// the claim and the `set` pairs are written at once, and only if the
    /// stored claim and state are still what `video` shows.
    pub async fn take(
        blobs: &BlobStore,
        video: &FileInfo,
        set: Vec<(String, String)>,
    ) -> Result<Claim, Lost> {
        if Held::live(video).is_some() {
            return Err(Lost::Taken);
        }
        let token = uuid_token();
        let value = stamp(&token);
        let expect = vec![
            (
                CLAIM.to_string(),
                crate::job::meta(video, CLAIM).map(str::to_string),
            ),
            (
                "state".to_string(),
                crate::job::meta(video, "state").map(str::to_string),
            ),
        ];
        let mut pairs = vec![(CLAIM.to_string(), value.clone())];
        pairs.extend(set);
        match blobs
            .update_metadata_if(VIDEOS, &video.id, expect, pairs)
            .await
        {
            Ok(Some(_)) => Ok(Claim {
                blobs: blobs.clone(),
                video_fid: video.id.clone(),
                token,
                value,
            }),
            Ok(None) => Err(Lost::Taken),
            Err(e) => Err(e.into()),
        }
    }

    /// Records `set` (progress) while keeping the claim.
    pub async fn report(&self, set: Vec<(String, String)>) -> Result<(), Lost> {
        self.swap(set).await
    }

    /// Extends the lease; `Lost::Taken` when the claim is no longer ours.
    pub async fn renew(&mut self) -> Result<(), Lost> {
        let value = stamp(&self.token);
        self.swap(vec![(CLAIM.to_string(), value.clone())]).await?;
        self.value = value;
        Ok(())
    }

    /// Writes `set` and gives the claim up, if it is still ours.
    pub async fn finish(self, mut set: Vec<(String, String)>) -> Result<(), Lost> {
        set.push((CLAIM.to_string(), String::new()));
        self.swap(set).await
    }

    async fn swap(&self, set: Vec<(String, String)>) -> Result<(), Lost> {
        let expect = vec![(CLAIM.to_string(), Some(self.value.clone()))];
        match self
            .blobs
            .update_metadata_if(VIDEOS, &self.video_fid, expect, set)
            .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Lost::Taken),
            Err(e) => Err(e.into()),
        }
    }
}

fn stamp(token: &str) -> String {
    let lease_ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    format!("{token} {}", now_ms().saturating_add(lease_ms))
}

fn uuid_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_and_expire() {
        let held = Held::parse("abc 123").expect("parses");
        assert_eq!(held.token, "abc");
        assert_eq!(held.expires_ms, 123);
        assert!(Held::parse("").is_none(), "empty means free");
        assert!(Held::parse("abc notanumber").is_none());
        let stamped = Held::parse(&stamp("t")).expect("stamped");
        assert!(stamped.expires_ms > now_ms() + 20_000);
    }
}

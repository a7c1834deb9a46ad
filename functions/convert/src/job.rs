//! One `video` message, from queued to `done` or `failed`.
//!
//! The job's state lives in the video's blob metadata (`state`, `mp3_fid`,
//! `error`), where the gateway's `/jobs/{id}` reads it. Every step can be
//! repeated: delivery is at-least-once, so a redelivered message must not
//! make a second MP3 or lose one.
//!
//! - A job already `done` only re-announces its MP3 (the earlier attempt may
//!   have stopped before publishing; notify sends one email per MP3).
//! - An MP3 already stored for the job (found by `job_id`) is reused: blobs
//!   become visible only once complete, so a found one is whole.
//! - A video ffmpeg cannot read fails the job with ffmpeg's reason in words
//!   and dead-letters the message; backend trouble is retried, and the last
//!   attempt marks the job failed before the message is dead-lettered.

use crate::ffmpeg::{Failure, Ffmpeg};
use crate::message::JobMessage;
use bytes::Bytes;
use spindle_platform::capabilities::blobs::{BlobStore, Error as BlobError, FileInfo, NewFile};
use spindle_platform::capabilities::queue::{Broker, Delivery, Outcome};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

pub const VIDEOS: &str = "videos";
pub const MP3S: &str = "mp3s";
pub const MP3_QUEUE: &str = "mp3";

/// What a conversion needs; shared by every message it handles.
pub struct Converter {
    pub(crate) blobs: BlobStore,
    pub(crate) broker: Broker,
    pub(crate) ffmpeg: Ffmpeg,
    pub(crate) work_dir: PathBuf,
    /// The trigger's attempts: the last one marks the job failed.
    pub(crate) max_attempts: u32,
    /// Whether a video keeps its bytes once its job has ended.
    pub(crate) keep_videos: bool,
}

/// A step that failed and how to settle the message.
enum Stop {
    Retry(String),
    /// The job fails: its video is marked `failed`, the message dead-lettered.
    Fail(String),
    /// The message is not the stored job's (forged or mismatched): it is
    /// dead-lettered and the video it names is left alone.
    Reject(String),
}

fn blob_reason(e: &BlobError) -> String {
    match e {
        BlobError::PermissionDenied(m)
        | BlobError::NotFound(m)
        | BlobError::Invalid(m)
        | BlobError::Aborted(m)
        | BlobError::Backend(m)
        | BlobError::StorageFull(m) => m.clone(),
    }
}

fn meta<'a>(info: &'a FileInfo, key: &str) -> Option<&'a str> {
    info.metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Converter {
    pub async fn handle(&self, delivery: Delivery) -> Outcome {
        let job = match JobMessage::parse_video(&delivery.body) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(message_id = %delivery.message_id, "{reason}");
                return Outcome::DeadLetter(reason);
            }
        };
        match self.run(&job).await {
            Ok(()) => Outcome::Ack,
            Err(Stop::Fail(reason)) => {
                tracing::warn!(job_id = %job.job_id, "job failed: {reason}");
                self.mark_failed(&job, &reason).await;
                Outcome::DeadLetter(reason)
            }
            Err(Stop::Reject(reason)) => {
                tracing::warn!(job_id = %job.job_id, message_id = %delivery.message_id, "message rejected: {reason}");
                Outcome::DeadLetter(reason)
            }
            Err(Stop::Retry(reason)) => {
                tracing::warn!(job_id = %job.job_id, attempt = delivery.attempt, "will retry: {reason}");
                if delivery.attempt >= self.max_attempts {
                    let reason = format!(
                        "conversion failed {} times; last error: {reason}",
                        delivery.attempt
                    );
                    self.mark_failed(&job, &reason).await;
                }
                Outcome::Retry(reason)
            }
        }
    }

    async fn run(&self, job: &JobMessage) -> Result<(), Stop> {
        let video = match self.blobs.stat(VIDEOS, &job.video_fid).await {
            Ok(v) => v,
            Err(e @ (BlobError::NotFound(_) | BlobError::Invalid(_))) => {
                return Err(Stop::Fail(format!(
                    "the uploaded video is gone: {}",
                    blob_reason(&e)
                )));
            }
            Err(e) => return Err(Stop::Retry(blob_reason(&e))),
        };
        // Only what was stored with the upload is trusted: a message naming
        // someone else's video, or another job, converts nothing.
        if meta(&video, "owner") != Some(job.username.as_str())
            || meta(&video, "job_id") != Some(job.job_id.as_str())
        {
            return Err(Stop::Reject(format!(
                "the message does not match the stored video {} (its job or account differs); nothing was converted",
                job.video_fid
            )));
        }
        match (meta(&video, "state"), meta(&video, "mp3_fid")) {
            (Some("done"), Some(mp3)) => {
                tracing::info!(job_id = %job.job_id, "already converted; announcing the MP3 again");
                return self.announce(job, mp3).await;
            }
            (Some("failed"), _) => {
                tracing::info!(job_id = %job.job_id, "already failed; nothing to do");
                return Ok(());
            }
            _ => {}
        }
        let mp3 = match self.existing_mp3(job).await? {
            Some(id) => id,
            None => self.convert(job, &video).await?,
        };
        self.blobs
            .update_metadata(
                VIDEOS,
                &job.video_fid,
                vec![
                    ("state".into(), "done".into()),
                    ("mp3_fid".into(), mp3.clone()),
                ],
            )
            .await
            .map_err(|e| Stop::Retry(blob_reason(&e)))?;
        tracing::info!(job_id = %job.job_id, mp3_fid = %mp3, "converted");
        self.release_video(job).await;
        self.announce(job, &mp3).await
    }

    /// An MP3 an earlier attempt stored for this job; extra copies (from
    /// two deliveries racing after a lost connection) are removed.
    async fn existing_mp3(&self, job: &JobMessage) -> Result<Option<String>, Stop> {
        let mut found = self
            .blobs
            .find(MP3S, "job_id", &job.job_id)
            .await
            .map_err(|e| Stop::Retry(blob_reason(&e)))?;
        found.sort_by_key(|f| f.uploaded_at);
        for extra in found.iter().skip(1) {
            tracing::warn!(job_id = %job.job_id, mp3_fid = %extra.id, "removing a duplicate MP3");
            let _ = self.blobs.delete(MP3S, &extra.id).await;
        }
        Ok(found.into_iter().next().map(|f| f.id))
    }

    async fn convert(&self, job: &JobMessage, video: &FileInfo) -> Result<String, Stop> {
        self.blobs
            .update_metadata(
                VIDEOS,
                &job.video_fid,
                vec![("state".into(), "processing".into())],
            )
            .await
            .map_err(|e| Stop::Retry(blob_reason(&e)))?;
        // ffmpeg needs a seekable input: many MP4s keep their index at the end.
        let spool = self.spool(video).await?;
        let media = self
            .ffmpeg
            .probe(spool.path(), &video.filename)
            .await
            .map_err(|failure| match failure {
                Failure::Unconvertible(reason) => Stop::Fail(reason),
                Failure::Transient(reason) => Stop::Retry(reason),
            })?;
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        let stem = video
            .filename
            .rsplit_once('.')
            .map_or(video.filename.as_str(), |(stem, _)| stem);
        let file = NewFile {
            filename: format!("{stem}.mp3"),
            content_type: Some("audio/mpeg".into()),
            metadata: vec![
                ("owner".into(), job.username.clone()),
                ("job_id".into(), job.job_id.clone()),
                ("video_fid".into(), job.video_fid.clone()),
            ],
        };
        let started = std::time::Instant::now();
        let (converted, stored) = tokio::join!(
            self.ffmpeg
                .to_mp3(spool.path(), &media, &video.filename, tx),
            self.blobs.create(MP3S, file, rx)
        );
        drop(spool);
        let outcome = match (converted, stored) {
            (Ok(()), Ok(info)) if info.length > 0 => {
                tracing::info!(job_id = %job.job_id, bytes = info.length, "ffmpeg finished in {:.1?}", started.elapsed());
                return Ok(info.id);
            }
            (Ok(()), Ok(info)) => (
                Some(info),
                Stop::Fail("conversion failed: ffmpeg produced no audio from this file".into()),
            ),
            (Err(Failure::Unconvertible(reason)), stored) => (stored.ok(), Stop::Fail(reason)),
            (Err(Failure::Transient(reason)), stored) => (stored.ok(), Stop::Retry(reason)),
            (Ok(()), Err(e)) => (
                None,
                Stop::Retry(format!("storing the MP3: {}", blob_reason(&e))),
            ),
        };
        if let (Some(partial), _) = &outcome
            && let Err(e) = self.blobs.delete(MP3S, &partial.id).await
        {
            tracing::warn!(mp3_fid = %partial.id, "could not remove an unfinished MP3: {}", blob_reason(&e));
        }
        Err(outcome.1)
    }

    /// Copies the video into a temporary file, chunk by chunk.
    async fn spool(&self, video: &FileInfo) -> Result<tempfile::NamedTempFile, Stop> {
        let spool = tempfile::Builder::new()
            .prefix("spindle-convert-")
            .tempfile_in(&self.work_dir)
            .map_err(|e| {
                Stop::Retry(format!(
                    "cannot create a file in {}: {e}",
                    self.work_dir.display()
                ))
            })?;
        let io = |e: std::io::Error| Stop::Retry(format!("spooling the video: {e}"));
        let mut file = tokio::fs::File::from_std(spool.reopen().map_err(io)?);
        let (_, mut chunks) = self
            .blobs
            .read(VIDEOS, &video.id, 0, None)
            .await
            .map_err(|e| Stop::Retry(blob_reason(&e)))?;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|e| Stop::Retry(blob_reason(&e)))?;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(spool)
    }

    /// Publishes the `mp3` message (again, on a redelivery).
    async fn announce(&self, job: &JobMessage, mp3: &str) -> Result<(), Stop> {
        self.broker
            .publish(MP3_QUEUE, &job.mp3_ready(mp3))
            .await
            .map_err(|e| Stop::Retry(format!("publishing to `{MP3_QUEUE}`: {e}")))
    }

    async fn mark_failed(&self, job: &JobMessage, reason: &str) {
        let set = vec![
            ("state".into(), "failed".into()),
            ("error".into(), reason.to_string()),
        ];
        match self
            .blobs
            .update_metadata(VIDEOS, &job.video_fid, set)
            .await
        {
            Ok(_) => self.release_video(job).await,
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, "could not mark the job failed: {}", blob_reason(&e));
            }
        }
    }

    /// A job that has ended needs only its record: the video's bytes go
    /// (unless `keep_videos`), its metadata stays for `/jobs`. Best effort:
    /// a video left whole costs space, not correctness.
    async fn release_video(&self, job: &JobMessage) {
        if self.keep_videos {
            return;
        }
        if let Err(e) = self.blobs.drop_content(VIDEOS, &job.video_fid).await {
            tracing::warn!(job_id = %job.job_id, "could not remove the ended job's video: {}", blob_reason(&e));
        }
    }
}

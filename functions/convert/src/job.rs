//! One `video` message, from queued to `done` or `failed`.
//!
//! The job's state lives in the video's blob metadata (`state`, `mp3_fid`,
//! `error`, `announced`, `claim`), where the gateway's `/jobs/{id}` reads
//! it. Delivery is at-least-once, and two deliveries of one message can
//! even run at once, so:
//!
//! - A delivery converts only under a claim on the job (`claim.rs`): taken
//!   and released with compare-and-set, so one delivery at a time converts,
//!   and only the holder records `done` or `failed`. A delivery that finds
//!   the job claimed by a live holder defers (it comes back later without
//!   using an attempt): if the holder dies, its lease runs out and the next
//!   delivery takes over.
//! - A job already `done` is announced once: the `mp3` message is published
//!   and then `announced` is set; a delivery that finds `announced` acks.
//!   (A crash between the two announces twice; notify sends one email per
//!   MP3 anyway.)
//! - An MP3 already stored for the job (found by `job_id`) is reused: blobs
//!   become visible only once complete, so a found one is whole.
//! - A video ffmpeg cannot read fails the job with ffmpeg's reason in words;
//!   the job is marked `failed` before the message is dead-lettered, and if
//!   that mark cannot be written the message is retried instead. Backend
//!   trouble is retried; when the queue gives up (attempts or deliveries
//!   exhausted), its dead-letter hook, [`Converter::dead_lettered`], marks
//!   the job failed, keeping the video so an operator's replay can convert
//!   it. A replayed message (`Delivery::replayed`) takes a `failed` job up
//!   again.
//! - While converting, the job carries `progress` and `duration_secs`
//!   (`progress.rs`), written under the claim.
//! - A job its owner deletes (`DELETE /jobs/{id}` removes the video, then
//!   the MP3s) is never written back: every write is a compare-and-set on
//!   the video, which then finds no file ([`Stop::Gone`]). The delivery
//!   stops ffmpeg, removes every MP3 stored for the job and acks; a
//!   delivery of a queued job that was deleted finds no video and does the
//!   same. A worker that crashes after storing an MP3 of a deleted job
//!   leaves it until the message's redelivery sweeps it. What remains: a
//!   job deleted between the check before announcing and the publish gets
//!   its "MP3 ready" message, which notify dead-letters (the MP3 is gone).

use crate::claim::{Claim, Held, Lost};
use crate::ffmpeg::{Failure, Ffmpeg};
use crate::message::JobMessage;
use crate::progress::{DURATION_SECS, PROGRESS, Progress, REPORT_EVERY, format_secs};
use bytes::Bytes;
use spindle_platform::capabilities::blobs::{BlobError, BlobStore, FileInfo, NewFile};
use spindle_platform::capabilities::queue::{Broker, Delivery, Outcome};
use spindle_platform::metrics::ConversionMetrics;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

pub const VIDEOS: &str = "videos";
pub const MP3S: &str = "mp3s";
pub const MP3_QUEUE: &str = "mp3";

/// Set on the video once the `mp3` message for its MP3 is published.
const ANNOUNCED: &str = "announced";

/// The video's size, recorded when conversion starts: the bytes go once
/// the job ends, and the job list still shows how large the upload was.
const VIDEO_BYTES: &str = "video_bytes";

/// What a conversion needs; shared by every message it handles.
pub struct Converter {
    pub(crate) blobs: BlobStore,
    pub(crate) broker: Broker,
    pub(crate) ffmpeg: Ffmpeg,
    pub(crate) work_dir: PathBuf,
    /// Whether a video keeps its bytes once its job has ended.
    pub(crate) keep_videos: bool,
    pub(crate) metrics: ConversionMetrics,
}

/// A step that failed and how to settle the message.
enum Stop {
    Retry(String),
    /// The job fails: its video is marked `failed`, the message dead-lettered.
    Fail(String),
    /// The message is not the stored job's (forged or mismatched): it is
    /// dead-lettered and the video it names is left alone.
    Reject(String),
    /// Another delivery holds the job: come back later.
    Defer(String),
    /// Another delivery took the job over (this one stalled past its
    /// lease): it finishes the job, this delivery's message can go.
    Superseded,
    /// The job was deleted: what was made for it goes, the message too.
    Gone,
}

impl From<Lost> for Stop {
    fn from(lost: Lost) -> Self {
        match lost {
            Lost::Taken => Stop::Superseded,
            Lost::Gone => Stop::Gone,
            Lost::Backend(e) => Stop::Retry(e.to_string()),
        }
    }
}

pub(crate) fn meta<'a>(info: &'a FileInfo, key: &str) -> Option<&'a str> {
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
        match self.run(&job, delivery.replayed).await {
            Ok(()) => Outcome::Ack,
            Err(Stop::Fail(reason)) => Outcome::DeadLetter(reason),
            Err(Stop::Reject(reason)) => {
                tracing::warn!(job_id = %job.job_id, message_id = %delivery.message_id, "message rejected: {reason}");
                Outcome::DeadLetter(reason)
            }
            Err(Stop::Retry(reason)) => {
                tracing::warn!(job_id = %job.job_id, attempt = delivery.attempt, "will retry: {reason}");
                self.metrics.ended("retried");
                Outcome::Retry(reason)
            }
            Err(Stop::Defer(reason)) => Outcome::Defer(reason),
            Err(Stop::Superseded) => {
                tracing::warn!(job_id = %job.job_id, "another delivery took this job over; it finishes it");
                Outcome::Ack
            }
            Err(Stop::Gone) => match self.forget(&job).await {
                Ok(()) => {
                    tracing::info!(job_id = %job.job_id, "the job was deleted; nothing of it is kept");
                    Outcome::Ack
                }
                Err(reason) => {
                    tracing::warn!(job_id = %job.job_id, "will retry removing a deleted job's MP3: {reason}");
                    Outcome::Retry(reason)
                }
            },
        }
    }

    /// Removes every MP3 stored for a deleted job (of the message's
    /// account), so none outlives its job.
    async fn forget(&self, job: &JobMessage) -> Result<(), String> {
        let found = self
            .blobs
            .find(MP3S, "job_id", &job.job_id)
            .await
            .map_err(|e| format!("looking for the deleted job's MP3: {e}"))?;
        for mp3 in found
            .iter()
            .filter(|f| meta(f, "owner") == Some(job.username.as_str()))
        {
            match self.blobs.delete(MP3S, &mp3.id).await {
                Ok(()) | Err(BlobError::NotFound { .. }) => {}
                Err(e) => return Err(format!("removing the deleted job's MP3 {}: {e}", mp3.id)),
            }
        }
        Ok(())
    }

    /// The queue's dead-letter hook: a job whose message is given up on
    /// ends `failed` with the reason, unless it ended already or the
    /// message is not the stored job's. While a delivery holds a live claim
    /// on the job the dead letter waits (an error postpones it).
    pub async fn dead_lettered(&self, delivery: Delivery, reason: String) -> Result<(), String> {
        let Ok(job) = JobMessage::parse_video(&delivery.body) else {
            return Ok(());
        };
        let video = match self.blobs.stat(VIDEOS, &job.video_fid).await {
            Ok(v) => v,
            Err(BlobError::NotFound { .. } | BlobError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(format!("reading the job's video: {e}")),
        };
        if !belongs(&video, &job) || matches!(meta(&video, "state"), Some("done" | "failed")) {
            return Ok(());
        }
        if let Some(held) = Held::live(&video) {
            // Alive, it will record the outcome; dead, its lease runs out.
            return Err(format!(
                "a delivery holds job {} until {} ms; the dead letter waits for it",
                job.job_id, held.expires_ms
            ));
        }
        let set = vec![
            ("state".to_string(), "failed".to_string()),
            ("error".to_string(), reason),
        ];
        let expect = vec![(
            crate::claim::CLAIM.to_string(),
            meta(&video, crate::claim::CLAIM).map(str::to_string),
        )];
        match self
            .blobs
            .update_metadata_if(VIDEOS, &job.video_fid, expect, set)
            .await
        {
            Ok(Some(_)) => {
                tracing::warn!(job_id = %job.job_id, "job failed: its message was dead-lettered");
                self.metrics.ended("failed");
                Ok(())
            }
            Ok(None) => Err("the job changed while it was being marked failed".into()),
            Err(e) => Err(format!("marking the job failed: {e}")),
        }
    }

    async fn run(&self, job: &JobMessage, replayed: bool) -> Result<(), Stop> {
        let video = match self.blobs.stat(VIDEOS, &job.video_fid).await {
            Ok(v) => v,
            // Deleted by its owner (or never stored: then there is
            // nothing to convert either).
            Err(BlobError::NotFound { .. }) => return Err(Stop::Gone),
            Err(e @ BlobError::Invalid(_)) => {
                return Err(Stop::Reject(format!("the message names no video: {e}")));
            }
            Err(e) => return Err(Stop::Retry(e.to_string())),
        };
        // Only what was stored with the upload is trusted: a message naming
        // someone else's video, or another job, converts nothing.
        if !belongs(&video, job) {
            return Err(Stop::Reject(format!(
                "the message does not match the stored video {} (its job or account differs); nothing was converted",
                job.video_fid
            )));
        }
        match (meta(&video, "state"), meta(&video, "mp3_fid")) {
            (Some("done"), Some(mp3)) => {
                if meta(&video, ANNOUNCED).is_some() {
                    tracing::info!(job_id = %job.job_id, "already converted and announced; nothing to do");
                    return Ok(());
                }
                tracing::info!(job_id = %job.job_id, "already converted; announcing the MP3");
                return self.announce(job, mp3).await;
            }
            (Some("failed"), _) if !replayed => {
                tracing::info!(job_id = %job.job_id, "already failed; nothing to do");
                return Ok(());
            }
            _ => {}
        }
        if let Some(held) = Held::live(&video) {
            return Err(Stop::Defer(format!(
                "another delivery is converting job {} (its claim runs until {} ms)",
                job.job_id, held.expires_ms
            )));
        }
        let mut start = vec![
            ("state".to_string(), "processing".to_string()),
            (PROGRESS.to_string(), "0".to_string()),
        ];
        if meta(&video, VIDEO_BYTES).is_none() {
            start.push((VIDEO_BYTES.to_string(), video.length.to_string()));
        }
        if meta(&video, "state") == Some("failed") {
            // A replay: the old reason no longer describes the job.
            start.push(("error".to_string(), String::new()));
        }
        let claim = match Claim::take(&self.blobs, &video, start).await {
            Ok(claim) => claim,
            Err(Lost::Taken) => {
                return Err(Stop::Defer(format!(
                    "another delivery took job {} a moment ago",
                    job.job_id
                )));
            }
            Err(lost) => return Err(lost.into()),
        };
        let (claim, converted, progress) = self.under_claim(claim, job, &video).await;
        let (mp3, created) = match converted {
            Ok(found) => found,
            Err(Stop::Fail(reason)) => {
                let set = vec![
                    ("state".to_string(), "failed".to_string()),
                    ("error".to_string(), reason.clone()),
                ];
                let Some(claim) = claim else {
                    return Err(Stop::Superseded);
                };
                claim.finish(set).await?;
                tracing::warn!(job_id = %job.job_id, "job failed: {reason}");
                self.metrics.ended("failed");
                // Nothing a replay could change: the video cannot be read.
                self.release_video(job).await;
                return Err(Stop::Fail(reason));
            }
            Err(stop) => {
                if let Some(claim) = claim {
                    // Let the next delivery start at once rather than after the lease.
                    let _ = claim.finish(Vec::new()).await;
                }
                return Err(stop);
            }
        };
        let Some(claim) = claim else {
            return Err(Stop::Superseded);
        };
        let mut done = vec![
            ("state".to_string(), "done".to_string()),
            ("mp3_fid".to_string(), mp3.clone()),
            (PROGRESS.to_string(), "100".to_string()),
        ];
        if let Some(secs) = progress.duration_secs {
            done.push((DURATION_SECS.to_string(), format_secs(secs)));
        }
        if let Err(lost) = claim.finish(done).await {
            if created && matches!(lost, Lost::Taken) {
                // The job is the other delivery's now: its MP3 counts.
                let _ = self.blobs.delete(MP3S, &mp3).await;
            }
            return Err(lost.into());
        }
        tracing::info!(job_id = %job.job_id, mp3_fid = %mp3, "converted");
        self.metrics.ended("done");
        self.release_video(job).await;
        self.announce(job, &mp3).await
    }

    /// Finds or makes the job's MP3 while renewing the claim and recording
    /// progress; stops early (killing ffmpeg) when the claim is lost or the
    /// job deleted. Returns the claim (none if lost), the MP3 id with
    /// whether this delivery created it, and the last progress.
    async fn under_claim(
        &self,
        mut claim: Claim,
        job: &JobMessage,
        video: &FileInfo,
    ) -> (Option<Claim>, Result<(String, bool), Stop>, Progress) {
        let (progress, seen) = watch::channel(Progress::default());
        let work = async {
            match self.existing_mp3(job).await? {
                Some(mp3) => {
                    let secs = meta(&mp3, DURATION_SECS).and_then(|s| s.parse().ok());
                    progress.send_modify(|p| p.duration_secs = secs);
                    Ok((mp3.id, false))
                }
                None => self
                    .convert(job, video, &progress)
                    .await
                    .map(|id| (id, true)),
            }
        };
        tokio::pin!(work);
        let mut renew = tokio::time::interval(crate::claim::LEASE / 3);
        renew.tick().await;
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What `Claim::take` wrote.
        let mut reported = Progress::default().pairs();
        let lost = loop {
            let kept = tokio::select! {
                result = &mut work => return (Some(claim), result, *seen.borrow()),
                _ = renew.tick() => claim.renew().await,
                _ = report.tick() => {
                    let pairs = seen.borrow().pairs();
                    if pairs == reported {
                        Ok(())
                    } else {
                        claim.report(pairs.clone()).await.map(|()| reported = pairs)
                    }
                }
            };
            match kept {
                Ok(()) => {}
                Err(Lost::Backend(e)) => {
                    // The lease still runs; the next write may get through.
                    tracing::warn!(job_id = %job.job_id, "could not update the claimed job: {e}");
                }
                Err(lost) => break lost,
            }
        };
        let stop = match lost {
            Lost::Gone => Stop::Gone,
            _ => Stop::Superseded,
        };
        (None, Err(stop), *seen.borrow())
    }

    /// An MP3 an earlier attempt stored for this job; extra copies (from
    /// two deliveries racing after a lost connection) are removed.
    async fn existing_mp3(&self, job: &JobMessage) -> Result<Option<FileInfo>, Stop> {
        let mut found = self
            .blobs
            .find(MP3S, "job_id", &job.job_id)
            .await
            .map_err(|e| Stop::Retry(e.to_string()))?;
        found.sort_by_key(|f| f.uploaded_at);
        for extra in found.iter().skip(1) {
            tracing::warn!(job_id = %job.job_id, mp3_fid = %extra.id, "removing a duplicate MP3");
            let _ = self.blobs.delete(MP3S, &extra.id).await;
        }
        Ok(found.into_iter().next())
    }

    async fn convert(
        &self,
        job: &JobMessage,
        video: &FileInfo,
        progress: &watch::Sender<Progress>,
    ) -> Result<String, Stop> {
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
        progress.send_modify(|p| p.duration_secs = media.duration);
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        let stem = video
            .filename
            .rsplit_once('.')
            .map_or(video.filename.as_str(), |(stem, _)| stem);
        let mut metadata = vec![
            ("owner".into(), job.username.clone()),
            ("job_id".into(), job.job_id.clone()),
            ("video_fid".into(), job.video_fid.clone()),
        ];
        if let Some(secs) = media.duration {
            // For a later delivery that reuses this MP3.
            metadata.push((DURATION_SECS.into(), format_secs(secs)));
        }
        let file = NewFile {
            filename: format!("{stem}.mp3"),
            content_type: Some("audio/mpeg".into()),
            metadata,
        };
        let started = std::time::Instant::now();
        let (converted, stored) = tokio::join!(
            self.ffmpeg
                .to_mp3(spool.path(), &media, &video.filename, tx, progress),
            self.blobs.create(MP3S, file, rx)
        );
        drop(spool);
        let outcome = match (converted, stored) {
            (Ok(()), Ok(info)) if info.length > 0 => {
                tracing::info!(job_id = %job.job_id, bytes = info.length, "ffmpeg finished in {:.1?}", started.elapsed());
                self.metrics.converted(started.elapsed(), media.duration);
                return Ok(info.id);
            }
            (Ok(()), Ok(info)) => (
                Some(info),
                Stop::Fail("conversion failed: ffmpeg produced no audio from this file".into()),
            ),
            (Err(Failure::Unconvertible(reason)), stored) => (stored.ok(), Stop::Fail(reason)),
            (Err(Failure::Transient(reason)), stored) => (stored.ok(), Stop::Retry(reason)),
            (Ok(()), Err(e)) => (None, Stop::Retry(format!("storing the MP3: {e}"))),
        };
        if let (Some(partial), _) = &outcome
            && let Err(e) = self.blobs.delete(MP3S, &partial.id).await
        {
            tracing::warn!(mp3_fid = %partial.id, "could not remove an unfinished MP3: {e}");
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
            .map_err(|e| Stop::Retry(e.to_string()))?;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|e| Stop::Retry(e.to_string()))?;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(spool)
    }

    /// Publishes the `mp3` message, then records that it did; a job
    /// deleted by now is not announced.
    async fn announce(&self, job: &JobMessage, mp3: &str) -> Result<(), Stop> {
        match self.blobs.stat(VIDEOS, &job.video_fid).await {
            Ok(_) => {}
            Err(BlobError::NotFound { .. }) => return Err(Stop::Gone),
            Err(e) => return Err(Stop::Retry(e.to_string())),
        }
        self.broker
            .publish(MP3_QUEUE, &job.mp3_ready(mp3))
            .await
            .map_err(|e| Stop::Retry(format!("publishing to `{MP3_QUEUE}`: {e}")))?;
        let announced = vec![(ANNOUNCED.to_string(), "true".to_string())];
        if let Err(e) = self
            .blobs
            .update_metadata(VIDEOS, &job.video_fid, announced)
            .await
        {
            // Published already: a redelivery would announce again, which
            // notify absorbs; not worth a retry that would do just that.
            tracing::warn!(job_id = %job.job_id, "could not record the announcement: {e}");
        }
        Ok(())
    }

    /// A job that has ended for good needs only its record: the video's
    /// bytes go (unless `keep_videos`), its metadata stays for `/jobs`.
    /// Best effort: a video left whole costs space, not correctness.
    async fn release_video(&self, job: &JobMessage) {
        if self.keep_videos {
            return;
        }
        match self.blobs.drop_content(VIDEOS, &job.video_fid).await {
            // Deleted meanwhile: the announcement's check stops there.
            Ok(_) | Err(BlobError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, "could not remove the ended job's video: {e}");
            }
        }
    }
}

/// Whether the stored video is the message's job, of the message's account.
fn belongs(video: &FileInfo, job: &JobMessage) -> bool {
    meta(video, "owner") == Some(job.username.as_str())
        && meta(video, "job_id") == Some(job.job_id.as_str())
}

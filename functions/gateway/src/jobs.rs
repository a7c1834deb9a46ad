//! `GET /jobs/{job_id}`: a job's state, read from its video's metadata.
//!
//! There is no job table: the upload stores the video with `job_id`,
//! `owner` and `state` metadata, and the convert worker updates `state`
//! (`processing`, `done`, `failed`) and sets `mp3_fid` or `error` on the same
//! file, with `progress`, `duration_secs` and `video_bytes` (the upload's
//! size, kept after its bytes are dropped). One record per job means status
//! can never disagree with the data. The list and the delete are in
//! `job_list.rs` and `job_delete.rs`.

use serde::Serialize;
use spin_sdk::http::StatusCode;

use crate::auth::Caller;
use crate::bindings::blobs::store;
use crate::errors::{ApiError, HttpResponse, blob_error, json};
use crate::{VIDEOS_BUCKET, metadata};

/// The answer to `GET /jobs/{job_id}`, and each job of `GET /jobs`.
#[derive(Debug, Serialize, PartialEq)]
pub struct JobStatus {
    pub job_id: String,
    pub status: String,
    pub video_fid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp3_fid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The uploaded file's name, as stored.
    pub filename: String,
    /// The uploaded file's size in bytes.
    pub size_bytes: u64,
    /// When the video was uploaded, in milliseconds since the Unix epoch.
    pub uploaded_at: u64,
    /// Percent converted: 0 while queued, 100 once done.
    pub progress: u8,
    /// The media's length, once the worker has read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
}

impl JobStatus {
    /// The status of the job whose video is `video`. A video without a
    /// `state` has not been touched by the worker yet, so it is queued.
    pub fn from_video(job_id: String, video: &store::FileInfo) -> Self {
        let get = |key| metadata(&video.metadata, key);
        let status = get("state").unwrap_or("queued").to_owned();
        // A job done before progress was recorded is whole all the same.
        let progress = get("progress")
            .and_then(|p| p.parse::<u8>().ok())
            .unwrap_or(if status == "done" { 100 } else { 0 })
            .min(100);
        JobStatus {
            job_id,
            video_fid: video.id.clone(),
            mp3_fid: get("mp3_fid").map(str::to_owned),
            error: get("error").filter(|e| !e.is_empty()).map(str::to_owned),
            filename: video.filename.clone(),
            size_bytes: get("video_bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(video.length),
            uploaded_at: video.uploaded_at,
            progress,
            duration_secs: get("duration_secs")
                .and_then(|d| d.parse::<f64>().ok())
                .filter(|d| d.is_finite() && *d >= 0.0),
            status,
        }
    }
}

/// Normalises a job id from the path: job ids are UUIDs, issued in the
/// lowercase hyphenated form, so any other spelling of one is accepted and
/// anything that is not one cannot name a job.
pub fn normalize_job_id(raw: &str) -> Option<String> {
    uuid::Uuid::try_parse(raw)
        .ok()
        .map(|id| id.hyphenated().to_string())
}

pub async fn status(caller: &Caller, raw_id: &str) -> Result<HttpResponse, ApiError> {
    let (job_id, video) = find(caller, raw_id).await?;
    Ok(json(StatusCode::OK, &JobStatus::from_video(job_id, &video)))
}

/// The job `raw_id` names and its video, if the caller may see it.
pub async fn find(caller: &Caller, raw_id: &str) -> Result<(String, store::FileInfo), ApiError> {
    // Same answer for a malformed id, an unknown job and someone else's job,
    // so the answer does not reveal which jobs exist.
    let not_found = || {
        ApiError::not_found(format!(
            "no job {raw_id:?} found for this account; use a job_id that POST /upload or GET /jobs returned"
        ))
    };
    let Some(job_id) = normalize_job_id(raw_id) else {
        return Err(not_found());
    };
    let videos = store::find(
        VIDEOS_BUCKET.to_owned(),
        "job_id".to_owned(),
        job_id.clone(),
    )
    .await
    .map_err(|e| blob_error("could not look up the job", e))?;
    let video = videos
        .into_iter()
        .find(|video| caller.may_access(metadata(&video.metadata, "owner")))
        .ok_or_else(not_found)?;
    Ok((job_id, video))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(metadata: &[(&str, &str)]) -> store::FileInfo {
        store::FileInfo {
            id: "65f0a1b2c3d4e5f6a7b8c9d0".into(),
            bucket: "videos".into(),
            filename: "clip.mp4".into(),
            length: 3,
            content_type: None,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            uploaded_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn queued_job_has_no_optional_fields() {
        let status = JobStatus::from_video(
            "j".into(),
            &video(&[("owner", "a@b.co"), ("state", "queued")]),
        );
        assert_eq!(
            serde_json::to_value(&status).expect("serializes"),
            serde_json::json!({
                "job_id": "j", "status": "queued", "video_fid": "65f0a1b2c3d4e5f6a7b8c9d0",
                "filename": "clip.mp4", "size_bytes": 3, "uploaded_at": 1_700_000_000_000_u64,
                "progress": 0
            })
        );
    }

    #[test]
    fn progress_duration_and_size_come_from_the_worker() {
        let processing = JobStatus::from_video(
            "j".into(),
            &video(&[
                ("state", "processing"),
                ("progress", "42"),
                ("duration_secs", "12.040"),
                ("video_bytes", "123456"),
            ]),
        );
        assert_eq!(processing.progress, 42);
        assert_eq!(processing.duration_secs, Some(12.04));
        assert_eq!(processing.size_bytes, 123_456, "kept after the bytes go");
        // A job done before progress was recorded; junk is ignored.
        let legacy = JobStatus::from_video(
            "j".into(),
            &video(&[("state", "done"), ("duration_secs", "NaN")]),
        );
        assert_eq!((legacy.progress, legacy.duration_secs), (100, None));
        let odd = JobStatus::from_video("j".into(), &video(&[("progress", "250")]));
        assert_eq!(odd.progress, 100);
    }

    #[test]
    fn done_and_failed_jobs_carry_their_outcome() {
        let done = JobStatus::from_video(
            "j".into(),
            &video(&[("state", "done"), ("mp3_fid", "aaaaaaaaaaaaaaaaaaaaaaaa")]),
        );
        let done = serde_json::to_value(&done).expect("serializes");
        assert_eq!(done["status"], "done");
        assert_eq!(done["mp3_fid"], "aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(done["progress"], 100);
        let failed = JobStatus::from_video(
            "j".into(),
            &video(&[("state", "failed"), ("error", "not a video")]),
        );
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.error.as_deref(), Some("not a video"));
        assert_eq!(failed.mp3_fid, None);
        // No state yet: the worker has not picked it up.
        assert_eq!(
            JobStatus::from_video("j".into(), &video(&[])).status,
            "queued"
        );
    }

    #[test]
    fn job_ids_are_uuids() {
        let id = "0b6f7a1e-5a3c-4d2b-9f8e-1c2d3e4f5a6b";
        assert_eq!(normalize_job_id(id).as_deref(), Some(id));
        assert_eq!(normalize_job_id(&id.to_uppercase()).as_deref(), Some(id));
        assert_eq!(normalize_job_id("nope"), None);
        assert_eq!(normalize_job_id(""), None);
        assert_eq!(
            normalize_job_id("0b6f7a1e-5a3c-4d2b-9f8e-1c2d3e4f5a6"),
            None
        );
    }
}

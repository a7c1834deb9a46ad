//! `GET /jobs/{job_id}`: a job's state, read from its video's metadata.
//!
//! There is no job table: the upload stores the video with `job_id`,
//! `owner` and `state` metadata, and the convert worker updates `state`
//! (`processing`, `done`, `failed`) and sets `mp3_fid` or `error` on the same
//! file. One record per job means status can never disagree with the data.

use serde::Serialize;
use spin_sdk::http::StatusCode;

use crate::auth::Caller;
use crate::bindings::blobs::store;
use crate::errors::{ApiError, HttpResponse, blob_error, json};
use crate::{VIDEOS_BUCKET, metadata};

/// The answer to `GET /jobs/{job_id}`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct JobStatus {
    pub job_id: String,
    pub status: String,
    pub video_fid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp3_fid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobStatus {
    /// The status of the job whose video is `video`. A video without a
    /// `state` has not been touched by the worker yet, so it is queued.
    pub fn from_video(job_id: String, video: &store::FileInfo) -> Self {
        let get = |key| metadata(&video.metadata, key).map(str::to_owned);
        JobStatus {
            job_id,
            status: get("state").unwrap_or_else(|| "queued".to_owned()),
            video_fid: video.id.clone(),
            mp3_fid: get("mp3_fid"),
            error: get("error").filter(|e| !e.is_empty()),
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
    // Same answer for a malformed id, an unknown job and someone else's job,
    // so the answer does not reveal which jobs exist.
    let not_found = || {
        ApiError::not_found(format!(
            "no job {raw_id:?} found for this account; use the job_id that POST /upload returned"
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
        .iter()
        .find(|video| caller.may_access(metadata(&video.metadata, "owner")))
        .ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &JobStatus::from_video(job_id, video)))
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
            uploaded_at: 0,
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
            serde_json::json!({"job_id": "j", "status": "queued", "video_fid": "65f0a1b2c3d4e5f6a7b8c9d0"})
        );
    }

    #[test]
    fn done_and_failed_jobs_carry_their_outcome() {
        let done = JobStatus::from_video(
            "j".into(),
            &video(&[("state", "done"), ("mp3_fid", "aaaaaaaaaaaaaaaaaaaaaaaa")]),
        );
        assert_eq!(
            serde_json::to_value(&done).expect("serializes"),
            serde_json::json!({"job_id": "j", "status": "done", "video_fid": "65f0a1b2c3d4e5f6a7b8c9d0", "mp3_fid": "aaaaaaaaaaaaaaaaaaaaaaaa"})
        );
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

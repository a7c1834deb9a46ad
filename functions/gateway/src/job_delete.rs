//! `DELETE /jobs/{job_id}` (owner or admin): the job's MP3s and its video
//! go, and the job answers 404 from then on.
//!
//! The order is chosen for a job the convert worker may be working on:
//!
//! 1. The MP3s stored for the job (found by `job_id`) are deleted. If this
//!    fails the job is still there, so the client can send the DELETE again.
//! 2. The video goes: it is the job's record, so from here on the job is
//!    404, and every write the worker makes to it (progress, the outcome,
//!    the announcement's check) is a compare-and-set that finds no file;
//!    the worker then stops ffmpeg and removes what it made (see the
//!    convert worker's `job.rs`).
//! 3. The MP3s are looked for again: one a worker stored between 1 and 2
//!    goes now, not only when that worker notices. Best effort, since the
//!    worker removes it as well.

use spin_sdk::http::StatusCode;

use crate::auth::Caller;
use crate::bindings::blobs::store;
use crate::errors::{ApiError, HttpResponse, blob_error, empty};
use crate::{MP3S_BUCKET, VIDEOS_BUCKET, jobs, metadata};

pub async fn delete(caller: &Caller, raw_id: &str) -> Result<HttpResponse, ApiError> {
    let (job_id, video) = jobs::find(caller, raw_id).await?;
    let owner = metadata(&video.metadata, "owner").unwrap_or_default();
    remove_mp3s(&job_id, owner).await?;
    match store::delete(VIDEOS_BUCKET.to_owned(), video.id.clone()).await {
        // Another DELETE of the same job got there first.
        Ok(()) | Err(store::Error::NotFound(_)) => {}
        Err(e) => return Err(blob_error("could not delete the job's video", e)),
    }
    if let Err(e) = remove_mp3s(&job_id, owner).await {
        eprintln!(
            "gateway: job {job_id} is deleted; the worker removes an MP3 left behind: {}",
            e.message()
        );
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Deletes the MP3s stored for `job_id` that belong to `owner`.
async fn remove_mp3s(job_id: &str, owner: &str) -> Result<(), ApiError> {
    let found = store::find(
        MP3S_BUCKET.to_owned(),
        "job_id".to_owned(),
        job_id.to_owned(),
    )
    .await
    .map_err(|e| blob_error("could not look up the job's MP3", e))?;
    for mp3 in found
        .iter()
        .filter(|mp3| metadata(&mp3.metadata, "owner") == Some(owner))
    {
        match store::delete(MP3S_BUCKET.to_owned(), mp3.id.clone()).await {
            Ok(()) | Err(store::Error::NotFound(_)) => {}
            Err(e) => return Err(blob_error("could not delete the job's MP3", e)),
        }
    }
    Ok(())
}

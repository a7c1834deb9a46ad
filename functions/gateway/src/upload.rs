//! `POST /upload`: streams the one file of a multipart form into the
//! `videos` bucket, then queues the conversion job.
//!
//! The file goes from the request body through `multer` into the blob
//! store's `create` stream a body frame at a time (see
//! [`BoundedReadAhead`]), with the parser and `create` running concurrently,
//! so memory stays flat however large the upload. The client gets `202`
//! only once the video is stored and the broker has confirmed the job
//! message; on every failure after the video was stored it is deleted
//! again, so no orphan video is left without a job.
//!
//! The form must hold exactly one part, the file: any other part (a text
//! field, a second file, an empty file input) is refused with 400 as soon
//! as its headers are read, so at most two parts are ever parsed.
//! [`FormGuard`] refuses a part header block over 16 KiB with 413, and
//! junk before the first boundary with 400, before `multer` can buffer it.

use http_body_util::BodyDataStream;
use multer::{Constraints, Field, Multipart, SizeLimit};
use serde::Serialize;
use spin_sdk::http::{HeaderMap, Request, StatusCode};
use spin_sdk::variables;
use spin_sdk::wit_bindgen::StreamWriter;

use crate::VIDEOS_BUCKET;
use crate::auth::Caller;
use crate::bindings::blobs::{store, wit_stream};
use crate::bindings::queue::publisher;
use crate::errors::{ApiError, HttpResponse, blob_error, json, publish_error};
use crate::form_guard::{FormGuard, GuardError};
use crate::quota::{self, Bound};
use crate::streams::BoundedReadAhead;

/// The queue the convert worker consumes.
pub const VIDEO_QUEUE: &str = "video";

/// Upload limit when `max_upload_bytes` is not defined: 2 GiB, the
/// manifest's default.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// How much of the request body the multipart parser may buffer ahead of
/// the blob store (see [`BoundedReadAhead`]).
const READ_AHEAD_BYTES: usize = 256 * 1024;

/// Longest stored filename, in characters.
const MAX_FILENAME_CHARS: usize = 255;

/// The message published on `video` for each job. Field names are those of
/// the original Python services so either side can interoperate.
#[derive(Debug, Serialize)]
pub struct VideoMessage<'a> {
    pub v: u32,
    pub job_id: &'a str,
    pub video_fid: &'a str,
    pub mp3_fid: Option<&'a str>,
    pub username: &'a str,
}

impl<'a> VideoMessage<'a> {
    pub fn new(job_id: &'a str, video_fid: &'a str, username: &'a str) -> Self {
        VideoMessage {
            v: 1,
            job_id,
            video_fid,
            mp3_fid: None,
            username,
        }
    }
}

/// The `202` answer.
#[derive(Debug, Serialize)]
struct Accepted<'a> {
    job_id: &'a str,
    video_fid: &'a str,
    status: &'static str,
}

pub async fn upload(caller: &Caller, req: Request) -> Result<HttpResponse, ApiError> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::bad_request(
            "the body must be multipart/form-data with a boundary, holding one file \
             (for example: curl -F file=@video.mp4 ...)",
        )
    })?;
    let max_upload = max_upload_bytes().await?;
    let quota = quota::limits().await?;
    let usage = quota::usage(&caller.username).await?;
    quota::check_in_flight(quota, usage)?;
    let bound = Bound::for_upload(max_upload, quota, usage);
    if bound.max() == 0 {
        return Err(bound.exceeded());
    }
    if let Some(declared) = content_length(req.headers())?
        && declared > bound.max()
    {
        return Err(bound.exceeded());
    }

    let body = BoundedReadAhead::new(
        FormGuard::new(BodyDataStream::new(req.into_body()), &boundary),
        READ_AHEAD_BYTES,
    );
    let constraints = Constraints::new().size_limit(SizeLimit::new().whole_stream(bound.max()));
    let mut form = Multipart::with_constraints(body, boundary, constraints);
    let job_id = uuid::Uuid::new_v4().hyphenated().to_string();

    let mut stored = None;
    let parsed = read_form(&mut form, caller, &job_id, bound, &mut stored).await;
    let video = match (parsed, stored) {
        (Ok(()), Some(video)) => video,
        (Ok(()), None) => {
            return Err(ApiError::bad_request(
                "expected exactly one file in the multipart form; got none \
                 (send it as a part with a filename, e.g. curl -F file=@video.mp4)",
            ));
        }
        (Err(e), stored) => {
            if let Some(video) = stored {
                discard(&video).await;
            }
            return Err(e);
        }
    };

    let message = VideoMessage::new(&job_id, &video.id, &caller.username);
    let published = match serde_json::to_vec(&message) {
        Ok(body) => publisher::publish(VIDEO_QUEUE.to_owned(), body)
            .await
            .map_err(publish_error),
        Err(e) => Err(ApiError::internal(format!(
            "could not encode the job message: {e}"
        ))),
    };
    if let Err(e) = published {
        discard(&video).await;
        return Err(e);
    }

    Ok(json(
        StatusCode::ACCEPTED,
        &Accepted {
            job_id: &job_id,
            video_fid: &video.id,
            status: "queued",
        },
    ))
}

/// Reads the whole form, storing its one file part. Whatever was stored is
/// left in `stored` even when an error follows, so the caller can delete it.
async fn read_form(
    form: &mut Multipart<'_>,
    caller: &Caller,
    job_id: &str,
    bound: Bound,
    stored: &mut Option<store::FileInfo>,
) -> Result<(), ApiError> {
    while let Some(mut field) = form.next_field().await.map_err(|e| form_error(e, bound))? {
        if stored.is_some() {
            return Err(ApiError::bad_request(
                "expected exactly one file in the multipart form; got more than one part",
            ));
        }
        let name = field.name().unwrap_or("").to_owned();
        let filename = match field.file_name() {
            Some("") => {
                // What a browser sends for a file input left empty.
                return Err(ApiError::bad_request(format!(
                    "the file part {name:?} has an empty filename: no file was chosen"
                )));
            }
            Some(filename) => filename,
            None => {
                return Err(ApiError::bad_request(format!(
                    "form field {name:?} is not a file; the form must hold exactly one \
                     file part and nothing else (for example: curl -F file=@video.mp4 ...)"
                )));
            }
        };
        let file = store::NewFile {
            filename: stored_filename(filename),
            content_type: field.content_type().map(ToString::to_string),
            metadata: vec![
                ("owner".to_owned(), caller.username.clone()),
                ("job_id".to_owned(), job_id.to_owned()),
                ("state".to_owned(), "queued".to_owned()),
            ],
        };
        let (tx, rx) = wit_stream::new::<u8>();
        let (pumped, created) = futures::join!(
            pump(&mut field, tx),
            store::create(VIDEOS_BUCKET.to_owned(), file, rx)
        );
        match (pumped, created) {
            (Ok(()), Ok(info)) => *stored = Some(info),
            // The body broke off or was too large: the store saw the stream
            // end early and kept a truncated file, which must go.
            (Err(e), created) => {
                *stored = created.ok();
                return Err(form_error(e, bound));
            }
            (Ok(()), Err(e)) => return Err(blob_error("could not store the video", e)),
        }
    }
    Ok(())
}

/// Forwards a file part into the blob store's stream chunk by chunk.
/// Dropping `tx` (on return) ends the stream. If the store stops reading
/// (it failed), the rest is not forwarded; `create`'s error says why.
async fn pump(field: &mut Field<'_>, mut tx: StreamWriter<u8>) -> Result<(), multer::Error> {
    while let Some(chunk) = field.chunk().await? {
        if !tx.write_all(chunk.to_vec()).await.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Deletes a video that will not get a job. Best effort: the client already
/// gets an error, and a failed cleanup must not hide that error.
async fn discard(video: &store::FileInfo) {
    if let Err(e) = store::delete(VIDEOS_BUCKET.to_owned(), video.id.clone()).await {
        eprintln!(
            "gateway: could not delete video {} after a failed upload: {e:?}",
            video.id
        );
    }
}

/// The multipart parser's errors as client answers: over the upload limit,
/// the quota or the part header limit is 413, everything else is a body
/// the client must fix (or a dropped connection).
fn form_error(e: multer::Error, bound: Bound) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } => bound.exceeded(),
        multer::Error::StreamReadFailed(e) => match e.downcast::<GuardError>().map(|e| *e) {
            Ok(refused @ GuardError::PartHeaderTooLarge) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, refused.to_string())
            }
            Ok(refused) => ApiError::bad_request(refused.to_string()),
            Err(e) => ApiError::bad_request(format!("could not read the request body: {e}")),
        },
        e => ApiError::bad_request(format!("malformed multipart/form-data body: {e}")),
    }
}

/// The upload limit from the `max_upload_bytes` variable. A value that is
/// not a byte count is a configuration error rather than a reason to guess.
async fn max_upload_bytes() -> Result<u64, ApiError> {
    match variables::get("max_upload_bytes").await {
        Ok(raw) => parse_limit(&raw),
        Err(variables::Error::Undefined(_)) => Ok(DEFAULT_MAX_UPLOAD_BYTES),
        Err(e) => Err(ApiError::unavailable(format!(
            "could not read the max_upload_bytes variable: {e}"
        ))),
    }
}

fn parse_limit(raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::internal(format!(
            "server misconfigured: max_upload_bytes must be a whole number of bytes, not {raw:?}"
        ))
    })
}

/// The declared body length, if any.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("content-length") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Content-Length must be a number of bytes"))
}

/// The name stored for an uploaded file: the last path component (some
/// clients send the full local path), trimmed and bounded in length.
pub fn stored_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw).trim();
    let base: String = base
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_CHARS)
        .collect();
    if base.is_empty() {
        "video".to_owned()
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_message_has_the_contract_shape() {
        let message = VideoMessage::new(
            "0b6f7a1e-5a3c-4d2b-9f8e-1c2d3e4f5a6b",
            "65f0a1b2c3d4e5f6a7b8c9d0",
            "a@b.co",
        );
        let text = serde_json::to_string(&message).expect("serializes");
        assert_eq!(
            text,
            r#"{"v":1,"job_id":"0b6f7a1e-5a3c-4d2b-9f8e-1c2d3e4f5a6b","video_fid":"65f0a1b2c3d4e5f6a7b8c9d0","mp3_fid":null,"username":"a@b.co"}"#
        );
    }

    #[test]
    fn limit_must_be_a_byte_count() {
        assert_eq!(parse_limit("1048576").ok(), Some(1_048_576));
        assert_eq!(parse_limit(" 10 \n").ok(), Some(10));
        for bad in ["", "1e9", "-1", "2GiB", "ten"] {
            let e = parse_limit(bad).expect_err(bad);
            assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(e.message().contains("max_upload_bytes"), "{}", e.message());
        }
    }

    #[test]
    fn content_length_is_read_or_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers).ok(), Some(None));
        headers.insert("content-length", "42".parse().expect("header"));
        assert_eq!(content_length(&headers).ok(), Some(Some(42)));
        headers.insert("content-length", "lots".parse().expect("header"));
        assert_eq!(
            content_length(&headers).map_err(|e| e.status()).err(),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn stored_filenames_drop_directories_and_controls() {
        assert_eq!(stored_filename("clip.mp4"), "clip.mp4");
        assert_eq!(stored_filename("C:\\Users\\me\\clip.mp4"), "clip.mp4");
        assert_eq!(stored_filename("../../etc/passwd"), "passwd");
        assert_eq!(stored_filename("a\r\nb.mp4"), "ab.mp4");
        assert_eq!(stored_filename("dir/"), "video");
        assert_eq!(stored_filename("  "), "video");
        assert_eq!(stored_filename(&"x".repeat(1000)).chars().count(), 255);
    }

    #[test]
    fn parser_errors_map_to_client_statuses() {
        assert_eq!(
            form_error(
                multer::Error::StreamSizeExceeded { limit: 5 },
                Bound::Upload(5)
            )
            .status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            form_error(multer::Error::IncompleteStream, Bound::Upload(5)).status(),
            StatusCode::BAD_REQUEST
        );
        let guarded = |e: GuardError| {
            form_error(
                multer::Error::StreamReadFailed(Box::new(e)),
                Bound::Upload(5),
            )
        };
        let e = guarded(GuardError::PartHeaderTooLarge);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message().contains("16 KiB"), "{}", e.message());
        assert_eq!(
            guarded(GuardError::NoBoundary).status(),
            StatusCode::BAD_REQUEST
        );
    }
}

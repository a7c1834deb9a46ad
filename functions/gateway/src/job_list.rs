//! `GET /jobs`: the caller's jobs, newest first, a page at a time.
//!
//! `?limit=` (1 to 100, default 20) bounds a page; `next` is an opaque
//! cursor for the page after it (`?after=`), `null` on the last page. The
//! cursor names the last job shown by its upload time and video id, so a
//! page stays in place when newer jobs arrive or shown ones are deleted.
//!
//! The jobs are the caller's videos (`find` by `owner`, the blob store's
//! metadata index), sorted here: every page reads the account's whole
//! list, which the quota (`max_jobs_in_flight`, `storage_quota_bytes`)
//! keeps to a size one request can sort.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use spin_sdk::http::StatusCode;

use crate::auth::Caller;
use crate::bindings::blobs::store;
use crate::errors::{ApiError, HttpResponse, blob_error, json};
use crate::jobs::JobStatus;
use crate::query::{is_blob_id, single};
use crate::{VIDEOS_BUCKET, metadata};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// Where a page starts: after the job uploaded at `uploaded_at` with video
/// `video_fid`, in newest-first order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    uploaded_at: u64,
    video_fid: String,
}

impl Cursor {
    fn of(video: &store::FileInfo) -> Self {
        Cursor {
            uploaded_at: video.uploaded_at,
            video_fid: video.id.clone(),
        }
    }

    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.uploaded_at, self.video_fid))
    }

    fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (at, fid) = text.split_once(':')?;
        if !is_blob_id(fid) {
            return None;
        }
        Some(Cursor {
            uploaded_at: at.parse().ok()?,
            video_fid: fid.to_ascii_lowercase(),
        })
    }

    /// Newest-first order: later uploads first, ties by video id.
    fn key(&self) -> (u64, &str) {
        (self.uploaded_at, &self.video_fid)
    }
}

/// What `?limit=&after=` asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    limit: usize,
    after: Option<Cursor>,
}

impl Page {
    /// Reads the query; other parameters are ignored.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let once = |key: &str| {
            single(query, key)
                .map_err(|_| ApiError::bad_request(format!("give ?{key}= at most once")))
        };
        let (limit, after) = (once("limit")?, once("after")?);
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, not {raw:?}"
                    ))
                })?,
        };
        let after = after
            .map(|raw| {
                Cursor::decode(raw).ok_or_else(|| {
                    ApiError::bad_request(
                        "the after cursor is malformed; pass the \"next\" value of a GET /jobs answer unchanged",
                    )
                })
            })
            .transpose()?;
        Ok(Page { limit, after })
    }

    /// This page of `videos` (in any order) and whether more follow.
    fn select(&self, mut videos: Vec<store::FileInfo>) -> (Vec<store::FileInfo>, bool) {
        videos.sort_by(|a, b| Cursor::of(b).key().cmp(&Cursor::of(a).key()));
        if let Some(after) = &self.after {
            videos.retain(|v| Cursor::of(v).key() < after.key());
        }
        let more = videos.len() > self.limit;
        videos.truncate(self.limit);
        (videos, more)
    }
}

/// The answer to `GET /jobs`.
#[derive(Debug, Serialize)]
struct Jobs {
    jobs: Vec<JobStatus>,
    next: Option<String>,
}

pub async fn list(caller: &Caller, query: Option<&str>) -> Result<HttpResponse, ApiError> {
    let page = Page::parse(query)?;
    let videos = store::find(
        VIDEOS_BUCKET.to_owned(),
        "owner".to_owned(),
        caller.username.clone(),
    )
    .await
    .map_err(|e| blob_error("could not list your jobs", e))?;
    let (videos, more) = page.select(videos);
    let next = more
        .then(|| videos.last().map(|v| Cursor::of(v).encode()))
        .flatten();
    let jobs = videos
        .iter()
        .filter_map(|video| {
            let job_id = metadata(&video.metadata, "job_id")?.to_owned();
            Some(JobStatus::from_video(job_id, video))
        })
        .collect();
    Ok(json(StatusCode::OK, &Jobs { jobs, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(n: u64, uploaded_at: u64) -> store::FileInfo {
        store::FileInfo {
            id: format!("{n:024x}"),
            bucket: "videos".into(),
            filename: format!("{n}.mp4"),
            length: n,
            content_type: None,
            metadata: vec![("job_id".into(), format!("job-{n}"))],
            uploaded_at,
        }
    }

    fn ids(videos: &[store::FileInfo]) -> Vec<u64> {
        videos.iter().map(|v| v.length).collect()
    }

    #[test]
    fn pages_run_newest_first_and_follow_their_cursor() {
        // Videos 3 and 4 share an upload time: the id breaks the tie.
        let all = vec![
            video(1, 10),
            video(2, 20),
            video(3, 30),
            video(4, 30),
            video(5, 50),
        ];
        let first = Page::parse(Some("limit=2")).expect("valid");
        let (page, more) = first.select(all.clone());
        assert_eq!((ids(&page), more), (vec![5, 4], true));
        let cursor = Cursor::of(&page[1]).encode();
        let second = Page::parse(Some(&format!("after={cursor}&limit=2"))).expect("valid");
        let (page, more) = second.select(all.clone());
        assert_eq!((ids(&page), more), (vec![3, 2], true));
        let cursor = Cursor::of(&page[1]).encode();
        let (page, more) = Page::parse(Some(&format!("limit=2&after={cursor}")))
            .expect("valid")
            .select(all.clone());
        assert_eq!((ids(&page), more), (vec![1], false));
        // The default page holds them all.
        let (page, more) = Page::parse(None).expect("valid").select(all);
        assert_eq!((ids(&page), more), (vec![5, 4, 3, 2, 1], false));
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let cursor = Cursor::of(&video(7, 1234));
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "!!", "bm9wZQ", &URL_SAFE_NO_PAD.encode("12:xyz")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
            let e = Page::parse(Some(&format!("after={bad}"))).expect_err(bad);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.message().contains("next"), "{}", e.message());
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(Page::parse(Some("limit=100")).expect("valid").limit, 100);
        assert_eq!(Page::parse(Some("x=1&limit=1")).expect("valid").limit, 1);
        for bad in [
            "limit=0",
            "limit=101",
            "limit=ten",
            "limit=",
            "limit=1&limit=2",
        ] {
            let e = Page::parse(Some(bad)).expect_err(bad);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}

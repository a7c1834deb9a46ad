//! Spindle's gateway function: the user-facing API of the video-to-MP3 app.
//!
//! - `POST /upload` (Bearer, multipart with one file) → `202` job
//! - `GET /jobs` (Bearer) → the caller's jobs, newest first, paginated
//! - `GET /jobs/{job_id}` (Bearer, owner or admin) → the job's state
//! - `DELETE /jobs/{job_id}` (Bearer, owner or admin) → `204`; the video
//!   and the MP3 are gone
//! - `GET /download?fid=<mp3_fid>` (Bearer, owner or admin) → the MP3,
//!   streamed, with single byte ranges, `If-Range` and `If-None-Match`;
//!   `HEAD` gives the same headers
//!
//! Tokens are checked by auth's `/validate` over `http://auth.spin.internal`;
//! files live in the `videos` and `mp3s` buckets of the blob capability and
//! jobs go out on the `video` queue. Every failure is `{"error": "..."}` as
//! JSON; bad client input is always a 4xx.

// The bindings wit-bindgen generates (imports and the exported handler)
// are unsafe FFI; the code written here is not.
#![allow(unsafe_code)]

mod auth;
mod bindings;
mod conditional;
mod download;
mod errors;
mod expiry;
mod form_guard;
mod job_delete;
mod job_list;
mod jobs;
mod query;
mod quota;
mod range;
mod streams;
mod upload;

use spin_sdk::http::{HeaderName, Method, Request, StatusCode};
#[cfg(target_arch = "wasm32")]
use spin_sdk::http_service;

use errors::{ApiError, HttpResponse};

/// Uploaded videos; their metadata doubles as the job record.
pub const VIDEOS_BUCKET: &str = "videos";
/// Converted MP3s, written by the convert worker.
pub const MP3S_BUCKET: &str = "mp3s";

/// The component's export. Only a wasm32 build exports it: a native build
/// (for `cargo build` and the unit tests) cannot link the component-model
/// export names.
#[cfg_attr(target_arch = "wasm32", http_service)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
async fn handle(req: Request) -> HttpResponse {
    route(req).await.unwrap_or_else(errors::error_response)
}

/// The routes this component serves and the one method each accepts.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Upload,
    Jobs,
    Job(&'a str),
    Download,
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Result<Self, ApiError> {
        match path {
            "/upload" => Ok(Route::Upload),
            "/download" => Ok(Route::Download),
            "/jobs" => Ok(Route::Jobs),
            _ => match path.strip_prefix("/jobs/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Ok(Route::Job(id)),
                Some(_) => Err(ApiError::not_found(
                    "give one job id: GET /jobs/{job_id}, with a job_id POST /upload or GET /jobs returned",
                )),
                None => Err(ApiError::not_found(format!(
                    "no route for {path}; the gateway serves POST /upload, GET /jobs, \
                     GET and DELETE /jobs/{{job_id}} and GET /download?fid=..."
                ))),
            },
        }
    }

    /// The methods this route accepts, as listed in `Allow`.
    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Upload => &[Method::POST],
            Route::Jobs => &[Method::GET],
            Route::Job(_) => &[Method::GET, Method::DELETE],
            Route::Download => &[Method::GET, Method::HEAD],
        }
    }
}

async fn route(req: Request) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path().to_owned();
    let route = Route::parse(&path)?;
    let allowed = route.methods();
    if !allowed.contains(req.method()) {
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} only accepts {allow}, not {}", req.method()),
        )
        .with_header(HeaderName::from_static("allow"), allow));
    }
    match route {
        Route::Upload => {
            let caller = auth::authenticate(req.headers()).await?;
            upload::upload(&caller, req).await
        }
        Route::Jobs => {
            let caller = auth::authenticate(req.headers()).await?;
            job_list::list(&caller, req.uri().query()).await
        }
        Route::Job(id) => {
            let caller = auth::authenticate(req.headers()).await?;
            if req.method() == Method::DELETE {
                job_delete::delete(&caller, id).await
            } else {
                jobs::status(&caller, id).await
            }
        }
        Route::Download => {
            let caller = auth::authenticate(req.headers()).await?;
            download::download(&caller, &req).await
        }
    }
}

/// The value of metadata `key`, if set.
pub fn metadata<'m>(metadata: &'m [(String, String)], key: &str) -> Option<&'m str> {
    metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/upload").ok(), Some(Route::Upload));
        assert_eq!(Route::parse("/download").ok(), Some(Route::Download));
        assert_eq!(Route::parse("/jobs/abc").ok(), Some(Route::Job("abc")));
        assert_eq!(Route::parse("/jobs").ok(), Some(Route::Jobs));
        for missing in ["/", "/jobs/", "/jobs/a/b", "/uploads", "/login"] {
            let e = Route::parse(missing).expect_err(missing);
            assert_eq!(e.status(), StatusCode::NOT_FOUND, "{missing}");
        }
    }

    #[test]
    fn download_also_answers_head() {
        assert_eq!(Route::Download.methods(), [Method::GET, Method::HEAD]);
        assert_eq!(Route::Job("x").methods(), [Method::GET, Method::DELETE]);
        assert_eq!(Route::Jobs.methods(), [Method::GET]);
        assert_eq!(Route::Upload.methods(), [Method::POST]);
    }

    #[test]
    fn metadata_lookup() {
        let meta = vec![("owner".to_owned(), "a@b.co".to_owned())];
        assert_eq!(metadata(&meta, "owner"), Some("a@b.co"));
        assert_eq!(metadata(&meta, "state"), None);
    }
}

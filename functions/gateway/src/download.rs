//! `GET /download?fid=<mp3_fid>`: streams an MP3 to its owner (or an admin),
//! with single byte ranges so players can seek and downloads can resume.
//! `HEAD` answers with the same headers and no body; `If-Range` and
//! `If-None-Match` use the validators from [`crate::conditional`].

use spin_sdk::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use crate::auth::Caller;
use crate::bindings::blobs::store;
use crate::conditional::Validators;
use crate::errors::{ApiError, HttpResponse, blob_error, empty, with_body};
use crate::expiry::Ttl;
use crate::range::{RangeRequest, content_disposition, parse_fid};
use crate::streams::blob_body;
use crate::{MP3S_BUCKET, metadata};

/// One answer for "no such file" and "not yours", so ids cannot be probed.
const NOT_FOUND: &str = "no MP3 with this fid for this account; use the mp3_fid of one of your \
                         done jobs (GET /jobs/{job_id})";

pub async fn download(caller: &Caller, req: &Request) -> Result<HttpResponse, ApiError> {
    let fid = parse_fid(req.uri().query()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let info = match store::stat(MP3S_BUCKET.to_owned(), fid.clone()).await {
        Ok(info) => info,
        Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(NOT_FOUND)),
        Err(e) => return Err(blob_error("could not look up the MP3", e)),
    };
    if !caller.may_access(metadata(&info.metadata, "owner")) {
        return Err(ApiError::not_found(NOT_FOUND));
    }
    let ttl = Ttl::load().await?;
    if ttl.expired(info.uploaded_at) {
        return Err(ttl.gone(&info).await);
    }

    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let validators = Validators::new(&fid, info.uploaded_at);
    let mut headers = vec![
        ("etag", validators.etag.clone()),
        ("last-modified", validators.last_modified.clone()),
        ("accept-ranges", "bytes".to_owned()),
    ];
    if validators.none_match_hits(header("if-none-match")) {
        let mut response = empty(StatusCode::NOT_MODIFIED);
        set_headers(&mut response, headers);
        return Ok(response);
    }

    let len = info.length;
    let range = if validators.range_allowed(header("if-range")) {
        RangeRequest::parse(header("range"), len)
    } else {
        RangeRequest::Full
    };
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the requested range is outside the file, which is {len} bytes long"),
            )
            .with_header(
                HeaderName::from_static("content-range"),
                format!("bytes */{len}"),
            ));
        }
    };

    // Prefer the uploaded video's name, which the worker may record; the
    // MP3's own filename is the fallback.
    let name = metadata(&info.metadata, "video_filename").unwrap_or(&info.filename);
    let mut response = if count == 0 || req.method() == Method::HEAD {
        with_body(status, "audio/mpeg", Vec::new())
    } else {
        let (_info, data, done) =
            match store::read(MP3S_BUCKET.to_owned(), fid, start, Some(count)).await {
                Ok(read) => read,
                // Deleted between stat and read.
                Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(NOT_FOUND)),
                Err(e) => return Err(blob_error("could not read the MP3", e)),
            };
        let mut response = Response::new(blob_body(data, done, count));
        *response.status_mut() = status;
        response
    };

    headers.extend([
        ("content-type", "audio/mpeg".to_owned()),
        ("content-length", count.to_string()),
        ("content-disposition", content_disposition(name)),
    ]);
    if status == StatusCode::PARTIAL_CONTENT {
        headers.push((
            "content-range",
            format!("bytes {start}-{}/{len}", start + count - 1),
        ));
    }
    set_headers(&mut response, headers);
    Ok(response)
}

fn set_headers(response: &mut HttpResponse, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        // Every value is built from digits, a hex fid, an HTTP-date or
        // sanitised ASCII above.
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}

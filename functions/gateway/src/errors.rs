//! The one error shape every route answers with, `{"error": "..."}`
//! ([`ApiError`], shared with auth through the `api-error` crate), how
//! blob and queue failures map onto it, and the response builders shared
//! by the routes.
//!
//! Handlers return [`ApiError`] instead of building error responses
//! themselves, so every failure has the same body and content type and no
//! route can forget a header HTTP requires next to its status (`Allow` on
//! 405, `WWW-Authenticate` on 401, `Content-Range` on 416).

use bytes::Bytes;
use serde::Serialize;
use spin_sdk::http::{BoxBody, FullBody, HeaderValue, Response, StatusCode, box_body};

use crate::bindings::blobs::store;
use crate::bindings::queue::publisher;

/// Every response this component gives. Bodies are boxed so that buffered
/// JSON and the streamed download share one type.
pub type HttpResponse = Response<BoxBody>;

/// A failed request, answered as `{"error": message}` with `status`: the
/// shape every function of the app answers with (crate `api-error`).
pub use api_error::ApiError;

/// The response for a failed request.
pub fn error_response(e: ApiError) -> HttpResponse {
    e.into_response(buffered)
}

/// A JSON response (see [`api_error::json`]).
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    api_error::json(status, value, buffered)
}

fn buffered(text: String) -> BoxBody {
    box_body(FullBody::new(Bytes::from(text)))
}

/// A response without a body or content type, such as `304`.
pub fn empty(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(box_body(FullBody::new(Bytes::new())));
    *response.status_mut() = status;
    response
}

/// A buffered response with the given content type.
pub fn with_body(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(box_body(FullBody::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        spin_sdk::http::HeaderName::from_static("content-type"),
        HeaderValue::from_static(content_type),
    );
    response
}

/// How blob-store failures reach the client. A denied bucket means the
/// manifest does not grant what this component needs, which no client can
/// fix, so it is a 500 whose message names the problem; an unreachable
/// backend is a 503 the client may retry.
pub fn blob_error(action: &str, e: store::Error) -> ApiError {
    match e {
        store::Error::PermissionDenied(m) => {
            ApiError::internal(format!("server misconfigured: {action}: {m}"))
        }
        store::Error::NotFound(m) => ApiError::not_found(format!("{action}: {m}")),
        store::Error::Invalid(m) => ApiError::bad_request(format!("{action}: {m}")),
        store::Error::Aborted(m) => {
            ApiError::bad_request(format!("{action}: the upload was interrupted: {m}"))
        }
        store::Error::StorageFull(m) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "{action}: the server's storage is full; nothing was stored, try again later ({m})"
            ),
        ),
        store::Error::Backend(m) => ApiError::unavailable(format!(
            "{action}: blob storage is unavailable, try again later: {m}"
        )),
    }
}

/// Publishing failures: a queue the manifest does not grant is a
/// configuration error; anything else means the broker did not confirm.
pub fn publish_error(e: publisher::Error) -> ApiError {
    match e {
        publisher::Error::PermissionDenied(m) => ApiError::internal(format!(
            "server misconfigured: could not queue the job: {m}"
        )),
        publisher::Error::StorageFull(m) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the server's storage is full, so the job could not be queued; nothing was stored, try again later ({m})"
            ),
        ),
        publisher::Error::Unavailable(m) => ApiError::unavailable(format!(
            "the job queue is unavailable, try the upload again later: {m}"
        )),
    }
}

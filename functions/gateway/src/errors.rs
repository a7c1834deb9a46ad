//! The one error shape every route answers with, `{"error": "..."}`, and the
//! response builders shared by the routes.
//!
//! Handlers return [`ApiError`] instead of building error responses
//! themselves, so every failure has the same body and content type and no
//! route can forget a header HTTP requires next to its status (`Allow` on
//! 405, `WWW-Authenticate` on 401, `Content-Range` on 416).

use bytes::Bytes;
use serde::Serialize;
use spin_sdk::http::{BoxBody, FullBody, HeaderName, HeaderValue, Response, StatusCode, box_body};

use crate::bindings::blobs::store;
use crate::bindings::queue::publisher;

/// Every response this component gives. Bodies are boxed so that buffered
/// JSON and the streamed download share one type.
pub type HttpResponse = Response<BoxBody>;

/// A failed request, answered as `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the error response. A value that is not a valid
    /// header value is dropped rather than turning the error into a trap.
    pub fn with_header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    #[cfg(test)]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    #[cfg(test)]
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn into_response(self) -> HttpResponse {
        let mut response = json(
            self.status,
            &ErrorBody {
                error: &self.message,
            },
        );
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON response. Serialising the plain structs used here cannot fail, but
/// if it ever did the client still gets a JSON error rather than a trap.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, "application/json", body),
        Err(_) => with_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            br#"{"error":"could not encode the response as JSON"}"#.to_vec(),
        ),
    }
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

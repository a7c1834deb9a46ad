//! The one error shape the app's HTTP functions (auth, gateway) answer
//! with: a status and `{"error": "..."}`, plus a header HTTP requires next
//! to some statuses (`Allow` on 405, `WWW-Authenticate` on 401,
//! `Retry-After` on 429, `Content-Range` on 416).
//!
//! Handlers return [`ApiError`] instead of building error responses
//! themselves, so every failure has the same body and content type. The
//! crate only knows the `http` types, so each function picks its own body
//! type when it turns an error into a response ([`ApiError::into_response`]).
//! It builds for `wasm32-wasip2` (the components) and natively (their unit
//! tests).

use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// A failed request, answered as `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
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

    /// A 401 naming the scheme the client should authenticate with
    /// (`WWW-Authenticate`).
    pub fn unauthorized(challenge: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
            .with_header(http::header::WWW_AUTHENTICATE, challenge)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A 429 telling the client how many seconds to wait, in the message
    /// and in `Retry-After`.
    pub fn too_many_requests(retry_after_secs: u64, message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
            .with_header(http::header::RETRY_AFTER, retry_after_secs.to_string())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response: `status`, `{"error": message}` as JSON and the added
    /// headers; `body` makes the function's body type from the JSON text.
    pub fn into_response<B>(self, body: impl FnOnce(String) -> B) -> Response<B> {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: &'a str,
        }
        let mut response = json(
            self.status,
            &ErrorBody {
                error: &self.message,
            },
            body,
        );
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// `value` as a JSON response with `status`. Serialising the plain structs
/// the functions answer with cannot fail, but if it ever did the client
/// still gets a JSON error (500) rather than a trap.
pub fn json<T: Serialize, B>(
    status: StatusCode,
    value: &T,
    body: impl FnOnce(String) -> B,
) -> Response<B> {
    let (status, text) = match serde_json::to_string(value) {
        Ok(text) => (status, text),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"could not encode the response as JSON"}"#.to_owned(),
        ),
    };
    let mut response = Response::new(body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_json_with_its_status_and_headers() {
        let response = ApiError::unauthorized("Bearer", "missing token").into_response(|s| s);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.body(), r#"{"error":"missing token"}"#);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }

    #[test]
    fn retry_after_is_set_and_bad_header_values_are_dropped() {
        let response = ApiError::too_many_requests(42, "wait")
            .with_header(HeaderName::from_static("x-bad"), "line\nbreak")
            .into_response(String::into_bytes);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "42");
        assert!(!response.headers().contains_key("x-bad"));
        assert_eq!(response.body(), br#"{"error":"wait"}"#);
    }

    #[test]
    fn the_message_is_the_display() {
        let e = ApiError::not_found("no such job");
        assert_eq!(e.to_string(), "no such job");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.message(), "no such job");
    }
}

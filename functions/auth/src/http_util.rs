//! HTTP plumbing shared by the routes: JSON answers (errors in the shape
//! every function shares, from the `api-error` crate), bounded body
//! reading, and `Authorization` header parsing.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use spin_sdk::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

/// Every answer this component gives: a fully buffered body, so a response can
/// be built without fallible builders.
pub type HttpResponse = Response<String>;

/// Request bodies are tiny JSON documents; anything larger is refused before
/// it can cost memory or hashing time.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Base64 as used by `Authorization: Basic`. Padding is optional because some
/// clients strip it; anything else that is not base64 is still rejected.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A failed request, answered as `{"error": message}` with `status`: the
/// shape every function of the app answers with (crate `api-error`).
pub use api_error::ApiError;

/// The response for a failed request.
pub fn error_response(e: ApiError) -> HttpResponse {
    e.into_response(|body| body)
}

/// A JSON response (see [`api_error::json`]).
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    api_error::json(status, value, |body| body)
}

/// A `text/plain` response, used for the bare token returned by `/login`.
pub fn text(status: StatusCode, body: String) -> HttpResponse {
    with_content_type(status, body, "text/plain")
}

fn with_content_type(status: StatusCode, body: String, content_type: &'static str) -> HttpResponse {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

/// Reads the whole request body, refusing with 413 as soon as it grows past
/// [`MAX_BODY_BYTES`] so an oversized upload is never buffered in full.
pub async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes().into()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {} KiB", MAX_BODY_BYTES / 1024),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Email and password from `Authorization: Basic`, as sent by `/login` clients.
#[derive(Debug, PartialEq, Eq)]
pub struct BasicCredentials {
    pub email: String,
    pub password: String,
}

/// Why an `Authorization` header was not accepted. Each message tells the
/// client what to fix; all of them are answered with 401.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("missing Authorization header")]
    Missing,
    #[error("the Authorization header must contain only visible ASCII characters")]
    Unreadable,
    #[error("the Authorization header must use the {0} scheme")]
    WrongScheme(&'static str),
    #[error("the Basic credentials are not valid base64")]
    BadBase64,
    #[error("the Basic credentials are not valid UTF-8")]
    NotUtf8,
    #[error("the Basic credentials must have the form email:password")]
    NoColon,
    #[error("the Bearer token is empty")]
    EmptyToken,
}

/// Parses `Authorization: Basic base64(email:password)`. The password may
/// itself contain colons: only the first one separates the two parts.
pub fn basic_credentials(headers: &HeaderMap) -> Result<BasicCredentials, CredentialsError> {
    let encoded = authorization_param(headers, "Basic")?;
    let decoded = BASIC_BASE64
        .decode(encoded)
        .map_err(|_| CredentialsError::BadBase64)?;
    let decoded = String::from_utf8(decoded).map_err(|_| CredentialsError::NotUtf8)?;
    let (email, password) = decoded.split_once(':').ok_or(CredentialsError::NoColon)?;
    Ok(BasicCredentials {
        email: email.to_owned(),
        password: password.to_owned(),
    })
}

/// Parses `Authorization: Bearer <token>` and returns the token.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, CredentialsError> {
    let token = authorization_param(headers, "Bearer")?;
    if token.is_empty() {
        return Err(CredentialsError::EmptyToken);
    }
    Ok(token)
}

/// Returns what follows `scheme` in the `Authorization` header. Scheme names
/// are case-insensitive (RFC 9110 §11.1).
fn authorization_param<'h>(
    headers: &'h HeaderMap,
    scheme: &'static str,
) -> Result<&'h str, CredentialsError> {
    let value = headers
        .get("authorization")
        .ok_or(CredentialsError::Missing)?
        .to_str()
        .map_err(|_| CredentialsError::Unreadable)?
        .trim();
    let (given, param) = value.split_once(' ').unwrap_or((value, ""));
    if !given.eq_ignore_ascii_case(scheme) {
        return Err(CredentialsError::WrongScheme(scheme));
    }
    Ok(param.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            "authorization",
            HeaderValue::from_str(authorization).expect("test header is valid"),
        );
        map
    }

    fn basic(raw: &[u8]) -> HeaderMap {
        headers(&format!(
            "Basic {}",
            base64::prelude::BASE64_STANDARD.encode(raw)
        ))
    }

    #[test]
    fn basic_splits_at_the_first_colon() {
        assert_eq!(
            basic_credentials(&basic(b"a@b.co:pa:ss")),
            Ok(BasicCredentials {
                email: "a@b.co".into(),
                password: "pa:ss".into()
            })
        );
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_padding_optional() {
        let creds = basic_credentials(&headers("basic YUBiLmNvOnB3")).expect("valid");
        assert_eq!(creds.email, "a@b.co");
        assert_eq!(creds.password, "pw");
    }

    #[test]
    fn basic_rejections() {
        assert_eq!(
            basic_credentials(&HeaderMap::new()),
            Err(CredentialsError::Missing)
        );
        assert_eq!(
            basic_credentials(&headers("Bearer abc")),
            Err(CredentialsError::WrongScheme("Basic"))
        );
        assert_eq!(
            basic_credentials(&headers("Basic")),
            Err(CredentialsError::NoColon)
        );
        assert_eq!(
            basic_credentials(&headers("Basic !!!not-base64")),
            Err(CredentialsError::BadBase64)
        );
        assert_eq!(
            basic_credentials(&basic(&[0xff, 0xfe, b':', b'x'])),
            Err(CredentialsError::NotUtf8)
        );
        assert_eq!(
            basic_credentials(&basic(b"no-colon")),
            Err(CredentialsError::NoColon)
        );
        let mut opaque = HeaderMap::new();
        opaque.insert(
            "authorization",
            HeaderValue::from_bytes(b"Basic \xff").expect("obs-text is allowed"),
        );
        assert_eq!(
            basic_credentials(&opaque),
            Err(CredentialsError::Unreadable)
        );
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers("Bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers("bearer   a.b.c ")), Ok("a.b.c"));
        assert_eq!(
            bearer_token(&headers("Bearer ")),
            Err(CredentialsError::EmptyToken)
        );
        assert_eq!(
            bearer_token(&headers("Basic a.b.c")),
            Err(CredentialsError::WrongScheme("Bearer"))
        );
        assert_eq!(
            bearer_token(&headers("Bearera.b.c")),
            Err(CredentialsError::WrongScheme("Bearer"))
        );
    }
}

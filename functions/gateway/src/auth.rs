//! Who is calling: every route checks the caller's Bearer token with
//! auth's `/validate`. (`/login` is routed to auth itself, so a flood of
//! Argon2-heavy logins waits for auth's slots, never the gateway's.)
//!
//! The gateway never sees the JWT secret. Asking auth keeps one place that
//! decides what a valid token is (algorithm pinning, expiry, admin flag),
//! and `http://auth.spin.internal` is dispatched in-process by the host, so
//! the check costs no network round trip.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;
use spin_sdk::http::{HeaderMap, StatusCode, send};

use spin_sdk::wasip3::http::types::ErrorCode;

use crate::errors::ApiError;

const VALIDATE_URL: &str = "http://auth.spin.internal/validate";

/// Sent with every 401 so clients know which scheme to use.
pub const BEARER_CHALLENGE: &str = r#"Bearer realm="spindle""#;

/// Auth answers with a token or a small JSON document; anything larger is
/// not auth talking and is refused rather than buffered.
const MAX_AUTH_RESPONSE_BYTES: usize = 64 * 1024;

/// The authenticated caller, from the claims auth vouched for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Caller {
    /// The account's email.
    pub username: String,
    #[serde(default)]
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see a resource owned by `owner`: its owner
    /// or an admin. A resource without an owner is visible to admins only.
    pub fn may_access(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(self.username.as_str())
    }
}

/// Checks the caller's Bearer token with auth and returns who they are.
///
/// A missing header or a token auth refuses is a 401 carrying auth's reason
/// (expired, bad signature, ...). Auth being unreachable or failing itself
/// is a 503: the token may be fine, and the client should retry rather than
/// log in again.
pub async fn authenticate(headers: &HeaderMap) -> Result<Caller, ApiError> {
    if !headers.contains_key("authorization") {
        return Err(unauthorized(
            "missing Authorization header; log in with POST /login and send \
             Authorization: Bearer <token>",
        ));
    }
    let answer = call_auth(VALIDATE_URL, headers).await?;
    if answer.status == StatusCode::OK {
        return serde_json::from_slice(&answer.body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the auth service returned claims this gateway cannot read: {e}"),
            )
        });
    }
    let reason = error_message(&answer.body);
    if answer.status.is_server_error() {
        return Err(ApiError::unavailable(format!(
            "could not check the token, try again later: auth answered {}: {reason}",
            answer.status
        )));
    }
    Err(unauthorized(format!("invalid token: {reason}")))
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::unauthorized(BEARER_CHALLENGE, message)
}

/// What auth answered, read in full (it is small).
struct AuthAnswer {
    status: StatusCode,
    body: Bytes,
}

/// POSTs to auth with only the caller's `Authorization` header: auth
/// needs nothing else, and forwarding less keeps hop-by-hop and spin-*
/// headers from leaking between components.
async fn call_auth(url: &str, headers: &HeaderMap) -> Result<AuthAnswer, ApiError> {
    let mut builder = http::Request::post(url);
    if let Some(value) = headers.get("authorization") {
        builder = builder.header("authorization", value.clone());
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(format!("could not build the request to auth: {e}")))?;
    let response = send(request).await.map_err(|e| match e {
        // The manifest does not let this component call auth: no client
        // can fix that, and retrying will not help.
        ErrorCode::HttpRequestDenied => ApiError::internal(
            "server misconfigured: the gateway may not call the auth service; add \
             \"http://auth.spin.internal\" to its allowed_outbound_hosts in spin.toml",
        ),
        e => ApiError::unavailable(format!(
            "the auth service is unreachable, try again later: {e}"
        )),
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_AUTH_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            ApiError::unavailable(format!("could not read the auth service's answer: {e}"))
        })?
        .to_bytes();
    Ok(AuthAnswer { status, body })
}

/// The `error` field of auth's JSON error body, or a generic phrase when
/// the body is not one.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| "the token was not accepted".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_with_and_without_admin() {
        let claims: Caller =
            serde_json::from_str(r#"{"username":"a@b.co","admin":true,"iat":1,"exp":2}"#)
                .expect("valid claims");
        assert_eq!(
            claims,
            Caller {
                username: "a@b.co".into(),
                admin: true
            }
        );
        let claims: Caller =
            serde_json::from_str(r#"{"username":"a@b.co","iat":1,"exp":2}"#).expect("valid");
        assert!(!claims.admin);
    }

    #[test]
    fn owners_and_admins_may_access() {
        let alice = Caller {
            username: "alice@example.com".into(),
            admin: false,
        };
        let admin = Caller {
            username: "root@example.com".into(),
            admin: true,
        };
        assert!(alice.may_access(Some("alice@example.com")));
        assert!(!alice.may_access(Some("bob@example.com")));
        assert!(!alice.may_access(Some("ALICE@example.com")));
        assert!(!alice.may_access(None));
        assert!(admin.may_access(Some("bob@example.com")));
        assert!(admin.may_access(None));
    }

    #[test]
    fn auth_error_messages_are_passed_on() {
        assert_eq!(
            error_message(br#"{"error":"token expired"}"#),
            "token expired"
        );
        assert_eq!(error_message(b"nope"), "the token was not accepted");
    }
}

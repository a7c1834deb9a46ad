//! Settings read from Spin variables on every request, so an operator can
//! change them without rebuilding the component.
//!
//! Only a variable that is *undefined* falls back to its default; a variable
//! provider that fails is reported, because silently using a default (say,
//! enabling signups) could contradict what the operator configured.

use spin_sdk::http::StatusCode;
use spin_sdk::variables;

use crate::http_util::ApiError;

/// Token lifetime when `jwt_ttl_seconds` is unset or not a whole number: one day.
pub const DEFAULT_JWT_TTL_SECONDS: u64 = 86_400;

/// The HS256 signing key. There is no default: a guessable built-in key would
/// let anyone mint tokens, so an unset or empty secret is a server error.
pub async fn jwt_secret() -> Result<String, ApiError> {
    match optional("jwt_secret").await? {
        Some(secret) if !secret.is_empty() => Ok(secret),
        _ => Err(ApiError::internal(
            "server misconfigured: jwt_secret is not set",
        )),
    }
}

/// Lifetime of issued tokens, from `jwt_ttl_seconds`.
pub async fn jwt_ttl_seconds() -> Result<u64, ApiError> {
    Ok(optional("jwt_ttl_seconds")
        .await?
        .and_then(|ttl| ttl.trim().parse().ok())
        .unwrap_or(DEFAULT_JWT_TTL_SECONDS))
}

/// Whether `/signup` accepts new accounts; on unless `signup_enabled` says
/// otherwise. A value that is neither true nor false is refused rather than
/// guessed at, since guessing wrong would open or close signups by accident.
pub async fn signup_enabled() -> Result<bool, ApiError> {
    let Some(raw) = optional("signup_enabled").await? else {
        return Ok(true);
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ApiError::internal(format!(
            "server misconfigured: signup_enabled must be true or false, not {raw:?}"
        ))),
    }
}

/// Whether `email` is listed in the comma-separated `admin_emails` variable.
///
/// The match is exact (after trimming the list entries): accounts are unique
/// by exact email, so a case-insensitive match would grant admin rights to a
/// differently-cased account that someone else registered.
pub async fn is_admin(email: &str) -> Result<bool, ApiError> {
    Ok(optional("admin_emails")
        .await?
        .is_some_and(|list| list.split(',').any(|entry| entry.trim() == email)))
}

/// Reads a variable, mapping "not defined" to `None`.
async fn optional(name: &str) -> Result<Option<String>, ApiError> {
    match variables::get(name).await {
        Ok(value) => Ok(Some(value)),
        Err(variables::Error::Undefined(_)) => Ok(None),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not read the {name} variable: {e}"),
        )),
    }
}

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

/// How many failed logins are allowed within a window, per account and per
/// client address (see `throttle.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// `login_failures_per_account`: few, since an account is one target.
    pub per_account: u64,
    /// `login_failures_per_address`: many more, so people behind one NAT
    /// do not lock each other out.
    pub per_address: u64,
    /// `login_window_secs`: how long a failure counts.
    pub window_secs: u64,
}

pub const DEFAULT_LOGIN_LIMITS: LoginLimits = LoginLimits {
    per_account: 10,
    per_address: 100,
    window_secs: 900,
};

/// How many signups one client address may make within a window.
#[derive(Debug, Clone, Copy)]
pub struct SignupLimit {
    /// `signups_per_address`.
    pub per_address: u64,
    /// `signup_window_secs`.
    pub window_secs: u64,
}

pub const DEFAULT_SIGNUP_LIMIT: SignupLimit = SignupLimit {
    per_address: 20,
    window_secs: 3600,
};

pub async fn login_limits() -> Result<LoginLimits, ApiError> {
    Ok(LoginLimits {
        per_account: positive(
            "login_failures_per_account",
            DEFAULT_LOGIN_LIMITS.per_account,
        )
        .await?,
        per_address: positive(
            "login_failures_per_address",
            DEFAULT_LOGIN_LIMITS.per_address,
        )
        .await?,
        window_secs: positive("login_window_secs", DEFAULT_LOGIN_LIMITS.window_secs).await?,
    })
}

pub async fn signup_limit() -> Result<SignupLimit, ApiError> {
    Ok(SignupLimit {
        per_address: positive("signups_per_address", DEFAULT_SIGNUP_LIMIT.per_address).await?,
        window_secs: positive("signup_window_secs", DEFAULT_SIGNUP_LIMIT.window_secs).await?,
    })
}

/// A whole number of at least 1 from variable `name`, or `default` when it
/// is undefined. Anything else is refused rather than guessed at: reading
/// `"ten"` as "no limit" would switch the throttle off by accident.
async fn positive(name: &str, default: u64) -> Result<u64, ApiError> {
    match optional(name).await? {
        None => Ok(default),
        Some(raw) => parse_positive(name, &raw),
    }
}

fn parse_positive(name: &str, raw: &str) -> Result<u64, ApiError> {
    match raw.trim().parse::<u64>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(ApiError::internal(format!(
            "server misconfigured: {name} must be a whole number of at least 1, not {raw:?}"
        ))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_must_be_positive_whole_numbers() {
        assert_eq!(parse_positive("x", " 10\n").ok(), Some(10));
        for bad in ["", "0", "-1", "1.5", "ten"] {
            let e = parse_positive("login_window_secs", bad).expect_err(bad);
            assert!(e.to_string().contains("login_window_secs"), "{e}");
        }
    }
}

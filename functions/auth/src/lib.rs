//! Spindle's auth function: account signup, password login that hands out an
//! HS256 JWT, and validation of those tokens.
//!
//! One component serves all three routes so they share a secret, a user
//! table and one set of error conventions:
//!
//! - `POST /signup` with `{"email", "password"}` → `201 {"email"}`
//! - `POST /login` with `Authorization: Basic` → `200` and the JWT as text
//! - `POST /validate` with `Authorization: Bearer` → `200` and the claims
//!
//! Every failure is `{"error": "..."}` as JSON. Bad client input is always a
//! 4xx; 5xx is reserved for configuration and storage problems.
//!
//! Failed logins are throttled per account and per client address, and
//! signups per address (`throttle.rs`): past a limit the answer is `429`
//! with `Retry-After`, given before any Argon2 work.

// The bindings wit-bindgen generates (imports and the exported handler)
// are unsafe FFI; the code written here is not.
#![allow(unsafe_code)]

mod config;
mod email;
mod http_util;
mod jwt;
mod password;
mod throttle;
mod users;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spin_sdk::http::{HeaderName, Method, Request, StatusCode};
#[cfg(target_arch = "wasm32")]
use spin_sdk::http_service;

use http_util::{ApiError, HttpResponse};
use throttle::{Kind, Limit, Throttle, ThrottleError};
use users::{StoreError, UserStore};

/// `WWW-Authenticate` challenges sent with 401s, telling clients which
/// scheme each route expects.
const BASIC_CHALLENGE: &str = r#"Basic realm="spindle", charset="UTF-8""#;
const BEARER_CHALLENGE: &str = r#"Bearer realm="spindle""#;

/// The component's export. Only a wasm32 build exports it: a native build
/// (for `cargo build` and the unit tests) cannot link the component-model
/// export names.
#[cfg_attr(target_arch = "wasm32", http_service)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
async fn handle(req: Request) -> HttpResponse {
    route(req).await.unwrap_or_else(http_util::error_response)
}

async fn route(req: Request) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path();
    let handler = match path {
        "/signup" => Route::Signup,
        "/login" => Route::Login,
        "/validate" => Route::Validate,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route for {path}; this function serves /signup, /login and /validate"),
            ));
        }
    };
    if req.method() != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} only accepts POST, not {}", req.method()),
        )
        .with_header(HeaderName::from_static("allow"), "POST"));
    }
    match handler {
        Route::Signup => signup(req).await,
        Route::Login => login(req).await,
        Route::Validate => validate(req).await,
    }
}

enum Route {
    Signup,
    Login,
    Validate,
}

#[derive(Deserialize)]
struct SignupRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct SignupResponse<'a> {
    email: &'a str,
}

async fn signup(req: Request) -> Result<HttpResponse, ApiError> {
    if !config::signup_enabled().await? {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "signups are disabled on this server",
        ));
    }
    let address = client_address(&req);
    let body = http_util::read_body(req).await?;
    let request: SignupRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            r#"the body must be JSON like {{"email": "...", "password": "..."}}: {e}"#
        ))
    })?;
    let email =
        email::normalize(&request.email).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !password::meets_policy(&request.password) {
        return Err(ApiError::bad_request(format!(
            "password must be at least {} characters long",
            password::MIN_PASSWORD_CHARS
        )));
    }

    let store = UserStore::open().await?;
    // Every signup that gets this far counts, whether it creates an account
    // or finds the email taken (which would otherwise let one address probe
    // for registered emails without limit).
    if let Some(address) = address {
        let limit = config::signup_limit().await?;
        Throttle::open(store.connection())
            .await?
            .admit(
                vec![Limit {
                    kind: Kind::SignupAddress,
                    subject: address,
                    max: limit.per_address,
                    window_secs: limit.window_secs,
                }],
                now_seconds()?,
            )
            .await?;
    }
    // Checked before hashing so a taken email costs no Argon2 work; the
    // unique constraint still catches a concurrent signup (see `insert`).
    if store.password_hash(email).await?.is_some() {
        return Err(StoreError::Duplicate.into());
    }
    let hash = password::hash(&request.password)?;
    store.insert(email, hash).await?;
    Ok(http_util::json(
        StatusCode::CREATED,
        &SignupResponse { email },
    ))
}

async fn login(req: Request) -> Result<HttpResponse, ApiError> {
    let credentials = http_util::basic_credentials(req.headers())
        .map_err(|e| ApiError::unauthorized(BASIC_CHALLENGE, e.to_string()))?;
    let secret = config::jwt_secret().await?;
    let limits = config::login_limits().await?;

    // Same normalisation as signup, so the stored form is what we look up
    // and what the account's failures are counted under. An address signup
    // would have refused cannot have an account and is never compared in
    // the database, which might not be able to compare it; its failures
    // count against the client's address only.
    let email = email::normalize(&credentials.email).ok();
    let mut guarded = Vec::new();
    if let Some(email) = email {
        guarded.push(Limit {
            kind: Kind::LoginAccount,
            subject: email.to_owned(),
            max: limits.per_account,
            window_secs: limits.window_secs,
        });
    }
    if let Some(address) = client_address(&req) {
        guarded.push(Limit {
            kind: Kind::LoginAddress,
            subject: address,
            max: limits.per_address,
            window_secs: limits.window_secs,
        });
    }

    let store = UserStore::open().await?;
    let throttle = Throttle::open(store.connection()).await?;
    // Unknown emails are throttled like real ones, so a 429 does not tell
    // which emails have accounts. Refused attempts never reach Argon2, not
    // even with the right password, or guessing would go on.
    let attempt = throttle.admit(guarded, now_seconds()?).await?;
    let verified = match verify_login(&store, email, &credentials.password).await {
        Ok(verified) => verified,
        Err(e) => {
            // A server fault is not a wrong guess. Best effort: the client
            // must see the fault, not a failure to clean up after it.
            if let Err(forget) = throttle.forget(&attempt).await {
                eprintln!("auth: could not forget a failed login attempt: {forget}");
            }
            return Err(e);
        }
    };
    let Some(email) = verified else {
        // The attempt's rows stay: they are the counted failures. One
        // message for every failure, so the answer does not reveal which
        // emails have accounts.
        return Err(ApiError::unauthorized(
            BASIC_CHALLENGE,
            "invalid email or password",
        ));
    };
    throttle.forget(&attempt).await?;
    throttle.clear(Kind::LoginAccount, email).await?;

    let claims = jwt::Claims::new(
        email.to_owned(),
        store.is_admin(email).await?,
        now_seconds()?,
        config::jwt_ttl_seconds().await?,
    );
    let token = jwt::sign(&claims, &secret)
        .map_err(|e| ApiError::internal(format!("could not sign the token: {e}")))?;
    Ok(http_util::text(StatusCode::OK, token))
}

/// The account whose password `password` is, if any. Takes as long for an
/// unknown email as for a wrong password, so timing does not reveal which
/// emails have accounts.
async fn verify_login<'e>(
    store: &UserStore,
    email: Option<&'e str>,
    password: &str,
) -> Result<Option<&'e str>, ApiError> {
    let stored = match email {
        Some(email) => store.password_hash(email).await?,
        None => None,
    };
    match (email, stored) {
        (Some(email), Some(stored)) => Ok(password::verify(password, &stored)?.then_some(email)),
        _ => {
            password::verify_unknown_user(password)?;
            Ok(None)
        }
    }
}

/// The client's IP (without port) from the `spin-client-addr` header the
/// host sets on every outside request (`/login` and `/signup` are routed to
/// auth directly). Absent only for an in-app caller that did not pass it
/// on; the account limit still applies then.
fn client_address(req: &Request) -> Option<String> {
    throttle::client_ip(
        req.headers()
            .get("spin-client-addr")
            .and_then(|value| value.to_str().ok()),
    )
}

async fn validate(req: Request) -> Result<HttpResponse, ApiError> {
    let token = http_util::bearer_token(req.headers())
        .map_err(|e| ApiError::unauthorized(BEARER_CHALLENGE, e.to_string()))?;
    let secret = config::jwt_secret().await?;
    let mut claims = jwt::verify(token, &secret)
        .map_err(|e| ApiError::unauthorized(BEARER_CHALLENGE, e.to_string()))?;
    // Admin rights are what the operator grants now, not what they were
    // when the token was issued.
    claims.admin = users::current_admin_grant(&claims.username).await?;
    Ok(http_util::json(StatusCode::OK, &claims))
}

/// Seconds since the Unix epoch, for `iat`/`exp`.
fn now_seconds() -> Result<u64, ApiError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .map_err(|_| ApiError::internal("the host clock is set before 1970"))
}

/// Hashing failures are never the client's fault.
impl From<password::PasswordError> for ApiError {
    fn from(e: password::PasswordError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// A throttled client is told when to retry; storage faults are answered
/// as everywhere else.
impl From<ThrottleError> for ApiError {
    fn from(e: ThrottleError) -> Self {
        match e {
            ThrottleError::Limited {
                retry_after_secs, ..
            } => ApiError::too_many_requests(retry_after_secs, e.to_string()),
            ThrottleError::Store(e) => e.into(),
        }
    }
}

/// Outages are 503 so callers know to retry; a taken email is the client's
/// conflict, not a server fault.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Query { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            StoreError::Duplicate => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

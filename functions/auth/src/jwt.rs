//! Issuing and checking the HS256 JSON Web Tokens handed out by `/login`.
//!
//! Verification pins the algorithm to HS256: a token's own `alg` header is
//! never trusted to choose how it is checked, which is what defeats
//! `alg: none` and algorithm-confusion forgeries.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token asserts. Every field is required when decoding, so a token
/// minted elsewhere with the same secret but a different shape is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account's email address.
    pub username: String,
    /// Issued-at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Whether an operator has granted the account admin rights (the
    /// `admin` table); `/validate` answers with the current grant.
    pub admin: bool,
}

impl Claims {
    /// Claims for `username`, valid from `now` for `ttl_seconds`.
    pub fn new(username: String, admin: bool, now: u64, ttl_seconds: u64) -> Self {
        Self {
            username,
            iat: now,
            exp: now.saturating_add(ttl_seconds),
            admin,
        }
    }
}

/// Why a presented token was refused; the message is shown to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired; log in again")]
    Expired,
    #[error("the token signature does not match; it was altered or signed with another key")]
    BadSignature,
    #[error("the token must be signed with HS256")]
    WrongAlgorithm,
    #[error("the token is not a well-formed JWT with username, iat, exp and admin claims")]
    Malformed,
}

/// Signs `claims` with HS256. Fails only if the crypto backend does.
pub fn sign(claims: &Claims, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Verifies signature and expiry of `token` and returns its claims.
pub fn verify(token: &str, secret: &str) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Tokens are checked by the same clock that issued them, so no skew
    // allowance: an expired token is refused the second it expires.
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_exp = true;
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        _ => TokenError::Malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::prelude::BASE64_URL_SAFE_NO_PAD as B64;

    const SECRET: &str = "test-secret";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn fresh() -> Claims {
        Claims::new("a@b.co".into(), true, now(), 3600)
    }

    #[test]
    fn round_trip() {
        let claims = fresh();
        let token = sign(&claims, SECRET).expect("signs");
        assert_eq!(verify(&token, SECRET), Ok(claims));
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let token = sign(&fresh(), SECRET).expect("signs");
        assert_eq!(verify(&token, "other"), Err(TokenError::BadSignature));

        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = B64.encode(
            serde_json::to_vec(&Claims::new("evil@b.co".into(), true, now(), 3600))
                .expect("encodes"),
        );
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verify(&tampered, SECRET), Err(TokenError::BadSignature));

        assert!(verify(&token[..token.len() - 5], SECRET).is_err());
        assert!(verify(&format!("{}.{}", parts[0], parts[1]), SECRET).is_err());
        assert!(verify("", SECRET).is_err());
    }

    #[test]
    fn other_algorithms_are_refused() {
        let payload = B64.encode(serde_json::to_vec(&fresh()).expect("encodes"));
        let none_header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(verify(&format!("{none_header}.{payload}."), SECRET).is_err());

        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &fresh(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        assert_eq!(verify(&hs512, SECRET), Err(TokenError::WrongAlgorithm));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let odd_payloads = [
            "null",
            "[]",
            r#"{"username":1,"iat":0,"exp":1,"admin":false}"#,
            r#"{"username":"a","iat":-1,"exp":99999999999,"admin":false}"#,
            r#"{"username":"a","iat":0,"exp":"soon","admin":false}"#,
            r#"{"username":"a","iat":0,"exp":1e400,"admin":false}"#,
        ];
        for payload in odd_payloads {
            let token = format!("{header}.{}.c2ln", B64.encode(payload));
            assert!(verify(&token, SECRET).is_err(), "{payload}");
        }
        for junk in [
            "...",
            "a.b.c",
            "a.b.c.d",
            "\0",
            "é.é.é",
            &"x".repeat(10_000),
        ] {
            assert!(verify(junk, SECRET).is_err(), "{junk}");
        }
    }

    #[test]
    fn expiry_has_no_leeway_and_is_required() {
        let expired = Claims::new("a@b.co".into(), false, now() - 10, 5);
        let token = sign(&expired, SECRET).expect("signs");
        assert_eq!(verify(&token, SECRET), Err(TokenError::Expired));

        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"username": "a@b.co", "iat": now(), "admin": false}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        assert_eq!(verify(&no_exp, SECRET), Err(TokenError::Malformed));
    }
}

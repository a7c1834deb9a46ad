//! Password policy and Argon2id hashing.
//!
//! Hashes are stored as PHC strings (`$argon2id$v=19$m=…`), which carry their
//! own salt and parameters, so the defaults can be raised later without
//! invalidating existing accounts.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{self, PasswordHasher, PasswordVerifier};

/// Shortest password accepted at signup, counted in characters rather than
/// bytes so non-ASCII passwords are not held to a laxer rule.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// A hash of an unguessable password with the default parameters. Logins for
/// unknown emails are verified against it so they take as long as logins with
/// a wrong password, and response times do not reveal which emails exist.
const UNKNOWN_USER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$L9YU+VVLlPa27bhPX1xvzg$Iv9p5SdRfceaLRsFQRK42tSkI4PvadsVHt0af2oRLZk";

/// A failure of the hashing machinery itself (never of the user's input).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("could not hash the password: {0}")]
    Hash(password_hash::Error),
    #[error("the stored password hash is not a valid PHC string: {0}")]
    CorruptHash(password_hash::phc::Error),
    #[error("could not verify the password: {0}")]
    Verify(password_hash::Error),
}

/// Whether `password` is long enough to be accepted at signup.
pub fn meets_policy(password: &str) -> bool {
    password.chars().count() >= MIN_PASSWORD_CHARS
}

/// Hashes `password` with Argon2id (default parameters, fresh random salt).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(PasswordError::Hash)
}

/// Checks `password` against a stored PHC string; `Ok(false)` means wrong
/// password, `Err` means the stored hash or the verifier is broken.
pub fn verify(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(stored).map_err(PasswordError::CorruptHash)?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(PasswordError::Verify(e)),
    }
}

/// Spends the same effort as [`verify`] for an email that has no account.
pub fn verify_unknown_user(password: &str) -> Result<(), PasswordError> {
    verify(password, UNKNOWN_USER_HASH).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_counts_characters() {
        assert!(!meets_policy("1234567"));
        assert!(meets_policy("12345678"));
        // Seven characters but sixteen bytes: still too short.
        assert!(!meets_policy("ééééé€€"));
        assert!(meets_policy("éééééé€€"));
    }

    #[test]
    fn hash_round_trips_with_random_salt() {
        let first = hash("correct horse").expect("hashes");
        let second = hash("correct horse").expect("hashes");
        assert!(first.starts_with("$argon2id$"));
        assert_ne!(first, second, "salts must differ");
        assert!(verify("correct horse", &first).expect("verifies"));
        assert!(!verify("wrong horse", &first).expect("verifies"));
    }

    #[test]
    fn corrupt_hash_is_an_error_not_a_mismatch() {
        assert!(matches!(
            verify("x", "not a phc string"),
            Err(PasswordError::CorruptHash(_))
        ));
        assert!(verify_unknown_user("anything").is_ok());
    }
}

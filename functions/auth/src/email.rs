//! Email address syntax check for signups.
//!
//! Deliberately a plausibility check, not RFC 5322: it catches typos and junk
//! (missing `@`, no domain, stray whitespace) without rejecting real
//! addresses. Whether the mailbox exists is not this component's concern.
//!
//! Addresses are limited to printable ASCII. Internationalised addresses are
//! rare, and the `user` table is created without a character set, so on a
//! MariaDB whose default is latin1 or utf8mb3 a non-ASCII email would make
//! the query fail: client input must never be able to cause a server error.

/// Longest address that fits in an SMTP path (RFC 5321 §4.5.3.1.3).
pub const MAX_EMAIL_BYTES: usize = 254;

/// Why an email address was refused; the message is shown to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than {MAX_EMAIL_BYTES} bytes")]
    TooLong,
    #[error("email must consist of printable ASCII characters without spaces")]
    BadCharacter,
    #[error("email must contain exactly one '@'")]
    AtSign,
    #[error("email has nothing before the '@'")]
    EmptyLocalPart,
    #[error("email domain must look like example.com")]
    BadDomain,
}

/// Trims surrounding whitespace and checks the rest looks like an address.
///
/// Returns the trimmed form, which is what gets stored and compared: a user
/// who pasted a trailing space at signup can still log in without it.
pub fn normalize(raw: &str) -> Result<&str, EmailError> {
    let email = raw.trim();
    if email.is_empty() {
        return Err(EmailError::Empty);
    }
    if email.len() > MAX_EMAIL_BYTES {
        return Err(EmailError::TooLong);
    }
    if !email.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EmailError::BadCharacter);
    }
    let (local, domain) = email.split_once('@').ok_or(EmailError::AtSign)?;
    if domain.contains('@') {
        return Err(EmailError::AtSign);
    }
    if local.is_empty() {
        return Err(EmailError::EmptyLocalPart);
    }
    // At least two labels, none empty: rejects `a@b`, `a@.com`, `a@b.` and `a@b..c`.
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return Err(EmailError::BadDomain);
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plausible_addresses_and_trims() {
        assert_eq!(normalize("alice@example.com"), Ok("alice@example.com"));
        assert_eq!(
            normalize("  a.b+tag@sub.example.org\n"),
            Ok("a.b+tag@sub.example.org")
        );
        let longest = format!("{}@example.com", "a".repeat(MAX_EMAIL_BYTES - 12));
        assert_eq!(normalize(&longest), Ok(longest.as_str()));
    }

    #[test]
    fn rejects_junk() {
        assert_eq!(normalize("   "), Err(EmailError::Empty));
        let too_long = format!("{}@example.com", "a".repeat(MAX_EMAIL_BYTES - 11));
        assert_eq!(normalize(&too_long), Err(EmailError::TooLong));
        assert_eq!(normalize("a b@example.com"), Err(EmailError::BadCharacter));
        assert_eq!(
            normalize("ab@exa\u{7}mple.com"),
            Err(EmailError::BadCharacter)
        );
        assert_eq!(normalize("example.com"), Err(EmailError::AtSign));
        assert_eq!(normalize("a@b@example.com"), Err(EmailError::AtSign));
        assert_eq!(normalize("@example.com"), Err(EmailError::EmptyLocalPart));
        for bad in ["a@localhost", "a@.com", "a@example.", "a@ex..com", "a@"] {
            assert_eq!(normalize(bad), Err(EmailError::BadDomain), "{bad}");
        }
    }
}

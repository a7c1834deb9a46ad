//! Turning an [`Email`] into RFC 5322 bytes, the same for every backend, so
//! an `.eml` in the outbox is exactly what would have gone over SMTP.
//!
//! Everything a component supplies is checked here before any backend sees
//! it: recipients must parse as addresses in full (lettre's parser would
//! otherwise ignore trailing text), and CR/LF never reaches a header, so a
//! component cannot add headers or recipients of its own.

use super::{Email, MailError};
use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use std::str::FromStr;

/// A message ready to hand to a backend.
pub(crate) struct Prepared {
    pub message: Message,
    /// The Message-ID header value, angle brackets included.
    pub message_id: String,
}

/// Parses one address: `user@example.com` or `Name <user@example.com>`.
pub(crate) fn parse_mailbox(text: &str) -> Result<Mailbox, MailError> {
    let invalid = |reason: &str| MailError::InvalidAddress {
        address: text.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    let mailbox = Mailbox::from_str(trimmed)
        .map_err(|e| invalid(&format!("{e} (expected user@domain or Name <user@domain>)")))?;
    // lettre's mailbox parser stops at the first complete address and ignores
    // the rest; insist that the address it found is the whole input.
    let address = match trimmed.rfind('<') {
        Some(open) if trimmed.ends_with('>') => &trimmed[open + 1..trimmed.len() - 1],
        Some(_) => return Err(invalid("text follows the closing '>'")),
        None => trimmed,
    };
    if AsRef::<str>::as_ref(&mailbox.email) != address.trim() {
        return Err(invalid("it holds more than one address"));
    }
    Ok(mailbox)
}

/// Builds the message: From, To, Subject, Date, Message-ID and a UTF-8
/// plain-text body (lettre picks 7bit, quoted-printable or base64).
pub(crate) fn prepare(email: &Email, from: &Mailbox) -> Result<Prepared, MailError> {
    if email.to.is_empty() {
        return Err(MailError::InvalidMessage("it has no recipients".into()));
    }
    let recipients = email
        .to
        .iter()
        .map(|to| parse_mailbox(to))
        .collect::<Result<Vec<_>, _>>()?;
    let message_id = match &email.message_id {
        Some(id) => normalize_message_id(id)?,
        None => new_message_id(from)?,
    };
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(one_line(&email.subject))
        .message_id(Some(message_id.clone()))
        .header(ContentType::TEXT_PLAIN);
    for to in recipients {
        builder = builder.to(to);
    }
    let message = builder
        .body(email.text.clone())
        .map_err(|e| MailError::InvalidMessage(e.to_string()))?;
    Ok(Prepared {
        message,
        message_id,
    })
}

/// A subject is one header line: line breaks and other control characters
/// become spaces.
fn one_line(subject: &str) -> String {
    subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A fresh `<128 random bits in hex@sender's domain>`, unique without any
/// coordination between hosts.
fn new_message_id(from: &Mailbox) -> Result<String, MailError> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random)
        .map_err(|e| MailError::InvalidMessage(format!("no randomness for a Message-ID: {e}")))?;
    Ok(format!("<{}@{}>", hex::encode(random), from.email.domain()))
}

/// Accepts a caller's Message-ID (`id@domain`, brackets optional) so a
/// retried send carries the same one; rejects anything that could break the
/// header.
fn normalize_message_id(id: &str) -> Result<String, MailError> {
    let inner = id.trim();
    let inner = inner
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(inner);
    let valid_char = |c: char| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\');
    let well_formed = matches!(inner.split_once('@'),
        Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains('@'));
    if !well_formed || !inner.chars().all(valid_char) || inner.len() > 250 {
        return Err(MailError::InvalidMessage(format!(
            "Message-ID {id:?} is not of the form <id@domain>"
        )));
    }
    Ok(format!("<{inner}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Mailbox {
        "Spindle <noreply@spindle.local>".parse().unwrap()
    }

    #[test]
    fn addresses_parse_in_full_or_not_at_all() {
        assert!(parse_mailbox("me@example.com").is_ok());
        assert!(parse_mailbox(" Me <me@example.com> ").is_ok());
        for bad in [
            "",
            "not-an-address",
            "me@",
            "@example.com",
            "me@example.com, other@example.com",
            "me@example.com other@example.com",
            "me@example.com\r\nBcc: evil@example.com",
            "Me <me@example.com> trailing",
        ] {
            let err = parse_mailbox(bad).unwrap_err();
            assert!(
                matches!(err, MailError::InvalidAddress { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn headers_cannot_be_injected_through_the_subject() {
        let email = Email {
            to: vec!["me@example.com".into()],
            subject: "hi\r\nBcc: evil@example.com".into(),
            text: "body".into(),
            message_id: None,
        };
        let prepared = prepare(&email, &from()).unwrap();
        let text = String::from_utf8(prepared.message.formatted()).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("Bcc")), "{text}");
        assert!(prepared.message_id.ends_with("@spindle.local>"));
    }

    #[test]
    fn message_ids_are_normalized_or_refused() {
        assert_eq!(normalize_message_id("a.b@c").unwrap(), "<a.b@c>");
        assert_eq!(normalize_message_id("<a.b@c>").unwrap(), "<a.b@c>");
        for bad in ["", "nobrackets", "<a@b> x", "a@b\r\nX: y", "a@b@c", "<@b>"] {
            assert!(normalize_message_id(bad).is_err(), "{bad:?}");
        }
    }
}

//! What can go wrong when sending mail, sorted by who can fix it: the
//! operator (`Config`, `Outbox`), the component (`InvalidAddress`,
//! `InvalidMessage`), or time and the mail server (`Unavailable`,
//! `Rejected`). The capability layer maps these to component-visible errors.

use std::path::PathBuf;

/// The URL forms `[smtp] url` accepts, quoted in every URL error so the
/// operator sees the fix next to the mistake.
pub(crate) const ACCEPTED_URL_FORMS: &str = "smtp://host[:port] (plain, port 25), \
     smtp+starttls://host[:port] (STARTTLS, port 587) or smtps://host[:port] \
     (implicit TLS, port 465), each optionally with user:password@ before the host";

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The `[smtp]` settings cannot work; reported at start-up.
    #[error("[smtp] {0}")]
    Config(String),

    /// A recipient (or the configured sender) is not an email address.
    #[error("invalid email address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },

    /// The message itself cannot be built (no recipients, bad Message-ID).
    #[error("invalid message: {0}")]
    InvalidMessage(String),

    /// The server could not be reached or the session failed before it said
    /// anything about the message: connection refused, TLS (including an
    /// untrusted certificate), timeouts, a dropped connection.
    #[error("mail server {server} is unavailable: {reason}")]
    Unavailable { server: String, reason: String },

    /// The server answered with an SMTP error (a bad login, a refused
    /// recipient, a full mailbox); `reply` carries its code and text.
    #[error("mail server {server} refused: {reply}")]
    Rejected {
        server: String,
        /// The SMTP reply code, e.g. 535 or 550.
        code: u16,
        reply: String,
    },

    /// The embedded outbox could not be written.
    #[error("cannot write to the mail outbox {}: {source}", path.display())]
    Outbox {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl MailError {
    /// Whether sending the same message again later may succeed: network
    /// trouble and 4xx replies are temporary, everything else needs a change
    /// first. Queue consumers use this to choose between retry and
    /// dead-letter.
    pub fn is_transient(&self) -> bool {
        match self {
            MailError::Unavailable { .. } | MailError::Outbox { .. } => true,
            MailError::Rejected { code, .. } => (400..500).contains(code),
            MailError::Config(_)
            | MailError::InvalidAddress { .. }
            | MailError::InvalidMessage(_) => false,
        }
    }
}

//! Mail: sending email over SMTP (`lettre`) or into `.eml` files in the
//! state directory's outbox.
//!
//! [`Mailer`] is the backend-neutral API the mail capability calls; the
//! runtime config's `[smtp]` section picks the backend:
//!
//! ```toml
//! [smtp]
//! url = "smtp+starttls://user:password@mail.example.com"  # or smtp://, smtps://
//! from = "Spindle <noreply@spindle.local>"                # this is the default
//! ca_file = "/etc/spindle/mail-ca.pem"                    # optional private CA
//! ```
//!
//! Without `[smtp]`, messages go to `<state-dir>/outbox/*.eml`. Both
//! backends build the message the same way ([`message`]), so function code
//! and the bytes produced are identical; only delivery differs. The tests of
//! both backends are in `host/platform/tests/conformance/mail.rs`.

mod capability;
pub mod component;
mod endpoint;
mod error;
mod message;
mod outbox;
mod smtp;

pub use error::MailError;
pub use outbox::Outbox;
pub use smtp::SmtpMailer;

use lettre::message::Mailbox;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The sender used when `[smtp] from` is absent, and by the outbox.
pub const DEFAULT_FROM: &str = "Spindle <noreply@spindle.local>";

/// The runtime config's `[smtp]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// `smtp://`, `smtp+starttls://` or `smtps://`, with `user:password@`
    /// when the server wants a login.
    pub url: String,
    /// The From header and envelope sender; [`DEFAULT_FROM`] when absent.
    #[serde(default)]
    pub from: Option<String>,
    /// Extra trusted root certificates (PEM), for servers whose certificate
    /// comes from a private CA; Mozilla's roots stay trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// One plain-text message from a component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Email {
    /// `user@example.com` or `Name <user@example.com>`; at least one.
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    /// A caller-chosen Message-ID (`id@domain`), so that a retried send is
    /// recognisably the same message; a fresh random one when `None`.
    pub message_id: Option<String>,
}

/// Where mail goes. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub enum Mailer {
    Smtp(SmtpMailer),
    Outbox(Outbox),
}

impl Mailer {
    /// Chooses the backend: SMTP when `[smtp]` is configured, else the outbox
    /// under `state_dir`. Every setting is checked here, so a bad URL, sender
    /// or CA file stops start-up with a message saying what is accepted.
    pub fn from_config(smtp: Option<&SmtpSettings>, state_dir: &Path) -> Result<Self, MailError> {
        let from_text = smtp.and_then(|s| s.from.as_deref()).unwrap_or(DEFAULT_FROM);
        let from = message::parse_mailbox(from_text)
            .map_err(|e| MailError::Config(format!("from: {e}")))?;
        let mailer = match smtp {
            Some(settings) => Mailer::Smtp(SmtpMailer::new(settings, from)?),
            None => Mailer::Outbox(Outbox::new(state_dir, from)?),
        };
        tracing::info!(backend = %mailer.describe(), "mail backend");
        Ok(mailer)
    }

    /// Sends one message and returns its Message-ID (angle brackets
    /// included, exactly as in the header).
    ///
    /// Errors: a bad recipient is [`MailError::InvalidAddress`] and an empty
    /// recipient list [`MailError::InvalidMessage`] (the component's fault);
    /// an unreachable server is [`MailError::Unavailable`] and an SMTP error
    /// reply [`MailError::Rejected`] with the server's text.
    pub async fn send(&self, email: &Email) -> Result<String, MailError> {
        let prepared = message::prepare(email, self.from())?;
        let result = match self {
            Mailer::Smtp(smtp) => smtp.send(&prepared).await,
            Mailer::Outbox(outbox) => outbox.send(&prepared).await.map(drop),
        };
        match &result {
            Ok(()) => tracing::info!(
                message_id = %prepared.message_id,
                recipients = email.to.len(),
                "mail sent",
            ),
            Err(e) => {
                tracing::warn!(message_id = %prepared.message_id, error = %e, "mail not sent")
            }
        }
        result.map(|()| prepared.message_id)
    }

    /// Readiness: SMTP answers NOOP (connect, TLS and login included), or
    /// the outbox directory is writable.
    pub async fn ping(&self) -> Result<(), MailError> {
        match self {
            Mailer::Smtp(smtp) => smtp.ping().await,
            Mailer::Outbox(outbox) => outbox.ping().await,
        }
    }

    /// One line for logs and `spindle up` output; never shows the password.
    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp(smtp) => smtp.describe(),
            Mailer::Outbox(outbox) => outbox.describe(),
        }
    }

    fn from(&self) -> &Mailbox {
        match self {
            Mailer::Smtp(smtp) => smtp.from(),
            Mailer::Outbox(outbox) => outbox.from(),
        }
    }
}

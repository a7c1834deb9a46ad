//! The production backend: an SMTP server through lettre's pooled async
//! transport, with TLS by rustls (Mozilla's roots plus an optional private
//! CA from `ca_file`; certificates and host names are always verified).
//!
//! The transport is built on first use rather than at start-up because
//! lettre's pool spawns its cleanup task on the current Tokio runtime;
//! everything that can be wrong with the settings (URL, CA file) is still
//! checked up front in [`SmtpMailer::new`].

use super::endpoint::{Endpoint, Security};
use super::message::Prepared;
use super::{MailError, SmtpSettings};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::error::Error as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Longest wait for the server at each step (connect, each reply). Long
/// enough for a slow relay, short enough that a request does not hang.
const TIMEOUT: Duration = Duration::from_secs(30);

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct SmtpMailer {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    from: Mailbox,
    builder: AsyncSmtpTransportBuilder,
    transport: OnceLock<Transport>,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("endpoint", &self.inner.endpoint)
            .field("from", &self.inner.from.to_string())
            .finish()
    }
}

impl SmtpMailer {
    pub(crate) fn new(settings: &SmtpSettings, from: Mailbox) -> Result<Self, MailError> {
        let endpoint = Endpoint::parse(&settings.url)?;
        let ca_file = settings.ca_file.as_deref();
        if ca_file.is_some() && !endpoint.uses_tls() {
            return Err(MailError::Config(
                "ca_file needs a TLS url (smtps:// or smtp+starttls://); smtp:// is plain text"
                    .into(),
            ));
        }
        let tls = match endpoint.security {
            Security::Plain => Tls::None,
            Security::StartTls => Tls::Required(tls_parameters(&endpoint.host, ca_file)?),
            Security::Implicit => Tls::Wrapper(tls_parameters(&endpoint.host, ca_file)?),
        };
        let mut builder = Transport::builder_dangerous(endpoint.host.clone())
            .port(endpoint.port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if let Some((user, password)) = &endpoint.credentials {
            if !endpoint.uses_tls() {
                tracing::warn!(
                    server = %endpoint,
                    "[smtp] logs in over smtp:// (no TLS): the password crosses the network in the clear",
                );
            }
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(SmtpMailer {
            inner: Arc::new(Inner {
                endpoint,
                from,
                builder,
                transport: OnceLock::new(),
            }),
        })
    }

    pub(crate) fn from(&self) -> &Mailbox {
        &self.inner.from
    }

    pub(crate) fn describe(&self) -> String {
        format!("SMTP {} as {}", self.inner.endpoint, self.inner.from)
    }

    fn transport(&self) -> &Transport {
        self.inner
            .transport
            .get_or_init(|| self.inner.builder.clone().build())
    }

    pub(crate) async fn send(&self, prepared: &Prepared) -> Result<(), MailError> {
        let response = self
            .transport()
            .send(prepared.message.clone())
            .await
            .map_err(|e| self.error(&e))?;
        tracing::debug!(
            server = %self.inner.endpoint,
            message_id = %prepared.message_id,
            reply = %response.message().collect::<Vec<_>>().join(" "),
            "mail accepted by the SMTP server",
        );
        Ok(())
    }

    /// Readiness: a pooled (or new) connection answers NOOP, which proves
    /// the server is reachable, TLS verifies and the login works.
    pub(crate) async fn ping(&self) -> Result<(), MailError> {
        match self.transport().test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(MailError::Unavailable {
                server: self.inner.endpoint.to_string(),
                reason: "the server did not answer NOOP".into(),
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// Sorts lettre's error into [`MailError`], keeping the server's reply
    /// and the whole cause chain (that is where "invalid peer certificate:
    /// UnknownIssuer" lives).
    fn error(&self, error: &SmtpError) -> MailError {
        let server = self.inner.endpoint.to_string();
        let reason = cause_chain(error);
        match error.status() {
            Some(code) => MailError::Rejected {
                server,
                code: u16::from(code),
                reply: reason,
            },
            None => MailError::Unavailable { server, reason },
        }
    }
}

/// TLS settings for `host`: Mozilla's roots, plus the PEM certificates in
/// `ca_file` for servers with a private CA.
fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, MailError> {
    let mut builder =
        TlsParameters::builder(host.to_owned()).certificate_store(CertificateStore::WebpkiRoots);
    if let Some(path) = ca_file {
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| MailError::Config(format!("cannot read ca_file {shown}: {e}")))?;
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(MailError::Config(format!(
                "ca_file {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )));
        }
        let certificate = Certificate::from_pem(&pem)
            .map_err(|e| MailError::Config(format!("ca_file {shown}: {e}")))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| MailError::Config(format!("TLS settings for {host}: {e}")))
}

/// `error: cause: cause`, without the repetitions lettre's nesting adds
/// ("Connection error: Connection error: invalid peer certificate: …").
fn cause_chain(error: &SmtpError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    said_once(&text)
}

/// Drops a `: `-separated part that repeats the one before it.
fn said_once(text: &str) -> String {
    let mut parts: Vec<&str> = text.split(": ").collect();
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, ca_file: Option<&str>) -> SmtpSettings {
        SmtpSettings {
            url: url.into(),
            from: None,
            ca_file: ca_file.map(Into::into),
        }
    }

    fn from() -> Mailbox {
        "noreply@spindle.local".parse().unwrap()
    }

    #[test]
    fn ca_file_problems_are_start_up_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = SmtpMailer::new(&settings("smtps://h", missing.to_str()), from()).unwrap_err();
        assert!(err.to_string().contains("cannot read ca_file"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let err = SmtpMailer::new(&settings("smtps://h", empty.to_str()), from()).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );

        let err = SmtpMailer::new(&settings("smtp://h", empty.to_str()), from()).unwrap_err();
        assert!(err.to_string().contains("needs a TLS url"), "{err}");
    }

    #[test]
    fn repeated_causes_are_said_once() {
        assert_eq!(
            said_once(
                "Connection error: Connection error: invalid peer certificate: UnknownIssuer"
            ),
            "Connection error: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn describe_hides_the_password() {
        let mailer = SmtpMailer::new(&settings("smtp://me:secret@h:2525", None), from()).unwrap();
        let text = mailer.describe();
        assert_eq!(text, "SMTP smtp://me:***@h:2525 as noreply@spindle.local");
        assert!(!format!("{mailer:?}").contains("secret"));
    }
}

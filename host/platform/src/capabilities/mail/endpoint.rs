//! The `[smtp] url`: which server, how to secure the connection, and who to
//! log in as. Parsed at start-up so a typo fails `spindle up` instead of the
//! first email.
//!
//! The scheme names the security mode outright (`smtp+starttls://` rather
//! than lettre's `smtp://…?tls=required`) so a config never silently falls
//! back to plain text.

use super::MailError;
use super::error::ACCEPTED_URL_FORMS;
use std::fmt;
use url::{Host, Url};

/// How the connection to the server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Security {
    /// `smtp://`: no TLS at all (local relays, test servers).
    Plain,
    /// `smtp+starttls://`: plain connect, then STARTTLS is required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

impl Security {
    fn scheme(self) -> &'static str {
        match self {
            Security::Plain => "smtp",
            Security::StartTls => "smtp+starttls",
            Security::Implicit => "smtps",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Security::Plain => 25,
            Security::StartTls => 587,
            Security::Implicit => 465,
        }
    }
}

/// A parsed `[smtp] url`. Its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub security: Security,
    /// Host name or IP address, without IPv6 brackets: what we connect to and
    /// what the server's certificate must name.
    pub host: String,
    pub port: u16,
    /// `(user, password)`, percent-decoded.
    pub credentials: Option<(String, String)>,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, MailError> {
        let bad = |what: String| MailError::Config(format!("url {what}; use {ACCEPTED_URL_FORMS}"));
        // The URL is not echoed back: it may hold a password.
        let url = Url::parse(text.trim()).map_err(|e| bad(format!("cannot be parsed ({e})")))?;
        let security = match url.scheme() {
            "smtp" => Security::Plain,
            "smtp+starttls" => Security::StartTls,
            "smtps" => Security::Implicit,
            other => return Err(bad(format!("scheme {other:?} is not supported"))),
        };
        let host = match url.host() {
            Some(Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("has no host".into())),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a path, query or fragment".into()));
        }
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            ("", Some(_)) => return Err(bad("has a password but no user name".into())),
            (_, None) => return Err(bad("has a user name but no password".into())),
            (user, Some(password)) => Some((decode(user), decode(password))),
        };
        Ok(Endpoint {
            security,
            port: url.port().unwrap_or(security.default_port()),
            host,
            credentials,
        })
    }

    /// Whether the connection is encrypted, so a CA file means something.
    pub fn uses_tls(&self) -> bool {
        self.security != Security::Plain
    }
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

impl fmt::Display for Endpoint {
    /// `scheme://user:***@host:port`: safe for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.security.scheme())?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_schemes_and_their_default_ports() {
        let e = Endpoint::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!((e.security, e.port), (Security::Plain, 2525));
        let e = Endpoint::parse("smtp+starttls://mail.example.com").unwrap();
        assert_eq!((e.security, e.port), (Security::StartTls, 587));
        let e = Endpoint::parse("smtps://[::1]").unwrap();
        assert_eq!(
            (e.security, e.host.as_str(), e.port),
            (Security::Implicit, "::1", 465)
        );
        assert_eq!(e.to_string(), "smtps://[::1]:465");
        assert_eq!(Endpoint::parse("smtp://h").unwrap().port, 25);
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        let e = Endpoint::parse("smtps://me%40x.com:p%40ss%3Aword@mail.example.com").unwrap();
        assert_eq!(e.credentials, Some(("me@x.com".into(), "p@ss:word".into())));
        assert_eq!(e.to_string(), "smtps://me@x.com:***@mail.example.com:465");
        assert!(!format!("{e:?}").contains("word"));
    }

    #[test]
    fn bad_urls_name_the_accepted_forms() {
        for bad in [
            "http://127.0.0.1:2525",
            "smtp+ssl://h",
            "not a url",
            "smtp://",
            "smtp://h/path",
            "smtp://h?tls=required",
            "smtp://user@h",
            "smtp://:pw@h",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains("smtp+starttls://host[:port]"), "{bad}: {err}");
            assert!(err.contains("smtps://"), "{bad}: {err}");
        }
        let err = Endpoint::parse("smtp://me:secret@h:bad")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}

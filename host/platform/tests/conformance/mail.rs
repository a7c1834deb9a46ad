//! The mailer on both backends: SMTP against a real SMTP server speaking
//! SMTP over TCP (the `smtp-server` test crate, shared with the host's
//! tests) in each of its TLS modes, and the outbox against the file system;
//! and that the two hold the same bytes.

use smtp_server::{AuthConfig, Options, Received, SmtpServer, TlsMode};
use spindle_platform::capabilities::mail::{Email, MailError, Mailer, SmtpSettings};
use std::path::{Path, PathBuf};

fn settings(url: String, ca_file: Option<PathBuf>) -> SmtpSettings {
    SmtpSettings {
        url,
        from: None,
        ca_file,
    }
}

fn smtp(url: String, ca_file: Option<PathBuf>) -> Mailer {
    let state = tempfile::tempdir().unwrap();
    Mailer::from_config(Some(&settings(url, ca_file)), state.path()).unwrap()
}

fn email(to: &[&str]) -> Email {
    Email {
        to: to.iter().map(|s| s.to_string()).collect(),
        subject: "Your MP3 is ready".into(),
        text: "Download it from /download?fid=abc123\nThanks.".into(),
        message_id: None,
    }
}

/// The server received `email` as sent by a mailer with the default sender.
fn assert_delivered(received: &Received, email: &Email, message_id: &str) {
    assert_eq!(received.mail_from, "noreply@spindle.local");
    assert_eq!(received.header("Message-ID").as_deref(), Some(message_id));
    assert_eq!(
        received.header("Subject").as_deref(),
        Some("Your MP3 is ready")
    );
    assert_eq!(
        received.header("From").as_deref(),
        Some("Spindle <noreply@spindle.local>")
    );
    assert_eq!(
        received.body(),
        email.text.replace('\n', "\r\n"),
        "{}",
        received.text()
    );
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn outbox_files(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn plain_smtp_delivers_to_every_recipient() {
    let server = SmtpServer::start(TlsMode::Plain);
    let mailer = smtp(server.url(), None);
    let email = email(&["me@example.com", "Other Person <other@example.com>"]);

    let message_id = mailer.send(&email).await.unwrap();

    let received = server.messages();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.rcpt_to, ["me@example.com", "other@example.com"]);
    assert_eq!(
        got.header("To").as_deref(),
        Some("me@example.com, \"Other Person\" <other@example.com>")
    );
    assert_delivered(got, &email, &message_id);
    assert!(!got.tls && got.authenticated_as.is_none());

    // A second message reuses the pooled connection (lettre parks it in a
    // task of its own, hence the pause) and gets its own id.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let second = mailer.send(&email).await.unwrap();
    assert_ne!(second, message_id);
    assert_eq!(server.messages().len(), 2);
    assert_eq!(server.connections(), 1);
    mailer.ping().await.unwrap();
}

#[tokio::test]
async fn starttls_and_implicit_tls_deliver_with_a_trusted_ca_file() {
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let server = SmtpServer::start(mode);
        let mailer = smtp(server.url(), Some(server.ca_file()));
        let email = email(&["me@example.com"]);
        mailer.ping().await.unwrap();
        let message_id = mailer.send(&email).await.unwrap();
        let received = server.messages();
        assert_eq!(received.len(), 1, "{mode:?}");
        assert!(received[0].tls, "{mode:?}: delivered without TLS");
        assert_eq!(received[0].rcpt_to, ["me@example.com"]);
        assert_delivered(&received[0], &email, &message_id);
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_a_readable_error() {
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let server = SmtpServer::start(mode);
        let mailer = smtp(server.url(), None);
        let err = mailer.send(&email(&["me@example.com"])).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, MailError::Unavailable { .. }),
            "{mode:?}: {text}"
        );
        assert!(text.contains("certificate"), "{mode:?}: {text}");
        assert!(
            text.contains(&server.addr().to_string()),
            "{mode:?}: {text}"
        );
        assert!(err.is_transient());
        assert!(server.messages().is_empty());
        // The server notices the client's alert a moment after the client
        // has given up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while server.tls_failures() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(server.tls_failures() >= 1, "{mode:?}");
        assert!(matches!(
            mailer.ping().await,
            Err(MailError::Unavailable { .. })
        ));
    }
}

#[tokio::test]
async fn auth_plain_and_login_with_credentials_from_the_url() {
    for mechanisms in ["PLAIN LOGIN", "LOGIN"] {
        let password = "p@ss:w/rd";
        let server = SmtpServer::start_with(
            Options::new(TlsMode::Plain).auth(AuthConfig::new("mailer", password).only(mechanisms)),
        );
        let mailer = smtp(server.url_with_login("mailer", "p%40ss%3Aw%2Frd"), None);
        let message_id = mailer.send(&email(&["me@example.com"])).await.unwrap();
        let received = server.messages();
        assert_eq!(received.len(), 1, "{mechanisms}");
        assert_eq!(received[0].authenticated_as.as_deref(), Some("mailer"));
        assert_eq!(
            received[0].header("Message-ID").as_deref(),
            Some(&*message_id)
        );
        assert!(!mailer.describe().contains("w/rd") && !mailer.describe().contains("%2F"));
    }
}

#[tokio::test]
async fn auth_after_starttls() {
    let server = SmtpServer::start_with(
        Options::new(TlsMode::StartTls).auth(AuthConfig::new("mailer", "secret")),
    );
    let mailer = smtp(
        server.url_with_login("mailer", "secret"),
        Some(server.ca_file()),
    );
    mailer.send(&email(&["me@example.com"])).await.unwrap();
    let received = server.messages();
    assert!(received[0].tls);
    assert_eq!(received[0].authenticated_as.as_deref(), Some("mailer"));
}

#[tokio::test]
async fn a_wrong_password_is_rejected_with_the_server_reply() {
    let server = SmtpServer::start_with(
        Options::new(TlsMode::Plain).auth(AuthConfig::new("mailer", "right")),
    );
    let mailer = smtp(server.url_with_login("mailer", "wrong"), None);
    let err = mailer.send(&email(&["me@example.com"])).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, MailError::Rejected { code: 535, .. }),
        "{text}"
    );
    assert!(
        text.contains("Authentication credentials invalid"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "{text}");
    assert!(!err.is_transient());
    assert!(server.messages().is_empty());
    assert!(server.auth_failures() >= 1);
    assert!(matches!(
        mailer.ping().await,
        Err(MailError::Rejected { code: 535, .. })
    ));
}

#[tokio::test]
async fn a_refused_recipient_is_rejected_with_the_server_reply() {
    let server = SmtpServer::start_with(Options::new(TlsMode::Plain).reject("nobody@example.com"));
    let mailer = smtp(server.url(), None);
    let err = mailer
        .send(&email(&["nobody@example.com"]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, MailError::Rejected { code: 550, .. }),
        "{text}"
    );
    assert!(text.contains("User unknown"), "{text}");
    // The connection survives a refused transaction.
    mailer.send(&email(&["me@example.com"])).await.unwrap();
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn invalid_recipients_fail_before_any_connection() {
    let server = SmtpServer::start(TlsMode::Plain);
    let mailer = smtp(server.url(), None);
    for bad in ["not-an-address", "me@example.com\r\nRCPT TO:<x@y>", ""] {
        let err = mailer
            .send(&email(&["ok@example.com", bad]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MailError::InvalidAddress { address, .. } if address == bad),
            "{bad:?}: {err}"
        );
        assert!(!err.is_transient());
    }
    let err = mailer.send(&email(&[])).await.unwrap_err();
    assert!(matches!(err, MailError::InvalidMessage(_)), "{err}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let url = format!("smtp://127.0.0.1:{}", closed_port());
    let mailer = smtp(url.clone(), None);
    let err = mailer.send(&email(&["me@example.com"])).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MailError::Unavailable { .. }), "{text}");
    assert!(text.contains(url.trim_start_matches("smtp://")), "{text}");
    assert!(err.is_transient());
    assert!(matches!(
        mailer.ping().await,
        Err(MailError::Unavailable { .. })
    ));
}

#[test]
fn bad_settings_are_start_up_errors_that_say_what_is_accepted() {
    let state = tempfile::tempdir().unwrap();
    let err = Mailer::from_config(
        Some(&settings("http://127.0.0.1:2525".into(), None)),
        state.path(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MailError::Config(_)), "{text}");
    for form in ["smtp://", "smtp+starttls://", "smtps://", "user:password@"] {
        assert!(text.contains(form), "{text}");
    }

    let mut bad_from = settings("smtp://127.0.0.1:2525".into(), None);
    bad_from.from = Some("not an address".into());
    let err = Mailer::from_config(Some(&bad_from), state.path()).unwrap_err();
    assert!(matches!(err, MailError::Config(_)), "{err}");
    assert!(err.to_string().contains("from"), "{err}");
}

#[test]
fn settings_deserialize_from_the_runtime_config() {
    let s: SmtpSettings = toml::from_str(
        r#"url = "smtp://127.0.0.1:2525"
           from = "Spindle <noreply@spindle.local>"
           ca_file = "/etc/ca.pem""#,
    )
    .unwrap();
    assert_eq!(s.url, "smtp://127.0.0.1:2525");
    assert_eq!(s.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert!(toml::from_str::<SmtpSettings>("url = \"smtp://h\"\nport = 25").is_err());
}

#[tokio::test]
async fn the_outbox_writes_one_eml_per_message() {
    let state = tempfile::tempdir().unwrap();
    let mailer = Mailer::from_config(None, state.path()).unwrap();
    assert!(mailer.describe().starts_with("outbox "));
    mailer.ping().await.unwrap();

    let email = email(&["me@example.com"]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(mailer.send(&email).await.unwrap());
    }
    let files = outbox_files(state.path());
    assert_eq!(files.len(), 3, "{files:?}");
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let digest = name.strip_suffix(".eml").unwrap();
        assert!(
            digest.len() == 32 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        let message = Received {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: std::fs::read(file).unwrap(),
            authenticated_as: None,
            tls: false,
        };
        assert_delivered_headers(&message, &email);
        let id = message.header("Message-ID").unwrap();
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }

    // The same Message-ID again (a redelivered job) writes nothing new.
    let again = Email {
        message_id: Some("job-7@spindle.test".into()),
        ..email.clone()
    };
    mailer.send(&again).await.unwrap();
    mailer.send(&again).await.unwrap();
    assert_eq!(
        outbox_files(state.path()).len(),
        4,
        "one file per Message-ID"
    );
}

fn assert_delivered_headers(message: &Received, email: &Email) {
    assert_eq!(message.header("To").as_deref(), Some("me@example.com"));
    assert_eq!(
        message.header("Subject").as_deref(),
        Some("Your MP3 is ready")
    );
    assert_eq!(message.body(), email.text.replace('\n', "\r\n"));
}

#[tokio::test]
async fn the_outbox_holds_exactly_what_smtp_would_carry() {
    let server = SmtpServer::start(TlsMode::Plain);
    let smtp = smtp(server.url(), None);
    let state = tempfile::tempdir().unwrap();
    let outbox = Mailer::from_config(None, state.path()).unwrap();
    let mut email = email(&["me@example.com", "You <you@example.com>"]);
    email.text = "Line one\n.A line starting with a dot\nünïcödé".into();
    email.message_id = Some("job-42.notify@spindle.local".into());

    assert_eq!(
        smtp.send(&email).await.unwrap(),
        "<job-42.notify@spindle.local>"
    );
    assert_eq!(
        outbox.send(&email).await.unwrap(),
        "<job-42.notify@spindle.local>"
    );

    let over_smtp = server.messages().remove(0).text();
    let files = outbox_files(state.path());
    let in_outbox = String::from_utf8(std::fs::read(&files[0]).unwrap()).unwrap();
    let without_date = |text: &str| {
        text.split("\r\n")
            .filter(|line| !line.starts_with("Date:"))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    assert_eq!(without_date(&over_smtp), without_date(&in_outbox));
}

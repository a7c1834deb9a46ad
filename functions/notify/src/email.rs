//! The "your MP3 is ready" email: who it goes to, what it says, and the
//! Message-ID that makes a resend recognisable.
//!
//! Pure functions of the message and the MP3's id, so they are unit-tested
//! natively and every delivery of one job composes the identical email.

use crate::message::Mp3Ready;

/// The domain of the Message-IDs this function makes up.
pub const MESSAGE_ID_DOMAIN: &str = "spindle.local";

pub const SUBJECT: &str = "Your MP3 is ready";

/// What `spindle:mail/mailer.send` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyEmail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub message_id: String,
}

/// `mp3-ready.<job_id>@spindle.local`, the same for every delivery of the
/// job's message (a redelivery may carry a different queue message-id, so
/// that one is not used). Bytes outside `[A-Za-z0-9._-]` are written as
/// `=XX`, which keeps the id a valid header token and distinct per job id
/// (`=` itself is escaped); with job ids of at most 64 bytes it stays far
/// under the mail capability's 250-character limit.
pub fn message_id(job_id: &str) -> String {
    let mut token = String::with_capacity(job_id.len());
    for b in job_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            token.push(char::from(b));
        } else {
            token.push_str(&format!("={b:02X}"));
        }
    }
    format!("mp3-ready.{token}@{MESSAGE_ID_DOMAIN}")
}

/// `{public_url}/download?fid=<mp3_fid>`: the gateway's download route
/// (DESIGN.md point 8). A trailing `/` on `public_url` is dropped, and the
/// fid is percent-encoded (a real one is 24 hex digits and passes unchanged).
pub fn download_link(public_url: &str, mp3_fid: &str) -> String {
    let base = public_url.trim().trim_end_matches('/');
    let mut fid = String::with_capacity(mp3_fid.len());
    for b in mp3_fid.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            fid.push(char::from(b));
        } else {
            fid.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{base}/download?fid={fid}")
}

/// The email for `job`, whose MP3 is stored as `mp3_fid`.
///
/// Lines stay under 75 characters for a `public_url` of up to 30 characters, so the mail
/// goes out as plain 7-bit text and an `.eml` in the outbox reads as is
/// (longer lines make lettre switch to quoted-printable, which is still
/// correct but hard to read raw).
pub fn compose(job: &Mp3Ready, mp3_fid: &str, public_url: &str) -> ReadyEmail {
    let link = download_link(public_url, mp3_fid);
    let text = format!(
        "Hello,\n\
         \n\
         the MP3 of your video is ready.\n\
         \n\
         Job:     {job_id}\n\
         MP3 id:  {mp3_fid}\n\
         \n\
         Download it from\n\
         \n\
         \x20 {link}\n\
         \n\
         The download needs the token you got when you logged in: send it\n\
         as \"Authorization: Bearer <token>\", for example\n\
         \n\
         \x20 curl -H \"Authorization: Bearer $TOKEN\" -o job.mp3 \\\n\
         \x20   '{link}'\n\
         \n\
         Only you (and an administrator) can download it.\n\
         \n\
         Spindle\n",
        job_id = job.job_id,
    );
    ReadyEmail {
        to: job.username.clone(),
        subject: SUBJECT.to_string(),
        text,
        message_id: message_id(&job.job_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Mp3Ready {
        Mp3Ready {
            job_id: "3f2a9c1e-77b0-4d8e-9a51-0c6f1e2d3b4a".into(),
            video_fid: Some("65a000000000000000000001".into()),
            mp3_fid: "65a000000000000000000002".into(),
            username: "me@example.com".into(),
        }
    }

    #[test]
    fn the_email_names_the_job_the_mp3_and_the_link() {
        let mail = compose(
            &job(),
            "65a000000000000000000002",
            "https://mp3.example.com/",
        );
        assert_eq!(mail.to, "me@example.com");
        assert_eq!(mail.subject, "Your MP3 is ready");
        assert!(mail.text.contains("3f2a9c1e-77b0-4d8e-9a51-0c6f1e2d3b4a"));
        assert!(mail.text.contains("MP3 id:  65a000000000000000000002"));
        assert!(
            mail.text
                .contains("https://mp3.example.com/download?fid=65a000000000000000000002"),
            "{}",
            mail.text
        );
        assert!(mail.text.contains("Authorization: Bearer"));
        assert_eq!(
            mail.message_id,
            "mp3-ready.3f2a9c1e-77b0-4d8e-9a51-0c6f1e2d3b4a@spindle.local"
        );
    }

    #[test]
    fn lines_stay_short_enough_for_7bit() {
        let public_url = "https://mp3s.example.com:8443/"; // 30 characters
        let mail = compose(&job(), "65a000000000000000000002", public_url);
        for line in mail.text.lines() {
            assert!(line.len() < 75, "{line:?} is {} long", line.len());
            assert!(!line.ends_with(' '), "{line:?} ends in a space");
        }
        assert!(mail.text.is_ascii());
    }

    #[test]
    fn every_delivery_of_a_job_composes_the_same_email() {
        let a = compose(&job(), "65a000000000000000000002", "http://127.0.0.1:3000");
        let b = compose(&job(), "65a000000000000000000002", "http://127.0.0.1:3000");
        assert_eq!(a, b);
    }

    #[test]
    fn message_ids_stay_valid_header_tokens() {
        assert_eq!(message_id("abc_1.2-3"), "mp3-ready.abc_1.2-3@spindle.local");
        assert_eq!(
            message_id("a b@c<d>=é"),
            "mp3-ready.a=20b=40c=3Cd=3E=3D=C3=A9@spindle.local"
        );
        // Distinct job ids never share a Message-ID, even when one looks
        // like the escaped form of the other.
        assert_ne!(message_id("a=20"), message_id("a "));
        let longest = "\u{7f}".repeat(crate::message::MAX_JOB_ID_BYTES);
        let id = message_id(&longest);
        assert!(id.len() <= 250, "{}", id.len());
        assert!(id.chars().all(|c| c.is_ascii_graphic()));
        assert_eq!(id.matches('@').count(), 1);
    }

    #[test]
    fn download_links_are_well_formed() {
        assert_eq!(
            download_link("http://127.0.0.1:3000", "65a000000000000000000002"),
            "http://127.0.0.1:3000/download?fid=65a000000000000000000002"
        );
        assert_eq!(
            download_link(" https://x.example/app// ", "a b&c"),
            "https://x.example/app/download?fid=a%20b%26c"
        );
    }
}

//! Spindle's notify function: for each message on the `mp3` queue it emails
//! the user that their MP3 is ready, with the job id, the MP3 id and the
//! download link (DESIGN.md point 6).
//!
//! A queue-only component: it exports `spindle:queue/handler@0.1.0` and no
//! HTTP handler, and uses the `mp3s` bucket (`blob_buckets = ["mp3s"]`), mail
//! (`send_mail = true`) and the `public_url` variable.
//!
//! Outcomes, as the trigger reads them: `ok` acks; `retry` is for trouble
//! that may pass (storage or mail server unavailable); `reject` dead-letters
//! messages that can never succeed as they are (malformed, the MP3 is gone,
//! an undeliverable address) and configuration errors, where retrying
//! without an operator's fix only delays the dead letter; an operator can
//! replay it after the fix. Each handling logs one line on stderr.
//!
//! # Idempotency
//!
//! Delivery is at-least-once, and a redelivered message may carry a new
//! queue message-id, so the job itself is the key:
//!
//! 1. `stat` the MP3. If its metadata names another owner or job than the
//!    message, the message is not about this user's MP3: reject it rather
//!    than email someone about a file they cannot download. If it has
//!    `notified`, the email went out already: ack without sending.
//! 2. Claim the sending with compare-and-set on the MP3's `sending` key
//!    (`"<delivery> <expires-ms>"`, a lease of [`LEASE_MS`]). A live claim
//!    of another delivery means that one is sending right now: retry later,
//!    by when it has recorded `notified`. A dead one (its holder crashed)
//!    is taken over once its lease has run out.
//! 3. Send, with a Message-ID derived from the job id ([`email::message_id`]),
//!    then set `notified` to the Message-ID the mail capability returned
//!    and release the claim, in one compare-and-set.
//!
//! The window that remains: a crash (or a failed metadata update) after the
//! send and before `notified` is stored sends the email again after the
//! lease. Both copies carry the same Message-ID, so the outbox keeps one
//! file, and mail clients and servers that de-duplicate by Message-ID show
//! one. Closing the window entirely would need the mail server and the blob
//! store to commit together, which they cannot.

// The bindings wit-bindgen generates (imports and the exported handler)
// are unsafe FFI; the code written here is not.
#![allow(unsafe_code)]

mod email;
mod message;

mod queue {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../host/platform/src/capabilities/queue/wit",
        world: "spindle:queue/queue-handler",
        generate_all,
    });
}

mod mail {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../host/platform/src/capabilities/mail/wit",
        world: "spindle:mail/mail-client",
        generate_all,
    });
}

mod blobs {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../host/platform/src/capabilities/blobs/wit",
        world: "spindle:blobs/blobs-client",
        generate_all,
    });
}

use blobs::spindle::blobs::store;
use mail::spindle::mail::mailer;
use message::Mp3Ready;
use queue::exports::spindle::queue::handler::{self, Failure};

/// Where the convert worker stores MP3s.
const BUCKET: &str = "mp3s";

/// The metadata key that records the sent email's Message-ID.
const NOTIFIED: &str = "notified";

/// The metadata key of a delivery's claim on sending the email.
const SENDING: &str = "sending";

/// How long a claim on sending holds: far longer than a send takes.
const LEASE_MS: u64 = 60_000;

struct Notify;

impl handler::Guest for Notify {
    async fn handle(delivery: handler::Message) -> Result<(), Failure> {
        let token = format!("{}/{}", delivery.message_id, delivery.attempt);
        let result = notify(&delivery.body, &token).await;
        let what = match &result {
            Ok(done) => done.to_string(),
            Err(Failure::Retry(reason)) => format!("retry: {reason}"),
            Err(Failure::Reject(reason)) => format!("reject: {reason}"),
        };
        eprintln!(
            "notify: message {} (attempt {}): {what}",
            delivery.message_id, delivery.attempt
        );
        result.map(drop)
    }
}

// Exported only in the component: a native build (for the unit tests) cannot
// link symbol names like `spindle:queue/handler@0.1.0#handle` into a shared
// library, and has no host to call them anyway.
#[cfg(target_family = "wasm")]
queue::export!(Notify with_types_in queue);

/// What a handled message came to.
enum Done {
    Sent {
        job_id: String,
        to: String,
        message_id: String,
    },
    /// The send succeeded but `notified` could not be stored; acked anyway,
    /// because retrying would send a second email now rather than maybe later.
    SentUnrecorded {
        job_id: String,
        message_id: String,
        error: String,
    },
    AlreadySent {
        job_id: String,
        notified: String,
    },
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Sent {
                job_id,
                to,
                message_id,
            } => write!(f, "job {job_id}: emailed {to} (Message-ID {message_id})"),
            Done::SentUnrecorded {
                job_id,
                message_id,
                error,
            } => write!(
                f,
                "job {job_id}: emailed (Message-ID {message_id}) but could not record it \
                 ({error}); a redelivery would send it again"
            ),
            Done::AlreadySent { job_id, notified } => write!(
                f,
                "job {job_id}: already notified (Message-ID {notified}); not sending again"
            ),
        }
    }
}

async fn notify(body: &[u8], token: &str) -> Result<Done, Failure> {
    let job = message::parse(body).map_err(|e| Failure::Reject(e.to_string()))?;
    let info = store::stat(BUCKET.to_string(), job.mp3_fid.clone())
        .await
        .map_err(|e| stat_failure(&job, e))?;
    check_belongs(&job, &info.metadata).map_err(Failure::Reject)?;
    if let Some(notified) = get(&info.metadata, NOTIFIED) {
        return Ok(Done::AlreadySent {
            job_id: job.job_id,
            notified: notified.to_string(),
        });
    }
    let public_url = spin_sdk::variables::get("public_url").await.map_err(|e| {
        Failure::Reject(format!(
            "the variable public_url is not available ({e}); set it in notify's \
             [component.notify.variables], then replay this dead letter"
        ))
    })?;
    let claim = claim_sending(&job, &info, token).await?;
    // `info.id` is the store's canonical spelling of the fid.
    let ready = email::compose(&job, &info.id, &public_url);
    let sent = mailer::send(mailer::Message {
        to: vec![ready.to.clone()],
        subject: ready.subject,
        text: ready.text,
        message_id: Some(ready.message_id),
    })
    .await;
    let message_id = match sent {
        Ok(id) => id,
        Err(e) => {
            // Nothing went out: let the next delivery claim it at once
            // rather than wait out the lease (best effort; it runs out anyway).
            let expect = vec![(SENDING.to_string(), Some(claim))];
            let release = vec![(SENDING.to_string(), String::new())];
            let _ = store::update_metadata_if(BUCKET.to_string(), info.id, expect, release).await;
            return Err(mail_failure(&job, e));
        }
    };
    let record = vec![
        (NOTIFIED.to_string(), message_id.clone()),
        (SENDING.to_string(), String::new()),
    ];
    let expect = vec![(SENDING.to_string(), Some(claim))];
    match store::update_metadata_if(BUCKET.to_string(), info.id, expect, record).await {
        Ok(Some(_)) => Ok(Done::Sent {
            job_id: job.job_id,
            to: ready.to,
            message_id,
        }),
        Ok(None) => Ok(Done::SentUnrecorded {
            job_id: job.job_id,
            message_id,
            error: "the claim on sending ran out before the send finished".into(),
        }),
        Err(e) => Ok(Done::SentUnrecorded {
            job_id: job.job_id,
            message_id,
            error: blob_error_text(&e),
        }),
    }
}

/// Claims sending the job's email for this delivery; returns the stored claim.
async fn claim_sending(
    job: &Mp3Ready,
    info: &store::FileInfo,
    token: &str,
) -> Result<String, Failure> {
    let now = now_ms();
    let current = get(&info.metadata, SENDING).filter(|v| !v.is_empty());
    if let Some(expires) = current.and_then(claim_expiry)
        && expires > now
    {
        return Err(Failure::Retry(format!(
            "another delivery is sending the email for job {} now (its claim runs {} ms more)",
            job.job_id,
            expires - now
        )));
    }
    let claim = format!("{token} {}", now.saturating_add(LEASE_MS));
    let expect = vec![(
        SENDING.to_string(),
        get(&info.metadata, SENDING).map(str::to_string),
    )];
    let set = vec![(SENDING.to_string(), claim.clone())];
    match store::update_metadata_if(BUCKET.to_string(), info.id.clone(), expect, set).await {
        Ok(Some(_)) => Ok(claim),
        Ok(None) => Err(Failure::Retry(format!(
            "another delivery took the email for job {} a moment ago",
            job.job_id
        ))),
        Err(e) => Err(stat_failure(job, e)),
    }
}

/// When a `sending` claim runs out, in Unix milliseconds.
fn claim_expiry(claim: &str) -> Option<u64> {
    claim.rsplit_once(' ')?.1.parse().ok()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn get<'a>(metadata: &'a [(String, String)], key: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The MP3's `owner` and `job_id` (set by the convert worker), where
/// present, must be the message's.
fn check_belongs(job: &Mp3Ready, metadata: &[(String, String)]) -> Result<(), String> {
    let (fid, id) = (&job.mp3_fid, &job.job_id);
    if let Some(owner) = get(metadata, "owner")
        && owner != job.username
    {
        return Err(format!(
            "the MP3 {fid} belongs to another account than {} (job {id}); not announcing it",
            job.username
        ));
    }
    if let Some(stored) = get(metadata, "job_id")
        && stored != id.as_str()
    {
        return Err(format!(
            "the MP3 {fid} was made for job {stored}, not job {id}; not announcing it"
        ));
    }
    Ok(())
}

fn blob_error_text(e: &store::Error) -> String {
    match e {
        store::Error::PermissionDenied(m)
        | store::Error::NotFound(m)
        | store::Error::Invalid(m)
        | store::Error::Aborted(m)
        | store::Error::Backend(m)
        | store::Error::StorageFull(m) => m.clone(),
    }
}

/// Looking the MP3 up failed: only a storage outage is worth retrying.
fn stat_failure(job: &Mp3Ready, e: store::Error) -> Failure {
    let (fid, id) = (&job.mp3_fid, &job.job_id);
    match e {
        store::Error::NotFound(_) => Failure::Reject(format!(
            "the MP3 {fid} of job {id} no longer exists in bucket {BUCKET}; there is nothing to announce"
        )),
        store::Error::Invalid(m) => Failure::Reject(format!(
            "the mp3_fid {fid:?} of job {id} is not a file id: {m}"
        )),
        store::Error::PermissionDenied(m) => Failure::Reject(format!(
            "{m}; a configuration error: grant it, then replay this dead letter"
        )),
        store::Error::Aborted(m) | store::Error::Backend(m) | store::Error::StorageFull(m) => {
            Failure::Retry(format!(
                "blob storage failed while looking up the MP3 {fid} of job {id}: {m}"
            ))
        }
    }
}

/// Sending failed: an unreachable server is worth retrying (the host already
/// reports a 4xx reply as `unavailable`); the rest needs a person.
fn mail_failure(job: &Mp3Ready, e: mailer::Error) -> Failure {
    let (to, id) = (&job.username, &job.job_id);
    match e {
        mailer::Error::Unavailable(m) => Failure::Retry(format!(
            "the mail for job {id} to {to} could not be sent now: {m}"
        )),
        mailer::Error::InvalidAddress(m) => Failure::Reject(format!(
            "the mail for job {id} cannot be sent to {to:?}: {m}"
        )),
        mailer::Error::Rejected(m) => Failure::Reject(format!(
            "the mail server refused the mail for job {id} to {to}: {m}"
        )),
        mailer::Error::PermissionDenied(m) => Failure::Reject(format!(
            "{m}; a configuration error: grant it, then replay this dead letter"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Mp3Ready {
        Mp3Ready {
            job_id: "j-1".into(),
            video_fid: None,
            mp3_fid: "65a000000000000000000002".into(),
            username: "me@example.com".into(),
        }
    }

    fn is_retry(f: &Failure) -> bool {
        matches!(f, Failure::Retry(_))
    }

    #[test]
    fn only_outages_are_retried() {
        let j = job();
        assert!(is_retry(&stat_failure(
            &j,
            store::Error::Backend("down".into())
        )));
        assert!(is_retry(&stat_failure(
            &j,
            store::Error::Aborted("cut".into())
        )));
        assert!(is_retry(&mail_failure(
            &j,
            mailer::Error::Unavailable("x".into())
        )));
        for f in [
            stat_failure(&j, store::Error::NotFound("gone".into())),
            stat_failure(&j, store::Error::Invalid("bad".into())),
            stat_failure(&j, store::Error::PermissionDenied("no".into())),
            mail_failure(&j, mailer::Error::InvalidAddress("bad".into())),
            mail_failure(&j, mailer::Error::Rejected("550".into())),
            mail_failure(&j, mailer::Error::PermissionDenied("no".into())),
        ] {
            assert!(!is_retry(&f), "{f:?}");
        }
    }

    #[test]
    fn the_mp3_must_be_the_users_and_the_jobs() {
        let meta = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let j = job();
        assert!(check_belongs(&j, &meta(&[])).is_ok());
        let own = meta(&[("owner", "me@example.com"), ("job_id", "j-1")]);
        assert!(check_belongs(&j, &own).is_ok());
        let theirs = check_belongs(&j, &meta(&[("owner", "you@example.com")]));
        assert!(theirs.is_err_and(|e| e.contains("belongs to another account")));
        let other_job = check_belongs(&j, &meta(&[("job_id", "j-2")]));
        assert!(other_job.is_err_and(|e| e.contains("made for job j-2")));
    }

    #[test]
    fn claims_carry_their_expiry() {
        assert_eq!(claim_expiry("m-1/2 1700000000000"), Some(1_700_000_000_000));
        assert_eq!(claim_expiry(""), None);
        assert_eq!(claim_expiry("token-only"), None);
    }

    #[test]
    fn a_missing_mp3_says_so() {
        let Failure::Reject(reason) = stat_failure(&job(), store::Error::NotFound("x".into()))
        else {
            panic!("not a reject");
        };
        assert!(
            reason.contains("65a000000000000000000002") && reason.contains("no longer exists"),
            "{reason}"
        );
    }
}

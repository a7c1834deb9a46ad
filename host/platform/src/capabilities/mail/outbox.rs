//! The embedded default: each message becomes one `.eml` file in
//! `<state-dir>/outbox/`, byte for byte what SMTP would have carried as DATA,
//! so a developer can open it in a mail client and a test can read it.
//!
//! Names are `<first 32 hex of sha256(Message-ID)>.eml`: one file per
//! Message-ID, so a resend of the same message (a redelivered job, two
//! deliveries at once) finds its file there and writes nothing, the way a
//! receiver that deduplicates by Message-ID would show it once. Files are
//! written to a hidden temporary name, synced, and linked into place only if
//! the name is free (then the directory is synced), so a reader never sees
//! half a message and a crash never loses an acknowledged one.

use super::MailError;
use super::message::Prepared;
use lettre::message::Mailbox;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: Arc<PathBuf>,
    from: Mailbox,
}

impl Outbox {
    /// Creates `<state_dir>/outbox/` now, so an unwritable state directory
    /// is a start-up error.
    pub(crate) fn new(state_dir: &Path, from: Mailbox) -> Result<Self, MailError> {
        let dir = state_dir.join("outbox");
        std::fs::create_dir_all(&dir).map_err(|source| MailError::Outbox {
            path: dir.clone(),
            source,
        })?;
        Ok(Outbox {
            dir: Arc::new(dir),
            from,
        })
    }

    pub(crate) fn from(&self) -> &Mailbox {
        &self.from
    }

    pub(crate) fn describe(&self) -> String {
        format!("outbox {} as {}", self.dir.display(), self.from)
    }

    /// Writes the message and returns the file it went to.
    pub(crate) async fn send(&self, prepared: &Prepared) -> Result<PathBuf, MailError> {
        let name = file_name(&prepared.message_id);
        let bytes = prepared.message.formatted();
        let dir = Arc::clone(&self.dir);
        let path = blocking(&self.dir, move || write_atomically(&dir, &name, &bytes)).await?;
        tracing::debug!(
            path = %path.display(),
            message_id = %prepared.message_id,
            "mail written to the outbox",
        );
        Ok(path)
    }

    /// Readiness: the directory exists (again) and a file can be created in it.
    pub(crate) async fn ping(&self) -> Result<(), MailError> {
        let dir = Arc::clone(&self.dir);
        blocking(&self.dir, move || {
            std::fs::create_dir_all(&*dir)?;
            tempfile::Builder::new()
                .prefix(".probe-")
                .tempfile_in(&*dir)
                .map(drop)
        })
        .await
    }
}

/// Runs file I/O off the async executor, attributing errors to `dir`.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, MailError> {
    let outbox_error = |source| MailError::Outbox {
        path: dir.to_path_buf(),
        source,
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| outbox_error(std::io::Error::other(e)))?
        .map_err(outbox_error)
}

fn file_name(message_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(message_id.as_bytes()));
    format!("{}.eml", digest.get(..32).unwrap_or(&digest))
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    // The directory may have been removed since start-up; recreate it rather
    // than lose mail.
    std::fs::create_dir_all(dir)?;
    // Not `*.eml` until it is complete: whoever lists the outbox (people,
    // tools, the tests) sees only whole messages.
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".eml.part")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    let path = dir.join(name);
    match temp.persist_noclobber(&path) {
        Ok(_) => std::fs::File::open(dir)?.sync_all()?,
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::debug!(path = %path.display(), "this Message-ID is in the outbox already");
        }
        Err(e) => return Err(e.error),
    }
    Ok(path)
}

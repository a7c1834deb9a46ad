//! The admin token when `SPINDLE_ADMIN_TOKEN` is not set: `spindle up`
//! generates one into `<state-dir>/admin-token` (mode 0600) and keeps it
//! across restarts; the CLI reads it from there, so local use needs no flag.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file under the state directory that holds the generated token.
pub const FILE_NAME: &str = "admin-token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot {action} the admin token file {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin token file {} is empty; delete it and spindle up makes a new one", path.display())]
    Empty { path: PathBuf },
    #[error("cannot generate an admin token: {0}")]
    Random(getrandom::Error),
}

/// Where the generated token lives for `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the token in `<state_dir>/admin-token`, creating it first (32
/// random bytes as hex, mode 0600) when there is none.
pub fn load_or_create(state_dir: &Path) -> Result<String, TokenError> {
    let path = path(state_dir);
    if let Some(token) = read(&path)? {
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
    let token = hex::encode(bytes);
    // Written to a private temporary file, then moved into place without
    // replacing anything: the file never exists with other permissions or
    // half-written, and a token another process created meanwhile is kept.
    let io = |action| {
        let path = path.clone();
        move |source| TokenError::Io {
            action,
            path,
            source,
        }
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".admin-token-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut temp = builder.tempfile_in(state_dir).map_err(io("create"))?;
    writeln!(temp, "{token}").map_err(io("write"))?;
    temp.as_file().sync_all().map_err(io("write"))?;
    match temp.persist_noclobber(&path) {
        Ok(_) => Ok(token),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.ok_or_else(|| TokenError::Io {
                action: "read",
                path: path.clone(),
                source: e.error,
            })
        }
        Err(e) => Err(io("create")(e.error)),
    }
}

/// The token in `path`, or `None` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<String>, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenError::Empty {
                    path: path.to_path_buf(),
                });
            }
            Ok(Some(token.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "only the token file remains");
    }

    #[test]
    fn an_empty_token_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "\n").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("admin-token") && e.contains("delete"), "{e}");
    }
}

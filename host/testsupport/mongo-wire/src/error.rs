//! Command errors in the shape a real `mongod` sends them.
//!
//! Drivers decide what to do with a failure from `code` (and sometimes
//! `codeName`), so every error carries the same numeric code the real server
//! would use; the message text only has to be helpful to a person.

use bson::{Document, doc};

/// A failed command (or a failed statement inside a write command).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
    /// Extra fields the real server adds to some errors (e.g. `keyPattern`
    /// and `keyValue` on duplicate key errors). Boxed: it is rare, and errors
    /// travel through every `Result` in the crate.
    pub extra: Option<Box<Document>>,
}

/// Result of a command or of one statement of a write command.
pub type CmdResult<T> = Result<T, CommandError>;

impl CommandError {
    pub fn new(code: i32, code_name: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            code_name,
            message: message.into(),
            extra: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(1, "InternalError", message)
    }

    pub fn bad_value(message: impl Into<String>) -> Self {
        Self::new(2, "BadValue", message)
    }

    pub fn failed_to_parse(message: impl Into<String>) -> Self {
        Self::new(9, "FailedToParse", message)
    }

    pub fn type_mismatch(message: impl Into<String>) -> Self {
        Self::new(14, "TypeMismatch", message)
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(26, "NamespaceNotFound", format!("ns does not exist: {ns}"))
    }

    pub fn index_not_found(message: impl Into<String>) -> Self {
        Self::new(27, "IndexNotFound", message)
    }

    pub fn user_not_found(user: &str, db: &str) -> Self {
        Self::new(11, "UserNotFound", format!("User '{user}@{db}' not found"))
    }

    /// Every access-control refusal (code 13), however it is worded.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(13, "Unauthorized", message)
    }

    /// A failed login: like `mongod`, the client only learns that it failed
    /// (the reason is logged).
    pub fn authentication_failed() -> Self {
        Self::new(18, "AuthenticationFailed", "Authentication failed.")
    }

    pub fn role_not_found(role: &str, db: &str) -> Self {
        Self::new(
            31,
            "RoleNotFound",
            format!("Could not find role: {role}@{db}"),
        )
    }

    pub fn cursor_not_found(id: i64) -> Self {
        Self::new(43, "CursorNotFound", format!("cursor id {id} not found"))
    }

    pub fn namespace_exists(ns: &str) -> Self {
        Self::new(
            48,
            "NamespaceExists",
            format!("Collection {ns} already exists."),
        )
    }

    pub fn command_not_found(name: &str) -> Self {
        Self::new(59, "CommandNotFound", format!("no such command: '{name}'"))
    }

    pub fn immutable_id() -> Self {
        Self::new(
            66,
            "ImmutableField",
            "Performing an update on the path '_id' would modify the immutable field '_id'",
        )
    }

    pub fn invalid_namespace(message: impl Into<String>) -> Self {
        Self::new(73, "InvalidNamespace", message)
    }

    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(115, "CommandNotSupported", message)
    }

    /// Duplicate key error, worded like the real server's so log readers
    /// recognise it.
    pub fn duplicate_key(
        ns: &str,
        index: &str,
        key_pattern: &Document,
        key_value: Document,
    ) -> Self {
        let shown = key_value
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut err = Self::new(
            11000,
            "DuplicateKey",
            format!(
                "E11000 duplicate key error collection: {ns} index: {index} dup key: {{ {shown} }}"
            ),
        );
        err.extra = Some(Box::new(
            doc! { "keyPattern": key_pattern.clone(), "keyValue": key_value },
        ));
        err
    }

    /// The reply document of a failed command: `{ok: 0, errmsg, code, codeName}`.
    pub fn to_reply(&self) -> Document {
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": self.message.as_str(),
            "code": self.code,
            "codeName": self.code_name,
        };
        reply.extend(self.extra.as_deref().cloned().unwrap_or_default());
        reply
    }

    /// One entry of a write command's `writeErrors` array.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut entry = doc! {
            "index": i32::try_from(index).unwrap_or(i32::MAX),
            "code": self.code,
            "codeName": self.code_name,
            "errmsg": self.message.as_str(),
        };
        entry.extend(self.extra.as_deref().cloned().unwrap_or_default());
        entry
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code_name, self.code, self.message)
    }
}

impl std::error::Error for CommandError {}

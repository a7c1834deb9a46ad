//! One version of one component: what, when, how, from where and by whom.
//! Every running version has a record; deploys store them
//! ([`crate::deploy`]) and `spindle status` shows them.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// How a version came to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The manifest's `source`, at start-up.
    Manifest,
    /// `spindle deploy`.
    Deploy,
    /// `spindle up --watch` rebuilt it.
    Watch,
    /// `spindle rollback`.
    Rollback,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Manifest => "manifest",
            Action::Deploy => "deploy",
            Action::Watch => "watch",
            Action::Rollback => "rollback",
        }
    }
}

/// One version of one component: what, when, how, from where and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub component: String,
    /// sha256 of the component's bytes, hex.
    pub version: String,
    pub action: Action,
    /// The file it came from (for a rollback, that of the version returned to).
    pub source: String,
    /// The host that made it run.
    pub host: String,
    pub deployed_at_ms: u64,
}

impl VersionRecord {
    pub fn new(component: &str, version: &str, action: Action, source: &str, host: &str) -> Self {
        VersionRecord {
            component: component.into(),
            version: version.into(),
            action,
            source: source.into(),
            host: host.into(),
            deployed_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
        }
    }

    /// The version as people see it: the first 12 hex digits.
    pub fn short(&self) -> &str {
        &self.version[..12.min(self.version.len())]
    }
}

/// `2025-01-31T12:34:56.789Z` for milliseconds since the Unix epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }
}

//! The admin API's request and response bodies, defined once: the admin
//! listener serializes them and the `spindle` CLI (`host/src/client.rs`)
//! deserializes them. Field order is the order on the wire.
//!
//! | route | success body | error body |
//! |---|---|---|
//! | `GET /healthz` | [`Health`] | |
//! | `GET /readyz` | [`Ready`] (200) | [`NotReady`] (503) |
//! | `GET /components` | `[`[`ComponentStatus`]`]` | [`ErrorBody`] |
//! | `PUT /components/NAME`, `POST /components/NAME/rollback` | [`DeployReportView`] | [`ErrorBody`] |
//! | `GET /queues/QUEUE/dead-letters` | `[`[`DeadLetterView`]`]` | [`ErrorBody`] |
//! | `POST /queues/QUEUE/dead-letters/replay` | [`ReplayReport`] | [`ErrorBody`] |
//!
//! Every refusal is an [`ErrorBody`], `{"error": "..."}`.

use crate::version::{Action, VersionRecord, rfc3339};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// `{"error": "..."}`: every error answer of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`: `{"status":"ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

impl Health {
    pub fn ok() -> Self {
        Health {
            status: "ok".into(),
        }
    }
}

/// `GET /readyz` when ready: `status` is `ready`, or `degraded` when some
/// capability only queue handlers need is down (listed in `degraded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub status: ReadyStatus,
    pub degraded: Reasons,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
    Degraded,
}

/// `GET /readyz` when not ready (503): why, as one message (`error`), and
/// in parts: what start-up still waits for, the capabilities that are down
/// and those that only degrade queue handlers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotReady {
    pub error: String,
    pub starting: Option<String>,
    pub down: Reasons,
    pub degraded: Reasons,
}

/// Capability name → why it is down, as a JSON object in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reasons(pub Vec<(String, String)>);

impl Serialize for Reasons {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (capability, why) in &self.0 {
            map.serialize_entry(capability, why)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Reasons {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Reasons;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of capability names and reasons")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Reasons, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Reasons(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// One version of a component as `spindle status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// The first 12 hex digits of `sha256`.
    pub version: String,
    pub sha256: String,
    pub action: Action,
    /// The file it came from.
    pub source: String,
    /// The host that made it run.
    pub host: String,
    /// RFC 3339, UTC, milliseconds.
    pub deployed_at: String,
}

impl From<&VersionRecord> for VersionView {
    fn from(record: &VersionRecord) -> Self {
        VersionView {
            version: record.short().to_string(),
            sha256: record.version.clone(),
            action: record.action,
            source: record.source.clone(),
            host: record.host.clone(),
            deployed_at: rfc3339(record.deployed_at_ms),
        }
    }
}

/// What `PUT /components/NAME` or `POST /components/NAME/rollback` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReportView {
    pub component: String,
    /// False when that version was already running (nothing changed).
    pub changed: bool,
    /// The version now running.
    pub version: VersionView,
    /// The version that ran before.
    pub previous: VersionView,
    /// Compiling (or loading from the cache) and linking.
    pub compile_ms: u64,
    pub total_ms: u64,
}

pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One component in `GET /components`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub component: String,
    pub current: VersionView,
    /// Its HTTP routes, as the manifest writes them.
    pub routes: Vec<String>,
    /// The queues that trigger it.
    pub queues: Vec<String>,
    pub history: History,
}

/// A component's deployed versions, newest first, or why they could not be
/// read (the blob store did not answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum History {
    Versions(Vec<VersionView>),
    Unreadable(ErrorBody),
}

/// A dead letter as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub message_id: String,
    /// The delivery that failed last.
    pub attempt: u32,
    pub reason: String,
    /// When it was dead-lettered (Unix ms), where known.
    pub dead_at_ms: Option<u64>,
    /// The message, as text (lossy for binary bodies).
    pub body: String,
}

/// What `POST /queues/QUEUE/dead-letters/replay` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    pub queue: String,
    pub replayed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::DeployReport;
    use std::time::Duration;

    fn record(version: &str, action: Action, at: u64) -> VersionRecord {
        VersionRecord {
            component: "probe".into(),
            version: version.into(),
            action,
            source: "/x/probe.wasm".into(),
            host: "h@127.0.0.1:3000".into(),
            deployed_at_ms: at,
        }
    }

    // The wire format the CLI and the host tests read: names, order, values.
    #[test]
    fn a_deploy_report_keeps_its_wire_format() {
        let report = DeployReport {
            record: record(&"a".repeat(64), Action::Deploy, 1_709_210_096_789),
            previous: record(&"b".repeat(64), Action::Manifest, 0),
            changed: true,
            compile_time: Duration::from_millis(12),
            total_time: Duration::from_millis(34),
        };
        let text = serde_json::to_string(&DeployReportView::from(&report)).unwrap();
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        assert_eq!(
            text,
            format!(
                concat!(
                    r#"{{"component":"probe","changed":true,"#,
                    r#""version":{{"version":"aaaaaaaaaaaa","sha256":"{a}","action":"deploy","source":"/x/probe.wasm","host":"h@127.0.0.1:3000","deployed_at":"2024-02-29T12:34:56.789Z"}},"#,
                    r#""previous":{{"version":"bbbbbbbbbbbb","sha256":"{b}","action":"manifest","source":"/x/probe.wasm","host":"h@127.0.0.1:3000","deployed_at":"1970-01-01T00:00:00.000Z"}},"#,
                    r#""compile_ms":12,"total_ms":34}}"#
                ),
                a = a,
                b = b
            )
        );
        let back: DeployReportView = serde_json::from_str(&text).unwrap();
        assert_eq!(back, DeployReportView::from(&report));
    }

    #[test]
    fn history_is_a_list_or_an_error() {
        let versions = History::Versions(vec![(&record("c", Action::Rollback, 0)).into()]);
        let text = serde_json::to_string(&versions).unwrap();
        assert!(text.starts_with(r#"[{"version":"c","#), "{text}");
        assert_eq!(serde_json::from_str::<History>(&text).unwrap(), versions);
        let unreadable = History::Unreadable(ErrorBody {
            error: "down".into(),
        });
        let text = serde_json::to_string(&unreadable).unwrap();
        assert_eq!(text, r#"{"error":"down"}"#);
        assert_eq!(serde_json::from_str::<History>(&text).unwrap(), unreadable);
    }

    #[test]
    fn readiness_bodies_keep_their_wire_format() {
        let reasons = Reasons(vec![
            ("spindle:queue".into(), "q".into()),
            ("spin:mysql".into(), "m".into()),
        ]);
        let not_ready = NotReady {
            error: "not ready: m".into(),
            starting: None,
            down: Reasons(vec![("spin:mysql".into(), "m".into())]),
            degraded: Reasons::default(),
        };
        assert_eq!(
            serde_json::to_string(&not_ready).unwrap(),
            r#"{"error":"not ready: m","starting":null,"down":{"spin:mysql":"m"},"degraded":{}}"#
        );
        let ready = Ready {
            status: ReadyStatus::Degraded,
            degraded: reasons.clone(),
        };
        let text = serde_json::to_string(&ready).unwrap();
        assert_eq!(
            text,
            r#"{"status":"degraded","degraded":{"spindle:queue":"q","spin:mysql":"m"}}"#
        );
        assert_eq!(serde_json::from_str::<Ready>(&text).unwrap(), ready);
        assert_eq!(
            serde_json::to_string(&Health::ok()).unwrap(),
            r#"{"status":"ok"}"#
        );
    }
}

//! The runtime config (`--runtime-config-file`, TOML): per-invocation
//! limits, and a section per capability saying which backend serves it.
//!
//! Every section is optional. A missing backend section selects the embedded
//! default, so `spindle up` with no file needs no servers at all.
//!
//! String values may name environment variables as `${NAME}`, so one file
//! (e.g. a Kubernetes ConfigMap) can carry the layout while credentials come
//! from the environment (a Secret). An unset variable is an error.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub limits: Limits,
    /// Settings of the native convert worker, parsed by the worker itself
    /// (`functions/convert`).
    #[serde(default)]
    pub convert: Option<toml::Table>,
    /// Every other section belongs to a capability (`[mysql]`, `[gridfs]`,
    /// `[amqp]`, `[smtp]`, `[variables]`, ...), which parses its own when
    /// it builds its backend; no section selects the embedded default.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
    /// The folder of the file it was loaded from: relative paths in
    /// sections start there, as in Spin.
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

/// A backend section that is only a server's URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlConfig {
    pub url: String,
}

/// Per-invocation limits applied to every component instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time a request may take to produce its response.
    pub request_timeout_secs: f64,
    /// Wall-clock time a response body may keep streaming after that.
    pub body_timeout_secs: f64,
    /// Linear memory one instance may grow to, in MiB.
    pub memory_limit_mb: u64,
    /// Instances that may exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// Linear memory (and table) bytes of a freed instance slot that are
    /// reset in place and kept resident for the next instance, in KiB,
    /// instead of being handed back to the kernel: the next instance
    /// takes no page faults and the host no TLB shootdowns there.
    pub keep_resident_kb: u64,
    /// Freed slots kept warm (with what they keep resident) for the next
    /// instance of the same component; beyond them a freed slot is reused
    /// for any component. Bounds what idle slots keep resident to
    /// `max_warm_slots x keep_resident_kb`, outside `memory_budget_mb`.
    pub max_warm_slots: u32,
    /// Time a client has to send a request's complete header section,
    /// counted from the connection's opening or, on a kept-alive
    /// connection, from the next request's first byte (slowloris). The
    /// connection is closed after it.
    pub header_read_timeout_secs: f64,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout_secs: f64,
    /// Open connections per listener; the listener stops accepting at the
    /// cap. `0` (the default) sizes it for the machine: half the process's
    /// open-file limit, at most 16384.
    pub max_connections: u32,
    /// The slowest a request body may arrive, measured over each
    /// `body_rate_grace_secs` spent waiting for the client; slower gets 408
    /// and its instance is freed.
    pub min_body_rate_bytes_per_sec: u64,
    /// How long a request body may stay under `min_body_rate_bytes_per_sec`.
    pub body_rate_grace_secs: f64,
    /// Request body bytes read before the request takes a component slot
    /// or an instance (a whole login or signup), under the rate floor.
    pub read_ahead_bytes: usize,
    /// Requests that may read ahead at once; beyond it a request goes to
    /// its component unbuffered. Bounds read-ahead memory to
    /// `read_ahead_bytes x max_read_aheads`.
    pub max_read_aheads: u32,
    /// Concurrent invocations of one component, unless
    /// `[limits.components.NAME]` says otherwise.
    pub max_concurrency: u32,
    /// How long a request waits for a component below its cap (or for
    /// memory in the budget) before it gets 503 with `Retry-After`.
    pub queue_timeout_secs: f64,
    /// Linear memory of all instances together, in MiB. `0` (the default)
    /// sizes it for the machine: half of the memory available to the
    /// process (its cgroup limit, else physical memory), at most 768.
    pub memory_budget_mb: u64,
    /// Longest key a component may use in a key-value store, in bytes.
    pub key_value_max_key_bytes: usize,
    /// Largest value a component may store in a key-value store (Spin
    /// documents 1 MB).
    pub key_value_max_value_bytes: usize,
    /// Key-value stores one instance may hold open at once (Spin's table
    /// size); compare-and-swap handles are capped the same, separately.
    pub key_value_max_open_stores: u32,
    /// Most a key-value call may answer with: a value, a key list, a
    /// `get-many`.
    pub key_value_max_result_bytes: usize,
    /// Bytes of rows one `spin:sqlite` statement may return, in MiB (for
    /// a streamed result, one row); also the largest value it may make.
    pub sqlite_max_result_mb: u64,
    /// How long a `spin:sqlite` statement waits for another connection's
    /// lock before failing with "database is locked".
    pub sqlite_busy_timeout_secs: f64,
    /// `spin:sqlite` connections one instance may hold open at once.
    pub sqlite_connections_per_instance: u32,
    /// Per-component overrides: `[limits.components.auth] max_concurrency = 16`.
    pub components: BTreeMap<String, ComponentLimits>,
}

/// `[limits.components.NAME]`: limits that differ for one component.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentLimits {
    pub max_concurrency: Option<u32>,
    pub memory_limit_mb: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_secs: 30.0,
            body_timeout_secs: 3600.0,
            memory_limit_mb: 256,
            max_instances: 256,
            keep_resident_kb: 2048,
            max_warm_slots: 32,
            header_read_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            max_connections: 0,
            min_body_rate_bytes_per_sec: 1024,
            body_rate_grace_secs: 10.0,
            read_ahead_bytes: 64 * 1024,
            max_read_aheads: 1024,
            max_concurrency: 64,
            queue_timeout_secs: 5.0,
            memory_budget_mb: 0,
            key_value_max_key_bytes: 4096,
            key_value_max_value_bytes: 1 << 20,
            key_value_max_open_stores: 256,
            key_value_max_result_bytes: 16 << 20,
            sqlite_max_result_mb: 16,
            sqlite_busy_timeout_secs: 5.0,
            sqlite_connections_per_instance: 16,
            components: BTreeMap::new(),
        }
    }
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.body_timeout_secs)
    }

    /// Component `id`'s per-instance memory cap.
    pub fn memory_limit_bytes_of(&self, id: &str) -> usize {
        let mb = self.components.get(id).and_then(|c| c.memory_limit_mb);
        mib_to_bytes(mb.unwrap_or(self.memory_limit_mb))
    }

    /// The largest per-instance memory cap of any component (the pooling
    /// allocator's slot size).
    pub fn largest_memory_limit_bytes(&self) -> usize {
        let largest = self.components.values().filter_map(|c| c.memory_limit_mb);
        mib_to_bytes(largest.fold(self.memory_limit_mb, u64::max))
    }

    /// Component `id`'s concurrency cap.
    pub fn max_concurrency_of(&self, id: &str) -> u32 {
        self.components
            .get(id)
            .and_then(|c| c.max_concurrency)
            .unwrap_or(self.max_concurrency)
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.queue_timeout_secs)
    }

    pub fn sqlite_max_result_bytes(&self) -> usize {
        mib_to_bytes(self.sqlite_max_result_mb)
    }
}

fn mib_to_bytes(mb: u64) -> usize {
    usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeConfigError {
    #[error("cannot read runtime config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("runtime config {path}: {message}")]
    Parse { path: String, message: String },
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<Self, RuntimeConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let parse_err = |message: String| RuntimeConfigError::Parse {
            path: shown.clone(),
            message,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        for (key, value) in table.iter_mut() {
            expand_env(value, key, &|name| std::env::var(name).ok()).map_err(parse_err)?;
        }
        let mut config: RuntimeConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        config.dir = Some(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        );
        let limits = &config.limits;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let component_zero = limits
            .components
            .values()
            .any(|c| c.max_concurrency == Some(0) || c.memory_limit_mb == Some(0));
        if !positive(limits.request_timeout_secs)
            || !positive(limits.body_timeout_secs)
            || !positive(limits.header_read_timeout_secs)
            || !positive(limits.idle_timeout_secs)
            || !positive(limits.body_rate_grace_secs)
            || !positive(limits.queue_timeout_secs)
            || limits.memory_limit_mb == 0
            || limits.max_instances == 0
            || limits.max_concurrency == 0
            || limits.key_value_max_key_bytes == 0
            || limits.key_value_max_value_bytes == 0
            || limits.key_value_max_open_stores == 0
            || limits.key_value_max_result_bytes == 0
            || limits.sqlite_max_result_mb == 0
            || limits.sqlite_connections_per_instance == 0
            || component_zero
        {
            return Err(RuntimeConfigError::Parse {
                path: shown,
                message: "[limits] values must be greater than zero".into(),
            });
        }
        let busy = limits.sqlite_busy_timeout_secs;
        if !(busy.is_finite() && (0.0..=86_400.0).contains(&busy)) {
            return Err(RuntimeConfigError::Parse {
                path: shown,
                message: "[limits] sqlite_busy_timeout_secs must be between 0 and 86400".into(),
            });
        }
        Ok(config)
    }
}

/// Replaces `${NAME}` in every string under `value` (at `path`) with the
/// variable's value. Expansion happens after parsing, so a value containing
/// quotes or newlines cannot change the file's structure.
fn expand_env(
    value: &mut toml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("`{path}`: `${{` without a closing `}}`"))?;
                let name = &after[..end];
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "`{path}`: `${{{name}}}` is not an environment variable name"
                    ));
                }
                let found = lookup(name).ok_or_else(|| {
                    format!("`{path}` uses ${{{name}}}, which is not set; set the environment variable {name}")
                })?;
                out.push_str(&found);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_env(v, &format!("{path}.{k}"), lookup)?;
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                expand_env(v, &format!("{path}[{i}]"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_references_expand_inside_values_only() {
        let mut v: toml::Value = toml::from_str(
            "[mysql]\nurl = \"mysql://app:${DB_PASS}@db/auth\"\nlist = [\"${A}${A}\"]",
        )
        .unwrap();
        let lookup = |n: &str| match n {
            "DB_PASS" => Some("p\"w'd".to_string()),
            "A" => Some("x".to_string()),
            _ => None,
        };
        expand_env(&mut v, "", &lookup).unwrap();
        assert_eq!(
            v["mysql"]["url"].as_str(),
            Some("mysql://app:p\"w'd@db/auth")
        );
        assert_eq!(v["mysql"]["list"][0].as_str(), Some("xx"));

        let mut missing: toml::Value = toml::from_str("[smtp]\nurl = \"${NOPE}\"").unwrap();
        let e = expand_env(&mut missing, "", &lookup).unwrap_err();
        assert!(e.contains("NOPE") && e.contains("not set"), "{e}");
        let mut bad: toml::Value = toml::from_str("x = \"${a-b}\"").unwrap();
        assert!(expand_env(&mut bad, "", &lookup).is_err());
    }

    #[test]
    fn design_keys_parse() {
        let text = r#"
            [mysql]
            url = "mysql://user:password@127.0.0.1:3306/auth"
            [gridfs]
            url = "mongodb://127.0.0.1:27017"
            [amqp]
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"
            [smtp]
            url = "smtp://127.0.0.1:2525"
            from = "Spindle <noreply@spindle.local>"
        "#;
        let c: RuntimeConfig = toml::from_str(text).unwrap();
        let mysql: UrlConfig = c.sections["mysql"].clone().try_into().unwrap();
        assert_eq!(mysql.url, "mysql://user:password@127.0.0.1:3306/auth");
        assert!(c.sections.contains_key("smtp"));
        assert_eq!(c.limits.memory_limit_mb, 256);
    }
}

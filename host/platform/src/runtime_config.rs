//! The runtime config (`--runtime-config-file`, TOML): which backend serves
//! each capability, variable values, and per-invocation limits.
//!
//! Every section is optional. A missing backend section selects the embedded
//! default, so `spindle up` with no file needs no servers at all.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `spin:mysql` label `default`: a MySQL/MariaDB server instead of the
    /// embedded SQL engine.
    #[serde(default)]
    pub mysql: Option<UrlConfig>,
    /// `spindle:blobs`: MongoDB GridFS instead of files in the state directory.
    #[serde(default)]
    pub gridfs: Option<UrlConfig>,
    /// `spindle:queue` and `[[trigger.amqp]]`: RabbitMQ instead of the
    /// embedded queue.
    #[serde(default)]
    pub amqp: Option<UrlConfig>,
    /// `spindle:mail`: an SMTP server instead of the `.eml` outbox.
    #[serde(default)]
    pub smtp: Option<crate::capabilities::mail::SmtpSettings>,
    /// Values for application variables (lowest-precedence provider above
    /// manifest defaults).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
}

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_secs: 30.0,
            body_timeout_secs: 3600.0,
            memory_limit_mb: 256,
            max_instances: 256,
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

    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
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
        let config: RuntimeConfig =
            toml::from_str(&text).map_err(|e| RuntimeConfigError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        let limits = &config.limits;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(limits.request_timeout_secs)
            || !positive(limits.body_timeout_secs)
            || limits.memory_limit_mb == 0
            || limits.max_instances == 0
        {
            return Err(RuntimeConfigError::Parse {
                path: shown,
                message: "[limits] values must be greater than zero".into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            c.mysql.unwrap().url,
            "mysql://user:password@127.0.0.1:3306/auth"
        );
        assert!(c.smtp.is_some());
        assert_eq!(c.limits.memory_limit_mb, 256);
    }

    #[test]
    fn unknown_section_is_an_error() {
        assert!(toml::from_str::<RuntimeConfig>("[mysqll]\nurl = \"x\"").is_err());
    }
}

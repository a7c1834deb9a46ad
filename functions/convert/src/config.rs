//! The worker's settings: the `[convert]` section of the runtime config.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvertConfig {
    /// Whether `spindle up` converts in its own process. Set it to false where
    /// `spindle-convert` runs separately (Kubernetes).
    pub in_process: bool,
    /// The ffmpeg executable (a path, or a name looked up on `PATH`).
    pub ffmpeg: PathBuf,
    /// The ffprobe executable; by default the one beside `ffmpeg`.
    pub ffprobe: Option<PathBuf>,
    /// A conversion running longer than this is stopped and the job fails.
    pub time_limit_secs: u64,
    /// ffmpeg's address space (setrlimit), in MiB.
    pub memory_limit_mb: u64,
    /// Conversions at once; overrides the trigger's `concurrency`.
    pub concurrency: Option<u16>,
    /// Where videos are spooled for ffmpeg (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig {
            in_process: true,
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: None,
            time_limit_secs: 1800,
            memory_limit_mb: 2048,
            concurrency: None,
            work_dir: None,
        }
    }
}

impl ConvertConfig {
    /// Reads the runtime config's `[convert]` section (defaults when absent).
    pub fn from_section(section: Option<&toml::Table>) -> anyhow::Result<Self> {
        let config: ConvertConfig = match section {
            Some(table) => toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| anyhow::anyhow!("[convert]: {}", e.message()))?,
            None => ConvertConfig::default(),
        };
        anyhow::ensure!(
            config.time_limit_secs > 0
                && config.concurrency != Some(0)
                && config.memory_limit_mb > 0,
            "[convert]: time_limit_secs, memory_limit_mb and concurrency must be at least 1"
        );
        Ok(config)
    }

    pub fn time_limit(&self) -> Duration {
        Duration::from_secs(self.time_limit_secs)
    }

    /// `ffprobe`, or the ffprobe next to a `ffmpeg` given as a path.
    pub fn ffprobe(&self) -> PathBuf {
        if let Some(path) = &self.ffprobe {
            return path.clone();
        }
        match self.ffmpeg.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("ffprobe"),
            _ => PathBuf::from("ffprobe"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_overrides_defaults_and_rejects_unknown_keys() {
        let t: toml::Table =
            toml::from_str("in_process = false\ntime_limit_secs = 60\nconcurrency = 3").unwrap();
        let c = ConvertConfig::from_section(Some(&t)).unwrap();
        assert!(!c.in_process);
        assert_eq!(c.time_limit(), Duration::from_secs(60));
        assert_eq!(c.concurrency, Some(3));
        assert_eq!(c.ffmpeg, PathBuf::from("ffmpeg"));

        let bad: toml::Table = toml::from_str("timelimit = 3").unwrap();
        let e = ConvertConfig::from_section(Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timelimit"), "{e}");
        let zero: toml::Table = toml::from_str("time_limit_secs = 0").unwrap();
        assert!(ConvertConfig::from_section(Some(&zero)).is_err());
        assert!(ConvertConfig::from_section(None).unwrap().in_process);
    }
}

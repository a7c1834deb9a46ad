//! `[sqlite_database.LABEL]` sections of the runtime config, read as Spin
//! reads them, and the databases they make. `default` exists without one.

use super::database::{Database, Location, SqliteLimits, default_path};
use crate::manifest::Manifest;
use anyhow::bail;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One `[sqlite_database.LABEL]` section: its `type`, and the rest for
/// that type to read.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    rest: toml::Table,
}

/// `type = "spin"`: a local file, or memory when there is no `path`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpinEntry {
    path: Option<PathBuf>,
    /// Lets statements `ATTACH` other files (off by default, as in Spin).
    #[serde(default)]
    allow_attach_file: bool,
}

/// Every database of the application, by label.
pub struct Databases {
    by_label: BTreeMap<String, Arc<Database>>,
}

impl Databases {
    /// Builds the databases from the `[sqlite_database]` table (blocking:
    /// creates folders). As in Spin, a relative `path` is resolved from
    /// `base_dir` (`spindle up` passes its working directory) and `default`
    /// not configured is `<state_dir>/sqlite/default.db`.
    pub fn from_config(
        section: Option<&toml::Value>,
        state_dir: &Path,
        base_dir: &Path,
        limits: SqliteLimits,
    ) -> anyhow::Result<Self> {
        let limits = Arc::new(limits);
        let entries: BTreeMap<String, Entry> = match section {
            None => BTreeMap::new(),
            Some(value) => value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow::anyhow!("runtime config [sqlite_database]: {}", e.message())
                })?,
        };
        let mut by_label = BTreeMap::new();
        for (label, entry) in entries {
            let (location, allow_attach_file) = location(&label, entry, base_dir)?;
            let db = Database::create(&label, location, allow_attach_file, limits.clone())?;
            by_label.insert(label, Arc::new(db));
        }
        if !by_label.contains_key("default") {
            let location = Location::File(default_path(state_dir));
            let db = Database::create("default", location, false, limits)?;
            by_label.insert("default".into(), Arc::new(db));
        }
        Ok(Databases { by_label })
    }

    pub fn get(&self, label: &str) -> Option<&Arc<Database>> {
        self.by_label.get(label)
    }

    /// Stops start-up when a component is granted a label that names no
    /// database (Spin does the same), naming each and the fix.
    pub fn check_grants(&self, manifest: &Manifest) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        for (id, component) in &manifest.components {
            let Some(labels) = component.grants.get("sqlite_databases") else {
                continue;
            };
            // A malformed list is the grant's error to report.
            let labels: Vec<String> = labels.clone().try_into().unwrap_or_default();
            for label in labels {
                if !self.by_label.contains_key(&label) {
                    missing.push(format!(
                        "component `{id}` is granted SQLite database `{label}` (sqlite_databases in {}), which is neither `default` nor configured: add [sqlite_database.{label}] with type = \"spin\" (and a `path`) to the runtime config, or fix the label",
                        manifest.path.display()
                    ));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            bail!("{}", missing.join("\n"))
        }
    }

    /// One line for the start-up summary: each database and its file.
    pub fn describe(&self) -> String {
        self.by_label
            .values()
            .map(|db| match db.location() {
                Location::File(path) => format!("`{}` in {}", db.label(), path.display()),
                Location::Memory => format!("`{}` in memory", db.label()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn location(label: &str, entry: Entry, base_dir: &Path) -> anyhow::Result<(Location, bool)> {
    let section = format!("runtime config [sqlite_database.{label}]");
    match entry.kind.as_str() {
        "spin" => {
            let spin: SpinEntry = toml::Value::Table(entry.rest)
                .try_into()
                .map_err(|e: toml::de::Error| anyhow::anyhow!("{section}: {}", e.message()))?;
            let location = match spin.path {
                Some(path) if path.as_os_str().is_empty() => {
                    bail!("{section}: `path` is empty; name a file, or leave it out for a database in memory")
                }
                Some(path) if path.is_absolute() => Location::File(path),
                Some(path) => Location::File(base_dir.join(path)),
                None => Location::Memory,
            };
            Ok((location, spin.allow_attach_file))
        }
        "libsql" => bail!(
            "{section}: type \"libsql\" (a remote libSQL database) is not supported on this host; use type = \"spin\" with a `path`"
        ),
        other => bail!("{section}: unknown type \"{other}\"; use type = \"spin\""),
    }
}

//! Spin's `[key_value_store.LABEL]` runtime-config tables, and the stores
//! they make:
//!
//! ```toml
//! [key_value_store.default]   # replaces the built-in default
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//! [key_value_store.cache]
//! type = "spin"               # SQLite
//! path = "data/cache.db"      # optional; relative to the runtime config's folder
//! ```
//!
//! A `spin` store without a `path` lives in the state directory's file,
//! beside `default` (Spin keeps such a store in memory; here it lasts).

use super::embedded::EmbeddedDb;
use super::redis_store::RedisServer;
use super::{Backend, KvLimits, KvStores, Store};
use crate::urls::redact_url;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The label that exists without configuration.
pub const DEFAULT_LABEL: &str = "default";

/// The default store's file under the state directory (Spin's file name).
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("key-value").join("sqlite_key_value.db")
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// SQLite at this file.
    Spin { path: PathBuf },
    Redis { url: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpinTable {
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisTable {
    url: String,
}

/// Every store by label: the section's, and `default` unless it names one.
/// `base` is the folder relative `path`s start from.
pub fn parse(
    section: Option<&toml::Value>,
    base: &Path,
    state_dir: &Path,
) -> anyhow::Result<BTreeMap<String, StoreConfig>> {
    let mut stores = BTreeMap::new();
    let tables = match section {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => anyhow::bail!(
            "runtime config: [key_value_store] must hold tables, e.g. [key_value_store.default]"
        ),
    };
    for (label, value) in tables {
        let at = format!("runtime config [key_value_store.{label}]");
        let toml::Value::Table(mut table) = value else {
            anyhow::bail!("{at} must be a table with a `type`");
        };
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(_) => anyhow::bail!("{at}: `type` must be a string"),
            None => anyhow::bail!("{at} has no `type`; use type = \"spin\" or type = \"redis\""),
        };
        let field_error = |e: toml::de::Error| anyhow::anyhow!("{at}: {}", e.message());
        let config = match kind.as_str() {
            "spin" => {
                let t: SpinTable = toml::Value::Table(table).try_into().map_err(field_error)?;
                StoreConfig::Spin {
                    path: match t.path {
                        Some(path) => base.join(path),
                        None => default_path(state_dir),
                    },
                }
            }
            "redis" => {
                let t: RedisTable = toml::Value::Table(table).try_into().map_err(field_error)?;
                StoreConfig::Redis { url: t.url }
            }
            other => anyhow::bail!(
                "{at}: type \"{other}\" is not supported; Spindle's key-value stores are \"spin\" (an SQLite file) and \"redis\""
            ),
        };
        stores.insert(label, config);
    }
    stores
        .entry(DEFAULT_LABEL.to_string())
        .or_insert_with(|| StoreConfig::Spin {
            path: default_path(state_dir),
        });
    Ok(stores)
}

/// Makes the stores; stores on the same file or server share it.
pub fn build(
    configs: &BTreeMap<String, StoreConfig>,
    limits: KvLimits,
) -> anyhow::Result<KvStores> {
    let mut files: BTreeMap<PathBuf, Arc<EmbeddedDb>> = BTreeMap::new();
    let mut servers: BTreeMap<String, Arc<RedisServer>> = BTreeMap::new();
    let mut stores = BTreeMap::new();
    for (label, config) in configs {
        let backend = match config {
            StoreConfig::Spin { path } => Backend::Embedded(
                files
                    .entry(path.clone())
                    .or_insert_with(|| Arc::new(EmbeddedDb::new(path.clone())))
                    .clone(),
            ),
            StoreConfig::Redis { url } => {
                let server = match servers.get(url) {
                    Some(server) => server.clone(),
                    None => {
                        let server = Arc::new(RedisServer::new(url).map_err(|e| {
                            anyhow::anyhow!(
                                "runtime config [key_value_store.{label}] ({}): {e}",
                                redact_url(url)
                            )
                        })?);
                        servers.insert(url.clone(), server.clone());
                        server
                    }
                };
                Backend::Redis(server)
            }
        };
        let store = Store {
            label: label.as_str().into(),
            backend,
            limits,
        };
        stores.insert(label.clone(), store);
    }
    Ok(KvStores { stores, limits })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> anyhow::Result<BTreeMap<String, StoreConfig>> {
        let value: toml::Value = toml::from_str(text).unwrap();
        parse(
            value.get("key_value_store"),
            Path::new("/etc/app"),
            Path::new("/state"),
        )
    }

    #[test]
    fn spin_paths_are_relative_to_the_config_and_default_always_exists() {
        let stores = parse_str(
            "[key_value_store.a]\ntype = \"spin\"\npath = \"data/a.db\"\n[key_value_store.b]\ntype = \"spin\"\n",
        )
        .unwrap();
        assert_eq!(
            stores["a"],
            StoreConfig::Spin {
                path: "/etc/app/data/a.db".into()
            }
        );
        let in_state = StoreConfig::Spin {
            path: "/state/key-value/sqlite_key_value.db".into(),
        };
        assert_eq!(stores["b"], in_state);
        assert_eq!(stores["default"], in_state);
        assert_eq!(parse_str("").unwrap().len(), 1);
    }
}

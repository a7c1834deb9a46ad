//! `spin:sqlite` as a capability: `sqlite_databases` labels grant it,
//! `[sqlite_database.LABEL]` sections configure databases beside `default`,
//! `[limits]` bounds it and `--sqlite` seeds it at start-up.

use super::host::{Sqlite, SqliteView};
use super::{Databases, SqliteLimits, SqliteState, bindings, seed};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

impl Capability for Sqlite {
    const NAME: &'static str = "spin:sqlite";
    const GRANT_KEYS: &'static [&'static str] = &["sqlite_databases"];
    const CONFIG_SECTION: Option<&'static str> = Some("sqlite_database");
    const BACKEND_NAME: &'static str = "the SQLite databases";

    /// The granted labels.
    type Grant = Arc<[String]>;
    type Backend = Arc<Databases>;
    type State = SqliteState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        let labels: Vec<String> = entry.get("sqlite_databases")?;
        if let Some(i) = labels.iter().position(|l| l.is_empty()) {
            return Err(GrantError::new(
                format!("sqlite_databases[{i}]"),
                "the label is empty",
                "name a database, e.g. \"default\"",
            ));
        }
        Ok(labels.into())
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let limits = &env.runtime_config.limits;
        let busy_timeout = Duration::try_from_secs_f64(limits.sqlite_busy_timeout_secs)
            .context("[limits] sqlite_busy_timeout_secs")?;
        let limits = SqliteLimits {
            max_result_bytes: limits.sqlite_max_result_bytes(),
            busy_timeout,
            connections_per_instance: usize::try_from(limits.sqlite_connections_per_instance)
                .unwrap_or(usize::MAX),
        };
        let section = env.runtime_config.sections.get("sqlite_database").cloned();
        let state_dir = env.state_dir.to_path_buf();
        // As in Spin, relative paths are relative to the working directory
        // (left relative if it cannot be read: opening then says why).
        let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let databases = tokio::task::spawn_blocking(move || {
            Databases::from_config(section.as_ref(), &state_dir, &base_dir, limits)
        })
        .await??;
        databases.check_grants(env.manifest)?;
        seed::run(&databases, env.sqlite_flags).await?;
        Ok(Arc::new(databases))
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        Some(backend.describe())
    }

    async fn ready(_backend: &Self::Backend) -> anyhow::Result<()> {
        // Local files: nothing to wait for.
        Ok(())
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn view<T: HasState<Sqlite>>(t: &mut T) -> SqliteView<'_> {
            let view = t.view();
            SqliteView {
                table: view.table,
                state: view.state,
            }
        }
        bindings::spin::sqlite::sqlite::add_to_linker::<T, Sqlite>(linker, view::<T>)?;
        bindings::fermyon::spin::sqlite::add_to_linker::<T, Sqlite>(linker, view::<T>)
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        SqliteState::new(id, backend.clone(), grant)
    }

    fn is_granted(grant: &Self::Grant) -> bool {
        !grant.is_empty()
    }

    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str> {
        let name = import.split('@').next().unwrap_or(import);
        let sqlite = name.starts_with("spin:sqlite/") || name == "fermyon:spin/sqlite";
        (sqlite && !Self::is_granted(grant)).then_some("sqlite_databases = [\"default\"]")
    }
}

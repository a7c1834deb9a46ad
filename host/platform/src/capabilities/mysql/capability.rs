//! `spin:mysql` as a capability: `mysql_databases` labels and `mysql://`
//! entries of `allowed_outbound_hosts` grant it; `[mysql] url` picks the
//! server behind label `default`, the embedded engine otherwise.

use super::{Mysql, MysqlState, MysqlView, SqlBackends, wit};
use crate::capabilities::capability::{BackendEnv, Capability, GrantEntry, GrantError, HasState};
use crate::capabilities::outbound_http::AllowList;
use crate::runtime_config::UrlConfig;
use std::sync::Arc;
use wasmtime::component::Linker;

/// What a component may open.
#[derive(Clone)]
pub struct MysqlGrant {
    labels: Vec<String>,
    allowed: AllowList,
    /// Whether any allowed host is a `mysql://` one.
    servers: bool,
}

impl Capability for Mysql {
    const NAME: &'static str = "spin:mysql";
    const GRANT_KEYS: &'static [&'static str] = &["mysql_databases"];
    const CONFIG_SECTION: Option<&'static str> = Some("mysql");
    const BACKEND_NAME: &'static str = "the MySQL server";

    type Grant = MysqlGrant;
    type Backend = Arc<SqlBackends>;
    type State = MysqlState;

    fn grant(entry: &GrantEntry<'_>) -> Result<Self::Grant, GrantError> {
        // `allowed_outbound_hosts` belongs to outbound HTTP, which
        // validates it; here it only says which servers may be dialled.
        let hosts: Vec<String> = entry.get("allowed_outbound_hosts")?;
        Ok(MysqlGrant {
            labels: entry.get("mysql_databases")?,
            servers: hosts.iter().any(|h| h.starts_with("mysql://")),
            allowed: AllowList::new(&hosts),
        })
    }

    async fn backend(env: &BackendEnv<'_>) -> anyhow::Result<Self::Backend> {
        let server: Option<UrlConfig> = env.section::<Self, _>()?;
        Ok(Arc::new(SqlBackends::new(
            server.map(|s| s.url),
            env.state_dir.join("sql"),
        )))
    }

    fn describe(backend: &Self::Backend) -> Option<String> {
        Some(format!("`default` is {}", backend.describe()))
    }

    async fn ready(backend: &Self::Backend) -> anyhow::Result<()> {
        backend.ping().await
    }

    fn add_to_linker<T: HasState<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn view<T: HasState<Mysql>>(t: &mut T) -> MysqlView<'_> {
            let view = t.view();
            MysqlView::new(view.table, view.state)
        }
        wit::add_to_linker::<T, Mysql>(linker, view::<T>)?;
        super::v2::add_to_linker::<T>(linker, view::<T>)
    }

    fn prepare(backend: &Self::Backend, grant: &Self::Grant, id: &str) -> Self::State {
        MysqlState::new(id, backend.clone(), &grant.labels, grant.allowed.clone())
    }

    fn is_granted(grant: &Self::Grant) -> bool {
        !grant.labels.is_empty() || grant.servers
    }

    fn missing_grant(import: &str, grant: &Self::Grant) -> Option<&'static str> {
        let mysql = import.starts_with("spin:mysql/") || import.starts_with("fermyon:spin/mysql@");
        (mysql && !Self::is_granted(grant)).then_some("mysql_databases = [\"default\"]")
    }
}

//! The key-value backends behind one face: stores built the way `spindle
//! up` builds them (a manifest, a runtime config, a state directory), and
//! a key prefix per test so runs sharing a Redis server stay apart.

use std::path::Path;
use std::sync::Arc;

use spindle_platform::capabilities::Capability;
use spindle_platform::capabilities::capability::BackendEnv;
use spindle_platform::capabilities::key_value::{KeyValue, KvStores, Store};
use spindle_platform::manifest::Manifest;
use spindle_platform::runtime_config::RuntimeConfig;

pub(crate) const REDIS_VAR: &str = "SPINDLE_TEST_REDIS_URL";

pub(crate) struct Backend {
    pub(crate) stores: Arc<KvStores>,
    /// Every key a test uses starts with it.
    pub(crate) prefix: String,
    /// The state directory (and, on Redis, nothing in it).
    pub(crate) dir: tempfile::TempDir,
    pub(crate) redis: Option<String>,
}

impl Backend {
    /// The embedded store in a state directory of its own.
    pub(crate) async fn embedded(test: &str) -> Option<Backend> {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let stores = build_on(dir.path(), None, "", &[])
            .await
            .expect("build the embedded store");
        Some(Backend {
            stores,
            prefix: unique_prefix(test),
            dir,
            redis: None,
        })
    }

    /// `default` on the Redis server at `SPINDLE_TEST_REDIS_URL`; `None`
    /// (after saying so) when it is not set.
    pub(crate) async fn redis(test: &str) -> Option<Backend> {
        init_tracing();
        let Some(url) = redis_url() else {
            eprintln!("{REDIS_VAR} is not set: the Redis variant of `{test}` did not run");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let stores = build_on(dir.path(), Some(&url), "", &[])
            .await
            .expect("build the Redis store");
        Some(Backend {
            stores,
            prefix: unique_prefix(test),
            dir,
            redis: Some(url),
        })
    }

    /// Stores on the same backend (state directory or server) made anew,
    /// with `limits` as the body of `[limits]` and `flags` as `--key-value`.
    pub(crate) async fn rebuild(
        &self,
        limits: &str,
        flags: &[String],
    ) -> anyhow::Result<Arc<KvStores>> {
        build_on(self.dir.path(), self.redis.as_deref(), limits, flags).await
    }

    pub(crate) fn default_store(&self) -> Store {
        self.stores.store("default").expect("default store")
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// This test's keys, sorted, without the prefix.
    pub(crate) fn mine(&self, keys: Vec<String>) -> Vec<String> {
        let mut mine: Vec<String> = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(String::from))
            .collect();
        mine.sort();
        mine
    }

    /// Deletes this test's keys (on Redis, the database outlives the
    /// test); streamed, as a listing of a shared server may be long.
    pub(crate) async fn clean_up(&self) {
        let store = self.default_store();
        let (mut pages, done) = store.key_pages();
        let mut mine = Vec::new();
        while let Some(page) = pages.recv().await {
            mine.extend(page.into_iter().filter(|k| k.starts_with(&self.prefix)));
        }
        done.await.unwrap().expect("list keys to clean up");
        store.delete_many(mine).await.expect("clean up");
    }
}

/// Stores whose `default` is the embedded file in `dir`, or Redis at `redis`.
async fn build_on(
    dir: &Path,
    redis: Option<&str>,
    limits: &str,
    flags: &[String],
) -> anyhow::Result<Arc<KvStores>> {
    let mut config = format!("[limits]\n{limits}\n");
    if let Some(url) = redis {
        config += &format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n");
    }
    build(dir, &config, flags).await
}

pub(crate) fn redis_url() -> Option<String> {
    std::env::var(REDIS_VAR).ok().filter(|u| !u.is_empty())
}

/// A manifest with one component granted `default`.
pub(crate) fn manifest(dir: &Path, grants: &str) -> Manifest {
    std::fs::write(dir.join("a.wasm"), b"\0asm").unwrap();
    let path = dir.join("spin.toml");
    std::fs::write(
        &path,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.web]\nsource = \"a.wasm\"\n{grants}\n"
        ),
    )
    .unwrap();
    Manifest::load(&path).unwrap()
}

/// Builds the stores as `spindle up` would: the runtime config is written
/// to `state_dir/runtime.toml` and loaded from there.
pub(crate) async fn build(
    state_dir: &Path,
    runtime_config: &str,
    key_value_flags: &[String],
) -> anyhow::Result<Arc<KvStores>> {
    let manifest = manifest(state_dir, "key_value_stores = [\"default\"]");
    build_for(&manifest, state_dir, runtime_config, key_value_flags).await
}

pub(crate) async fn build_for(
    manifest: &Manifest,
    state_dir: &Path,
    runtime_config: &str,
    key_value_flags: &[String],
) -> anyhow::Result<Arc<KvStores>> {
    let path = state_dir.join("runtime.toml");
    std::fs::write(&path, runtime_config).unwrap();
    let runtime_config = RuntimeConfig::load(&path)?;
    let env = BackendEnv {
        manifest,
        runtime_config: &runtime_config,
        state_dir,
        variable_flags: &[],
        extra_queues: &[],
        key_value_flags,
        sqlite_flags: &[],
    };
    KeyValue::backend(&env).await
}

fn unique_prefix(test: &str) -> String {
    format!(
        "spindle-test-{test}-{}:",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("spindle_platform=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

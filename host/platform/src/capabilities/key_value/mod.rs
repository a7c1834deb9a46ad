//! Key-value storage for components, as Spin offers it: one backend
//! abstraction ([`Store`]) served through three interfaces, so a value
//! written through one is read through the others:
//!
//! - `spin:key-value/key-value@3.0.0` (spin-sdk 7, async; `spin_v3.rs`),
//! - `fermyon:spin/key-value@2.0.0` (spin-sdk 3 and 5; `spin_v2.rs`),
//! - `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2` (`wasi.rs`).
//!
//! A component opens a store by label, granted by `key_value_stores` in
//! `spin.toml`. `default` always exists (an SQLite file in the state
//! directory unless the runtime config says otherwise); any other label is
//! a `[key_value_store.LABEL]` of type `spin` (SQLite, Spin's table layout)
//! or `redis` (keys unprefixed, as Spin stores them). Limits on key and
//! value size, result size and open stores come from `[limits]`.

mod capability;
mod config;
mod embedded;
mod redis_store;
mod spin_v2;
mod spin_v3;
mod wasi;

use crate::runtime_config::Limits;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

mod bindings {
    wasmtime::component::bindgen!({
        path: [
            "src/capabilities/key_value/wit/spin-key-value@3.0.0.wit",
            "src/capabilities/key_value/wit/fermyon-spin-key-value@2.0.0.wit",
            "src/capabilities/key_value/wit/wasi-keyvalue@0.2.0-draft2.wit",
        ],
        inline: "package spindle:key-value-host;
            world host {
                import spin:key-value/key-value@3.0.0;
                import fermyon:spin/key-value@2.0.0;
                import wasi:keyvalue/store@0.2.0-draft2;
                import wasi:keyvalue/atomics@0.2.0-draft2;
                import wasi:keyvalue/batch@0.2.0-draft2;
            }",
        world: "spindle:key-value-host/host",
        imports: { default: async | trappable },
        with: {
            "spin:key-value/key-value.store": super::spin_v3::V3Store,
            "fermyon:spin/key-value.store": super::spin_v2::V2Store,
            "wasi:keyvalue/store.bucket": super::wasi::Bucket,
            "wasi:keyvalue/atomics.cas": super::wasi::Cas,
        },
    });
}

/// The capability and the `HasData` marker of its interfaces.
pub struct KeyValue;

/// What can go wrong opening or using a store.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(
        "component `{component}` may not open key-value store `{label}`; add \"{label}\" to its key_value_stores in spin.toml"
    )]
    AccessDenied { component: String, label: String },
    #[error(
        "no key-value store is labelled `{0}`; add [key_value_store.{0}] to the runtime config"
    )]
    NoSuchStore(String),
    #[error(
        "this instance has {0} key-value handles open, the most it may (key_value_max_open_stores in [limits]); drop one first"
    )]
    TableFull(u32),
    #[error("{what} of {size} bytes is over the limit of {limit} bytes ({knob} in [limits])")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
        knob: &'static str,
    },
    /// Worded as Spin's, which applications may match on.
    #[error(
        "query result exceeds limit of {0} bytes (key_value_max_result_bytes in [limits])"
    )]
    ResultTooLarge(usize),
    #[error("key-value store `{label}`: {message}")]
    Backend { label: String, message: String },
}

/// The `[limits]` that bound what one component may do with a store.
#[derive(Debug, Clone, Copy)]
pub struct KvLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Open store and compare-and-swap handles per instance, each.
    pub max_open_stores: u32,
    /// The most a call may buffer for its answer (values, key lists).
    pub max_result_bytes: usize,
}

impl KvLimits {
    pub fn from_limits(limits: &Limits) -> Self {
        KvLimits {
            max_key_bytes: limits.key_value_max_key_bytes,
            max_value_bytes: limits.key_value_max_value_bytes,
            max_open_stores: limits.key_value_max_open_stores,
            max_result_bytes: limits.key_value_max_result_bytes,
        }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.len() > self.max_key_bytes {
            return Err(KvError::TooLarge {
                what: "a key",
                size: key.len(),
                limit: self.max_key_bytes,
                knob: "key_value_max_key_bytes",
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.max_value_bytes {
            return Err(KvError::TooLarge {
                what: "a value",
                size: value.len(),
                limit: self.max_value_bytes,
                knob: "key_value_max_value_bytes",
            });
        }
        Ok(())
    }
}

/// What one key and its value count toward `max_result_bytes` (Spin's
/// measure: the data plus the size of the pair holding it).
fn entry_bytes(key: &str, value: Option<&[u8]>) -> usize {
    std::mem::size_of::<(String, Option<Vec<u8>>)>() + key.len() + value.map_or(0, <[u8]>::len)
}

/// What a backend keeps to compare a key's value against later: a digest
/// of the value read, `None` when the key was not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Option<Vec<u8>>);

/// Where a listing of keys goes on from.
enum KeyCursor {
    Start,
    /// Embedded: after this key (keys come in order).
    After(String),
    /// Redis: a `SCAN` cursor.
    Scan(u64),
    Done,
}

/// A backend that holds stores.
#[derive(Clone)]
enum Backend {
    Embedded(Arc<embedded::EmbeddedDb>),
    Redis(Arc<redis_store::RedisServer>),
}

/// One open store: a label on a backend, under the application's limits.
#[derive(Clone)]
pub struct Store {
    label: Arc<str>,
    backend: Backend,
    limits: KvLimits,
}

impl Store {
    pub fn label(&self) -> &str {
        &self.label
    }

    fn backend_error(&self, message: impl std::fmt::Display) -> KvError {
        let e = KvError::Backend {
            label: self.label.to_string(),
            message: message.to_string(),
        };
        tracing::warn!("{e}");
        e
    }

    /// The value of `key`, `None` when it is not set.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.limits.check_key(key)?;
        let value = match &self.backend {
            Backend::Embedded(db) => db.get(&self.label, key).await,
            Backend::Redis(r) => r.get(key).await,
        }
        .map_err(|e| self.backend_error(e))?;
        if value.as_ref().is_some_and(|v| v.len() > self.limits.max_result_bytes) {
            return Err(KvError::ResultTooLarge(self.limits.max_result_bytes));
        }
        Ok(value)
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        self.limits.check_key(key)?;
        self.limits.check_value(&value)?;
        self.set_many(vec![(key.to_string(), value)]).await
    }

    /// Removing a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.delete_many(vec![key.to_string()]).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.limits.check_key(key)?;
        match &self.backend {
            Backend::Embedded(db) => db.exists(&self.label, key).await,
            Backend::Redis(r) => r.exists(key).await,
        }
        .map_err(|e| self.backend_error(e))
    }

    /// Every key, in one list no bigger than `max_result_bytes` (counted
    /// as Spin counts it: each key's length plus a `String`'s size).
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = std::mem::size_of::<Vec<String>>();
        let mut cursor = KeyCursor::Start;
        while !matches!(cursor, KeyCursor::Done) {
            let (page, next) = self.key_page(cursor).await?;
            cursor = next;
            for key in page {
                // SCAN may return a key twice; a list holds it once.
                if matches!(self.backend, Backend::Redis(_)) && !seen.insert(key.clone()) {
                    continue;
                }
                bytes += std::mem::size_of::<String>() + key.len();
                if bytes > self.limits.max_result_bytes {
                    return Err(KvError::ResultTooLarge(self.limits.max_result_bytes));
                }
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Every key, a page at a time: the pages arrive on the receiver (one
    /// is produced ahead of the reader), and the outcome on the oneshot
    /// once the listing ends. Dropping the receiver stops the listing.
    pub fn key_pages(
        &self,
    ) -> (
        mpsc::Receiver<Vec<String>>,
        oneshot::Receiver<Result<(), KvError>>,
    ) {
        let (pages_tx, pages_rx) = mpsc::channel(1);
        let (done_tx, done_rx) = oneshot::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let mut cursor = KeyCursor::Start;
            let outcome = loop {
                if matches!(cursor, KeyCursor::Done) {
                    break Ok(());
                }
                let (page, next) = match store.key_page(cursor).await {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                cursor = next;
                if !page.is_empty() && pages_tx.send(page).await.is_err() {
                    // The reader is gone; nobody waits for the outcome.
                    return;
                }
            };
            drop(pages_tx);
            let _ = done_tx.send(outcome);
        });
        (pages_rx, done_rx)
    }

    async fn key_page(&self, cursor: KeyCursor) -> Result<(Vec<String>, KeyCursor), KvError> {
        match &self.backend {
            Backend::Embedded(db) => db.key_page(&self.label, cursor).await,
            Backend::Redis(r) => r.key_page(cursor).await,
        }
        .map_err(|e| self.backend_error(e))
    }

    /// Each key with its value (`None` when not set), in the order asked.
    pub async fn get_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        for key in &keys {
            self.limits.check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.limits.max_result_bytes;
        let values = match &self.backend {
            Backend::Embedded(db) => db.get_many(&self.label, keys.clone(), limit).await,
            Backend::Redis(r) => r.get_many(&keys).await,
        }
        .map_err(|e| self.backend_error(e))?;
        let bytes: usize = keys
            .iter()
            .zip(&values)
            .map(|(key, value)| entry_bytes(key, value.as_deref()))
            .sum();
        // A backend may stop reading at the value that went over the limit.
        if bytes > limit || values.len() != keys.len() {
            return Err(KvError::ResultTooLarge(limit));
        }
        Ok(keys.into_iter().zip(values).collect())
    }

    /// Sets every key; not atomic across keys.
    pub async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        for (key, value) in &pairs {
            self.limits.check_key(key)?;
            self.limits.check_value(value)?;
        }
        if pairs.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Embedded(db) => db.set_many(&self.label, pairs).await,
            Backend::Redis(r) => r.set_many(pairs).await,
        }
        .map_err(|e| self.backend_error(e))
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        for key in &keys {
            self.limits.check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Embedded(db) => db.delete_many(&self.label, keys).await,
            Backend::Redis(r) => r.delete_many(keys).await,
        }
        .map_err(|e| self.backend_error(e))
    }

    /// Adds `delta` to the decimal integer at `key` (a missing key counts
    /// as 0, as in Spin) and returns the sum, atomically.
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.limits.check_key(key)?;
        match &self.backend {
            Backend::Embedded(db) => db.increment(&self.label, key, delta).await,
            Backend::Redis(r) => r.increment(key, delta).await,
        }
        .map_err(|e| self.backend_error(e))
    }

    /// What a compare-and-swap on `key` compares against.
    pub async fn snapshot(&self, key: &str) -> Result<Snapshot, KvError> {
        Ok(self.current(key).await?.1)
    }

    /// The value of `key` and its snapshot.
    pub async fn current(&self, key: &str) -> Result<(Option<Vec<u8>>, Snapshot), KvError> {
        self.limits.check_key(key)?;
        let (value, snapshot) = match &self.backend {
            Backend::Embedded(db) => db.current(&self.label, key).await,
            Backend::Redis(r) => r.current(key).await,
        }
        .map_err(|e| self.backend_error(e))?;
        if value.as_ref().is_some_and(|v| v.len() > self.limits.max_result_bytes) {
            return Err(KvError::ResultTooLarge(self.limits.max_result_bytes));
        }
        Ok((value, snapshot))
    }

    /// Sets `key` to `value` if its value still matches `seen` (a key that
    /// was not set must still not be); `false` when it changed.
    pub async fn swap(&self, key: &str, seen: &Snapshot, value: Vec<u8>) -> Result<bool, KvError> {
        self.limits.check_key(key)?;
        self.limits.check_value(&value)?;
        match &self.backend {
            Backend::Embedded(db) => db.swap(&self.label, key, seen, value).await,
            Backend::Redis(r) => r.swap(key, seen, value).await,
        }
        .map_err(|e| self.backend_error(e))
    }
}

/// Every store of the application, by label (the capability's backend).
pub struct KvStores {
    stores: BTreeMap<String, Store>,
    limits: KvLimits,
}

impl KvStores {
    /// The store labelled `label`, if there is one (grants aside).
    pub fn store(&self, label: &str) -> Option<Store> {
        self.stores.get(label).cloned()
    }

    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// Each store and what serves it, for the start-up summary.
    pub fn describe(&self) -> String {
        self.stores
            .iter()
            .map(|(label, store)| {
                let what = match &store.backend {
                    Backend::Embedded(db) => db.describe(),
                    Backend::Redis(r) => r.describe(),
                };
                format!("`{label}` is {what}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Checks that every Redis server answers (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        for store in self.stores.values() {
            if let Backend::Redis(r) = &store.backend {
                r.ping()
                    .await
                    .map_err(|e| anyhow::anyhow!("{} ({})", e, r.describe()))?;
            }
        }
        Ok(())
    }
}

/// What one instance may open, and the handles it holds.
#[derive(Clone)]
pub struct KvState {
    component: Arc<str>,
    stores: Arc<KvStores>,
    granted: Arc<[String]>,
    /// Open store handles (every interface's) and compare-and-swap handles.
    open_stores: u32,
    open_cas: u32,
}

impl KvState {
    pub fn new(component: &str, stores: Arc<KvStores>, granted: &[String]) -> Self {
        KvState {
            component: component.into(),
            stores,
            granted: granted.into(),
            open_stores: 0,
            open_cas: 0,
        }
    }

    /// The store `label`, if the component is granted it (Spin's order:
    /// a label that is not granted is `access-denied` whether or not it
    /// exists).
    pub fn open(&self, label: &str) -> Result<Store, KvError> {
        let refused = if !self.granted.iter().any(|g| g == label) {
            KvError::AccessDenied {
                component: self.component.to_string(),
                label: label.to_string(),
            }
        } else {
            match self.stores.store(label) {
                Some(store) => return Ok(store),
                None => KvError::NoSuchStore(label.to_string()),
            }
        };
        tracing::warn!(component = %self.component, "key-value open refused: {refused}");
        Err(refused)
    }

    /// Counts a store handle about to be handed out, refusing past the cap.
    fn take_store_slot(&mut self) -> Result<(), KvError> {
        take_slot(&mut self.open_stores, self.stores.limits.max_open_stores)
    }

    fn release_store_slot(&mut self) {
        self.open_stores = self.open_stores.saturating_sub(1);
    }

    fn take_cas_slot(&mut self) -> Result<(), KvError> {
        take_slot(&mut self.open_cas, self.stores.limits.max_open_stores)
    }

    fn release_cas_slot(&mut self) {
        self.open_cas = self.open_cas.saturating_sub(1);
    }
}

fn take_slot(count: &mut u32, max: u32) -> Result<(), KvError> {
    if *count >= max {
        return Err(KvError::TableFull(max));
    }
    *count += 1;
    Ok(())
}

/// What the host functions see of one instance.
pub struct KvView<'a> {
    table: &'a mut wasmtime::component::ResourceTable,
    state: &'a mut KvState,
}

impl wasmtime::component::HasData for KeyValue {
    type Data<'a> = KvView<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_capped_per_instance() {
        let stores = Arc::new(KvStores {
            stores: BTreeMap::new(),
            limits: KvLimits {
                max_key_bytes: 8,
                max_value_bytes: 8,
                max_open_stores: 2,
                max_result_bytes: 64,
            },
        });
        // Each instance clones the prepared state: counts are its own.
        let prepared = KvState::new("c", stores, &[]);
        let mut state = prepared.clone();
        state.take_store_slot().unwrap();
        state.take_store_slot().unwrap();
        assert!(matches!(state.take_store_slot(), Err(KvError::TableFull(2))));
        // Compare-and-swap handles count separately.
        state.take_cas_slot().unwrap();
        state.release_store_slot();
        state.take_store_slot().unwrap();
        let other = prepared.clone();
        assert_eq!((other.open_stores, other.open_cas), (0, 0));
    }
}

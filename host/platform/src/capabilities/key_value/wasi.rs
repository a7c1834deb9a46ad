//! `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2` with Spin's
//! semantics: a bucket is the store of that label (an empty identifier is
//! a label like any other, so ungranted: `access-denied`); `list-keys`
//! answers every key at once and refuses a cursor; `increment` counts a
//! missing key as 0; a compare-and-swap that loses hands back a new handle
//! holding the current value.

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::{KvError, KvView, Snapshot, Store};
use wasmtime::component::Resource;

/// The `bucket` resource.
pub struct Bucket(Store);

/// The `cas` resource: a key and what its value was when last read.
pub struct Cas {
    store: Store,
    key: String,
    seen: Snapshot,
}

fn to_wasi(e: KvError) -> store::Error {
    match e {
        KvError::AccessDenied { .. } => store::Error::AccessDenied,
        KvError::NoSuchStore(_) => store::Error::NoSuchStore,
        other => store::Error::Other(other.to_string()),
    }
}

impl KvView<'_> {
    fn bucket(&self, this: &Resource<Bucket>) -> wasmtime::Result<Store> {
        Ok(self.table.get(this)?.0.clone())
    }

    /// A new handle on `key` holding its current value's snapshot.
    async fn new_cas(
        &mut self,
        store: Store,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let seen = match store.snapshot(&key).await {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(to_wasi(e))),
        };
        if let Err(e) = self.state.take_cas_slot() {
            return Ok(Err(to_wasi(e)));
        }
        Ok(Ok(self.table.push(Cas { store, key, seen })?))
    }
}

impl store::Host for KvView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        let opened = self
            .state
            .open(&identifier)
            .and_then(|store| self.state.take_store_slot().map(|()| store));
        match opened {
            Ok(store) => Ok(Ok(self.table.push(Bucket(store))?)),
            Err(e) => Ok(Err(to_wasi(e))),
        }
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        this: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let store = self.bucket(&this)?;
        Ok(store.get(&key).await.map_err(to_wasi))
    }

    async fn set(
        &mut self,
        this: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let store = self.bucket(&this)?;
        Ok(store.set(&key, value).await.map_err(to_wasi))
    }

    async fn delete(
        &mut self,
        this: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let store = self.bucket(&this)?;
        Ok(store.delete(&key).await.map_err(to_wasi))
    }

    async fn exists(
        &mut self,
        this: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let store = self.bucket(&this)?;
        Ok(store.exists(&key).await.map_err(to_wasi))
    }

    async fn list_keys(
        &mut self,
        this: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        if cursor.is_some() {
            return Ok(Err(store::Error::Other(
                "list-keys: cursor not supported; a call without one answers every key".into(),
            )));
        }
        let store = self.bucket(&this)?;
        Ok(store
            .keys()
            .await
            .map(|keys| store::KeyResponse { keys, cursor: None })
            .map_err(to_wasi))
    }

    async fn drop(&mut self, rep: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.state.release_store_slot();
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(store.increment(&key, delta).await.map_err(to_wasi))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let Cas { store, key, seen } = self.table.delete(cas)?;
        self.state.release_cas_slot();
        match store.swap(&key, &seen, value).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => Ok(Err(match self.new_cas(store, key).await? {
                Ok(fresh) => atomics::CasError::CasFailed(fresh),
                Err(e) => atomics::CasError::StoreError(e),
            })),
            Err(e) => Ok(Err(atomics::CasError::StoreError(to_wasi(e)))),
        }
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let store = self.bucket(&bucket)?;
        self.new_cas(store, key).await
    }

    async fn current(
        &mut self,
        this: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let (store, key) = {
            let cas = self.table.get(&this)?;
            (cas.store.clone(), cas.key.clone())
        };
        let (value, seen) = match store.current(&key).await {
            Ok(read) => read,
            Err(e) => return Ok(Err(to_wasi(e))),
        };
        // `swap` now compares against what the guest just saw.
        self.table.get_mut(&this)?.seen = seen;
        Ok(Ok(value))
    }

    async fn drop(&mut self, rep: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.state.release_cas_slot();
        Ok(())
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(store.get_many(keys).await.map_err(to_wasi))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(store.set_many(key_values).await.map_err(to_wasi))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let store = self.bucket(&bucket)?;
        Ok(store.delete_many(keys).await.map_err(to_wasi))
    }
}

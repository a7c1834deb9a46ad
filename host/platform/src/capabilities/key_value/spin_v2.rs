//! `fermyon:spin/key-value@2.0.0` (spin-sdk 3 and 5): blocking calls to
//! the guest, async on the host.

use super::bindings::fermyon::spin::key_value as v2;
use super::{KvError, KvView, Store};
use wasmtime::component::Resource;

/// The `store` resource.
pub struct V2Store(Store);

fn to_v2(e: KvError) -> v2::Error {
    match e {
        KvError::AccessDenied { .. } => v2::Error::AccessDenied,
        KvError::NoSuchStore(_) => v2::Error::NoSuchStore,
        KvError::TableFull(_) => v2::Error::StoreTableFull,
        other => v2::Error::Other(other.to_string()),
    }
}

impl KvView<'_> {
    fn v2_store(&self, this: &Resource<V2Store>) -> wasmtime::Result<Store> {
        Ok(self.table.get(this)?.0.clone())
    }
}

impl v2::Host for KvView<'_> {}

impl v2::HostStore for KvView<'_> {
    async fn open(&mut self, label: String) -> wasmtime::Result<Result<Resource<V2Store>, v2::Error>> {
        let opened = self
            .state
            .open(&label)
            .and_then(|store| self.state.take_store_slot().map(|()| store));
        match opened {
            Ok(store) => Ok(Ok(self.table.push(V2Store(store))?)),
            Err(e) => Ok(Err(to_v2(e))),
        }
    }

    async fn get(
        &mut self,
        this: Resource<V2Store>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v2::Error>> {
        let store = self.v2_store(&this)?;
        Ok(store.get(&key).await.map_err(to_v2))
    }

    async fn set(
        &mut self,
        this: Resource<V2Store>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        let store = self.v2_store(&this)?;
        Ok(store.set(&key, value).await.map_err(to_v2))
    }

    async fn delete(
        &mut self,
        this: Resource<V2Store>,
        key: String,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        let store = self.v2_store(&this)?;
        Ok(store.delete(&key).await.map_err(to_v2))
    }

    async fn exists(
        &mut self,
        this: Resource<V2Store>,
        key: String,
    ) -> wasmtime::Result<Result<bool, v2::Error>> {
        let store = self.v2_store(&this)?;
        Ok(store.exists(&key).await.map_err(to_v2))
    }

    async fn get_keys(
        &mut self,
        this: Resource<V2Store>,
    ) -> wasmtime::Result<Result<Vec<String>, v2::Error>> {
        let store = self.v2_store(&this)?;
        Ok(store.keys().await.map_err(to_v2))
    }

    async fn drop(&mut self, rep: Resource<V2Store>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.state.release_store_slot();
        Ok(())
    }
}

//! `spin:key-value/key-value@3.0.0` (spin-sdk 7): every call is async, so
//! the host functions use wasmtime's concurrent `Accessor` API; the store
//! handle is looked up, then the backend call runs without the store.

use super::bindings::spin::key_value::key_value as v3;
use super::{KeyValue, KvError, KvView, Store};
use crate::capabilities::streams::ItemProducer;
use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

/// The `store` resource.
pub struct V3Store(Store);

fn to_v3(e: KvError) -> v3::Error {
    match e {
        KvError::AccessDenied { .. } => v3::Error::AccessDenied,
        KvError::NoSuchStore(_) => v3::Error::NoSuchStore,
        KvError::TableFull(_) => v3::Error::StoreTableFull,
        other => v3::Error::Other(other.to_string()),
    }
}

fn store_of<T>(
    accessor: &Accessor<T, KeyValue>,
    this: &Resource<V3Store>,
) -> wasmtime::Result<Store> {
    accessor.with(|mut access| Ok(access.get().table.get(this)?.0.clone()))
}

impl v3::Host for KvView<'_> {}

impl v3::HostStore for KvView<'_> {
    async fn drop(&mut self, rep: Resource<V3Store>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.state.release_store_slot();
        Ok(())
    }
}

impl<T> v3::HostStoreWithStore<T> for KeyValue {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<V3Store>, v3::Error>> {
        accessor.with(|mut access| {
            let view = access.get();
            let opened = view
                .state
                .open(&label)
                .and_then(|store| view.state.take_store_slot().map(|()| store));
            match opened {
                Ok(store) => Ok(Ok(view.table.push(V3Store(store))?)),
                Err(e) => Ok(Err(to_v3(e))),
            }
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        this: Resource<V3Store>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v3::Error>> {
        let store = store_of(accessor, &this)?;
        Ok(store.get(&key).await.map_err(to_v3))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        this: Resource<V3Store>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        let store = store_of(accessor, &this)?;
        Ok(store.set(&key, value).await.map_err(to_v3))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        this: Resource<V3Store>,
        key: String,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        let store = store_of(accessor, &this)?;
        Ok(store.delete(&key).await.map_err(to_v3))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        this: Resource<V3Store>,
        key: String,
    ) -> wasmtime::Result<Result<bool, v3::Error>> {
        let store = store_of(accessor, &this)?;
        Ok(store.exists(&key).await.map_err(to_v3))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        this: Resource<V3Store>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), v3::Error>>)> {
        let store = store_of(accessor, &this)?;
        let (pages, done) = store.key_pages();
        accessor.with(|mut access| {
            let keys = StreamReader::new(&mut access, ItemProducer::new(pages))?;
            let outcome = FutureReader::new(&mut access, async move {
                Ok::<_, wasmtime::Error>(match done.await {
                    Ok(outcome) => outcome.map_err(to_v3),
                    // The stream was dropped before it ended.
                    Err(_) => Err(v3::Error::Other("the key listing was stopped".into())),
                })
            })?;
            Ok((keys, outcome))
        })
    }
}

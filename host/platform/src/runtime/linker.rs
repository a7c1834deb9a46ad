//! The linker every component is linked against: WASI (0.2 and 0.3),
//! `wasi:http` (0.2 and 0.3) and every registered capability. What a
//! component may actually do with a capability is decided by its grants at
//! call time.

use super::instance::InstanceState;
use crate::capabilities;
use anyhow::Result;
use wasmtime::Engine;
use wasmtime::component::Linker;

pub fn build(engine: &Engine) -> Result<Linker<InstanceState>> {
    let mut linker: Linker<InstanceState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    capabilities::add_to_linker(&mut linker)?;
    Ok(linker)
}

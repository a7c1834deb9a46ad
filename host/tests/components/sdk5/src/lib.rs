//! A Spin 3 app as spin-sdk 5.2 builds it: a wasm32-wasip2 component
//! importing `fermyon:spin@2.0.0` and `spin:sqlite@3.0.0`.

use spin_sdk::sqlite3 as sqlite_api;

const GENERATION: &str = "5";

include!("../../sdk-common/classic.rs");

//! A Spin 2 app as spin-sdk 3.1 builds it: a wasm32-wasip1 core module
//! importing `fermyon:spin@2.0.0`, which the host componentizes at load.

use spin_sdk::sqlite as sqlite_api;

const GENERATION: &str = "3";

include!("../../sdk-common/classic.rs");

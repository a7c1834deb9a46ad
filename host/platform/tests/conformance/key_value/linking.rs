//! Components that import the key-value interfaces link against the host's
//! linker: each function is defined with the WIT's types, async ones as
//! async. The components are made from the capability's WIT alone.

use std::path::Path;

use spindle_platform::runtime::{Runtime, linker};
use spindle_platform::runtime_config::Limits;
use wasmtime::component::Component;
use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve};

const WIT_FILES: [&str; 3] = [
    "spin-key-value@3.0.0.wit",
    "fermyon-spin-key-value@2.0.0.wit",
    "wasi-keyvalue@0.2.0-draft2.wit",
];

/// A component whose only imports are `interface` (and what it uses).
fn component_importing(dir: &Path, interface: &str) -> Vec<u8> {
    let mut resolve = Resolve::default();
    for file in WIT_FILES {
        resolve.push_file(dir.join(file)).unwrap();
    }
    let guest = resolve
        .push_str(
            "guest.wit",
            &format!("package spindle:guest; world guest {{ import {interface}; }}"),
        )
        .unwrap();
    let world = resolve.select_world(&[guest], Some("guest")).unwrap();
    let mut module =
        wit_component::dummy_module(&resolve, world, ManglingAndAbi::Legacy(LiftLowerAbi::Sync));
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

#[test]
fn every_interface_links() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/capabilities/key_value/wit");
    let runtime = Runtime::new(Limits::default()).unwrap();
    let linker = linker::build(runtime.engine()).unwrap();
    for interface in [
        "spin:key-value/key-value@3.0.0",
        "fermyon:spin/key-value@2.0.0",
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:keyvalue/batch@0.2.0-draft2",
    ] {
        let wasm = component_importing(&dir, interface);
        let component = Component::new(runtime.engine(), &wasm).unwrap();
        if let Err(e) = linker.instantiate_pre(&component) {
            panic!("{interface}: {e:?}");
        }
    }
}

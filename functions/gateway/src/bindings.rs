//! Bindings to the host's own capability interfaces (WIT in
//! `host/platform/src/capabilities`), generated against spin-sdk's copy of
//! the wit-bindgen runtime so their futures and streams run on the same
//! executor as the HTTP handler.

pub mod blobs {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../host/platform/src/capabilities/blobs/wit",
        world: "spindle:blobs/blobs-client",
        generate_all,
    });

    pub use self::spindle::blobs::store;
}

pub mod queue {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../host/platform/src/capabilities/queue/wit",
        world: "spindle:queue/publisher-client",
        generate_all,
    });

    pub use self::spindle::queue::publisher;
}

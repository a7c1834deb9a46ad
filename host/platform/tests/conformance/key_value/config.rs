//! Labels, grants and the runtime config: what start-up refuses, and what
//! a component may open.

use std::sync::Arc;

use spindle_platform::capabilities::Capability;
use spindle_platform::capabilities::key_value::{KeyValue, KvError, KvState};
use spindle_platform::capabilities::registry;
use spindle_platform::runtime_config::RuntimeConfig;

use super::backend::{build, build_for, manifest};

async fn refused(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), config, &[])
        .await
        .err()
        .expect("the runtime config is refused")
        .to_string()
}

#[tokio::test]
async fn other_store_types_are_refused_naming_the_supported_ones() {
    for kind in ["azure_cosmos", "aws_dynamo", "sqlite"] {
        let e = refused(&format!("[key_value_store.cache]\ntype = \"{kind}\"\n")).await;
        assert!(e.contains("[key_value_store.cache]"), "{e}");
        assert!(
            e.contains(&format!("type \"{kind}\" is not supported")),
            "{e}"
        );
        assert!(e.contains("\"spin\"") && e.contains("\"redis\""), "{e}");
    }
}

#[tokio::test]
async fn malformed_store_tables_are_refused_naming_the_table() {
    let cases = [
        ("[key_value_store.a]\npath = \"x.db\"\n", "has no `type`"),
        ("[key_value_store.a]\ntype = 3\n", "`type` must be a string"),
        (
            "[key_value_store.a]\ntype = \"spin\"\npaht = \"x.db\"\n",
            "unknown field `paht`",
        ),
        (
            "[key_value_store.a]\ntype = \"redis\"\n",
            "missing field `url`",
        ),
        (
            "[key_value_store.a]\ntype = \"redis\"\nurl = \"http://x\"\n",
            "invalid Redis URL",
        ),
        ("[key_value_store]\na = 1\n", "must be a table"),
    ];
    for (config, problem) in cases {
        let e = refused(config).await;
        assert!(e.contains("[key_value_store"), "{config}: {e}");
        assert!(e.contains(problem), "{config}: {e}");
    }
}

#[tokio::test]
async fn a_granted_label_that_is_not_configured_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "key_value_stores = [\"default\", \"cache\"]");
    let e = build_for(&manifest, dir.path(), "", &[])
        .await
        .err()
        .expect("start-up refused")
        .to_string();
    assert!(e.contains("component `web`"), "{e}");
    assert!(e.contains("key-value store `cache`"), "{e}");
    assert!(e.contains("add [key_value_store.cache]"), "{e}");
    // Configured, it starts.
    build_for(
        &manifest,
        dir.path(),
        "[key_value_store.cache]\ntype = \"spin\"\n",
        &[],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn components_open_only_what_they_are_granted() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "key_value_stores = [\"default\", \"cache\"]");
    let config =
        "[key_value_store.cache]\ntype = \"spin\"\n[key_value_store.private]\ntype = \"spin\"\n";
    let stores = build_for(&manifest, dir.path(), config, &[]).await.unwrap();
    let grants = registry::grants(&manifest).unwrap().remove("web").unwrap();
    assert!(KeyValue::is_granted(&grants.key_value));
    let state = KeyValue::prepare(&stores, &grants.key_value, "web");
    assert_eq!(state.open("default").unwrap().label(), "default");
    assert_eq!(state.open("cache").unwrap().label(), "cache");
    // Configured but not granted, not configured at all, or empty: the
    // component is told it may not, whether the store exists or not.
    for label in ["private", "other", ""] {
        let e = state.open(label).err().expect("refused");
        let KvError::AccessDenied {
            component,
            label: named,
        } = &e
        else {
            panic!("{label}: {e:?}");
        };
        assert_eq!((component.as_str(), named.as_str()), ("web", label));
        assert!(e.to_string().contains("key_value_stores"), "{e}");
    }
    // Granted but unknown (start-up refuses such a manifest; a state made
    // by hand shows what a component would see).
    let ghost = KvState::new("web", Arc::clone(&stores), &["ghost".to_string()]);
    assert!(matches!(ghost.open("ghost"), Err(KvError::NoSuchStore(l)) if l == "ghost"));
}

#[test]
fn key_value_imports_need_a_grant() {
    let dir = tempfile::tempdir().unwrap();
    let imports: Vec<String> = [
        "spin:key-value/key-value@3.0.0",
        "fermyon:spin/key-value@2.0.0",
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:keyvalue/batch@0.2.0-draft2",
    ]
    .map(String::from)
    .to_vec();
    let bare = manifest(dir.path(), "");
    let grants = registry::grants(&bare).unwrap().remove("web").unwrap();
    let missing = grants.ungranted(&imports);
    assert_eq!(missing.len(), imports.len(), "{missing:?}");
    for (line, import) in missing.iter().zip(&imports) {
        assert_eq!(
            line,
            &format!("{import} (grant: key_value_stores = [\"default\"])")
        );
    }
    let granted = manifest(dir.path(), "key_value_stores = [\"default\"]");
    let grants = registry::grants(&granted).unwrap().remove("web").unwrap();
    assert!(grants.ungranted(&imports).is_empty());
    // Other fermyon:spin interfaces are not this capability's.
    assert!(
        grants
            .ungranted(&["fermyon:spin/key-value-extra@2.0.0".to_string()])
            .is_empty()
    );
}

#[test]
fn limits_must_be_positive() {
    let dir = tempfile::tempdir().unwrap();
    for knob in [
        "key_value_max_key_bytes",
        "key_value_max_value_bytes",
        "key_value_max_open_stores",
        "key_value_max_result_bytes",
    ] {
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, format!("[limits]\n{knob} = 0\n")).unwrap();
        let e = RuntimeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("greater than zero"), "{knob}: {e}");
    }
    let defaults = RuntimeConfig::default().limits;
    assert_eq!(
        (
            defaults.key_value_max_key_bytes,
            defaults.key_value_max_value_bytes,
            defaults.key_value_max_open_stores,
            defaults.key_value_max_result_bytes,
        ),
        (4096, 1 << 20, 256, 16 << 20)
    );
}

#[tokio::test]
async fn the_summary_names_each_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://app:s3cret@cache.internal:6379/2\"\n";
    let manifest = manifest(dir.path(), "key_value_stores = [\"default\", \"cache\"]");
    let stores = build_for(&manifest, dir.path(), config, &[]).await.unwrap();
    let shown = KeyValue::describe(&stores).unwrap();
    assert!(
        shown.contains("`cache` is Redis at redis://app:"),
        "{shown}"
    );
    assert!(shown.contains("cache.internal:6379/2"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("`default` is SQLite file"), "{shown}");
    assert!(shown.contains("key-value/sqlite_key_value.db"), "{shown}");
}

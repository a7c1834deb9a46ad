//! The interfaces components import, as spin-sdk 3 and 5
//! (`fermyon:spin/sqlite@2.0.0`), 5 (`spin:sqlite/sqlite@3.0.0`) and 7
//! (`spin:sqlite/sqlite@3.1.0`) declare them, link against the platform's
//! linker: names, types and (for 3.0.0) the semver match to 3.1.0.

use spindle_platform::runtime::linker;
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// The types every version shares, then `functions`, in an instance type.
fn import(name: &str, functions: &str) -> String {
    format!(
        r#"(component
  (import "{name}" (instance
    (export "connection" (type $c (sub resource)))
    (type $value' (variant (case "integer" s64) (case "real" f64) (case "text" string) (case "blob" (list u8)) (case "null")))
    (export "value" (type $v (eq $value')))
    (type $error' (variant (case "no-such-database") (case "access-denied") (case "invalid-connection") (case "database-full") (case "io" string)))
    (export "error" (type $e (eq $error')))
    (type $row' (record (field "values" (list $v))))
    (export "row-result" (type $r (eq $row')))
    (type $query' (record (field "columns" (list string)) (field "rows" (list $r))))
    (export "query-result" (type $q (eq $query')))
    (type $own (own $c))
    (type $borrow (borrow $c))
    (export "[static]connection.open" (func (param "database" string) (result (result $own (error $e)))))
    (export "[method]connection.execute" (func (param "self" $borrow) (param "statement" string) (param "parameters" (list $v)) (result (result $q (error $e)))))
    {functions}
  ))
)"#
    )
}

const SYNC_3: &str = r#"
    (export "[method]connection.last-insert-rowid" (func (param "self" $borrow) (result s64)))
    (export "[method]connection.changes" (func (param "self" $borrow) (result u64)))"#;

const ASYNC_3_1: &str = r#"
    (export "[static]connection.open-async" (func async (param "database" string) (result (result $own (error $e)))))
    (export "[method]connection.execute-async" (func async (param "self" $borrow) (param "statement" string) (param "parameters" (list $v)) (result (result (tuple (list string) (stream $r) (future (result (error $e)))) (error $e)))))
    (export "[method]connection.last-insert-rowid-async" (func async (param "self" $borrow) (result s64)))
    (export "[method]connection.changes-async" (func async (param "self" $borrow) (result u64)))"#;

fn links(wat: &str) -> anyhow::Result<()> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .wasm_component_model_async(true);
    let engine = Engine::new(&config)?;
    let linker = linker::build(&engine)?;
    let component = Component::new(&engine, wat)?;
    linker.instantiate_pre(&component)?;
    Ok(())
}

#[test]
fn every_sdk_generation_links() {
    links(&import("fermyon:spin/sqlite@2.0.0", "")).unwrap();
    links(&import("spin:sqlite/sqlite@3.0.0", SYNC_3)).unwrap();
    links(&import(
        "spin:sqlite/sqlite@3.1.0",
        &format!("{SYNC_3}{ASYNC_3_1}"),
    ))
    .unwrap();
}

#[test]
fn a_mismatched_import_does_not_link() {
    // A sync `changes-async` is not the one served.
    let wrong =
        r#"(export "[method]connection.changes-async" (func (param "self" $borrow) (result u64)))"#;
    let e = links(&import("spin:sqlite/sqlite@3.1.0", wrong)).unwrap_err();
    assert!(format!("{e:#}").contains("changes-async"), "{e:#}");
    // 2.0.0 has no `changes`.
    assert!(links(&import("fermyon:spin/sqlite@2.0.0", SYNC_3)).is_err());
}

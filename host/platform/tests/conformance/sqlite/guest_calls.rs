//! The host functions called the way a component calls them: small
//! hand-written components (WAT) lower `open`, `execute`,
//! `last-insert-rowid`, `changes` and the resource drop through the
//! canonical ABI, on `spin:sqlite/sqlite@3.1.0` and on
//! `fermyon:spin/sqlite@2.0.0`; and, from an async-lifted export, the
//! `async func`s: `open-async`, `execute-async` (reading its
//! `stream<row-result>` and `future`), `last-insert-rowid-async` and
//! `changes-async`.

use super::App;
use spindle_platform::capabilities::Capability;
use spindle_platform::capabilities::capability::{HasState, StateView};
use spindle_platform::capabilities::sqlite::{Sqlite, SqliteState};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};

struct Host {
    table: ResourceTable,
    sqlite: SqliteState,
}

impl HasState<Sqlite> for Host {
    fn view(&mut self) -> StateView<'_, Sqlite> {
        StateView {
            state: &mut self.sqlite,
            table: &mut self.table,
        }
    }
}

/// A component importing `interface` (v3 adds `last-insert-rowid` and
/// `changes`) and exporting `run`: open "default", create a table,
/// insert 5 and 7 (bound), select their sum; the result is
/// `sum + 1000 * rowid + 1_000_000 * changes` (v3) or `sum` (v2). `denied`
/// opens "secret" and returns the error's case (1: access-denied).
fn component(interface: &str, v3: bool) -> String {
    let v3_types = if v3 {
        r#"(export "[method]connection.last-insert-rowid" (func (param "self" $borrow) (result s64)))
    (export "[method]connection.changes" (func (param "self" $borrow) (result u64)))"#
    } else {
        ""
    };
    let (v3_lower, v3_host, v3_imports, v3_result) = if v3 {
        (
            r#"(alias export $sqlite "[method]connection.last-insert-rowid" (func $rowid))
  (alias export $sqlite "[method]connection.changes" (func $changes))
  (core func $rowid' (canon lower (func $rowid)))
  (core func $changes' (canon lower (func $changes)))"#,
            r#"(export "rowid" (func $rowid')) (export "changes" (func $changes'))"#,
            r#"(import "host" "rowid" (func $rowid (param i32) (result i64)))
    (import "host" "changes" (func $changes (param i32) (result i64)))"#,
            r#"(i64.add (i64.mul (call $rowid (local.get $conn)) (i64.const 1000)))
      (i64.add (i64.mul (call $changes (local.get $conn)) (i64.const 1000000)))"#,
        )
    } else {
        ("", "", "", "")
    };
    format!(
        r#"(component
  (import "{interface}" (instance $sqlite
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
    {v3_types}
  ))
  (core module $libc
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $at) (local.get 3)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (alias export $sqlite "connection" (type $conn))
  (alias export $sqlite "[static]connection.open" (func $open))
  (alias export $sqlite "[method]connection.execute" (func $execute))
  (core func $open' (canon lower (func $open) (memory $mem) (realloc $realloc)))
  (core func $execute' (canon lower (func $execute) (memory $mem) (realloc $realloc)))
  (core func $drop' (canon resource.drop $conn))
  {v3_lower}
  (core instance $host
    (export "open" (func $open'))
    (export "execute" (func $execute'))
    (export "drop" (func $drop'))
    {v3_host})
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "open" (func $open (param i32 i32 i32)))
    (import "host" "execute" (func $execute (param i32 i32 i32 i32 i32 i32)))
    (import "host" "drop" (func $drop (param i32)))
    {v3_imports}
    (data (i32.const 16) "default")
    (data (i32.const 32) "CREATE TABLE t (x INTEGER)")
    (data (i32.const 64) "INSERT INTO t VALUES (?), (?)")
    (data (i32.const 96) "SELECT sum(x) FROM t")
    (data (i32.const 120) "secret")
    ;; Runs `execute` with the statement at (ptr, len) and `n` parameters
    ;; at 256, trapping on an error; the result is at 1024.
    (func $exec (param $conn i32) (param $ptr i32) (param $len i32) (param $n i32)
      (call $execute (local.get $conn) (local.get $ptr) (local.get $len) (i32.const 256) (local.get $n) (i32.const 1024))
      (if (i32.load8_u (i32.const 1024)) (then unreachable)))
    (func (export "run") (result i64)
      (local $conn i32)
      (local $sum i64)
      (call $open (i32.const 16) (i32.const 7) (i32.const 1024))
      (if (i32.load8_u (i32.const 1024)) (then unreachable))
      (local.set $conn (i32.load (i32.const 1028)))
      (call $exec (local.get $conn) (i32.const 32) (i32.const 26) (i32.const 0))
      ;; Two `integer` values (case 0, payload at +8, 16 bytes each).
      (i32.store8 (i32.const 256) (i32.const 0))
      (i64.store (i32.const 264) (i64.const 5))
      (i32.store8 (i32.const 272) (i32.const 0))
      (i64.store (i32.const 280) (i64.const 7))
      (call $exec (local.get $conn) (i32.const 64) (i32.const 29) (i32.const 2))
      (call $exec (local.get $conn) (i32.const 96) (i32.const 20) (i32.const 0))
      ;; rows (at +12) -> the first row's values -> the first value's payload.
      (local.set $sum (i64.load offset=8 (i32.load (i32.load (i32.const 1036)))))
      (local.get $sum)
      {v3_result}
      (call $drop (local.get $conn)))
    (func (export "denied") (result i64)
      (call $open (i32.const 120) (i32.const 6) (i32.const 1024))
      (if (i32.eqz (i32.load8_u (i32.const 1024))) (then unreachable))
      (i64.extend_i32_u (i32.load8_u (i32.const 1028)))))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance $host))))
  (func (export "run") (result s64) (canon lift (core func $main "run")))
  (func (export "denied") (result s64) (canon lift (core func $main "denied")))
)"#
    )
}

/// Instantiates `wat` for an instance of component `c` and calls `run`
/// then `denied`; returns both and the instance's state afterwards.
async fn call(app: &App, wat: &str) -> (i64, i64, SqliteState) {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .wasm_component_model_async(true);
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<Host> = Linker::new(&engine);
    Sqlite::add_to_linker(&mut linker).unwrap();
    let component = Component::new(&engine, wat).unwrap();
    let host = Host {
        table: ResourceTable::new(),
        sqlite: app.instance("c"),
    };
    let mut store = Store::new(&engine, host);
    let instance = linker
        .instantiate_async(&mut store, &component)
        .await
        .unwrap();
    let run = instance
        .get_typed_func::<(), (i64,)>(&mut store, "run")
        .unwrap();
    let (ran,) = run.call_async(&mut store, ()).await.unwrap();
    let denied = instance
        .get_typed_func::<(), (i64,)>(&mut store, "denied")
        .unwrap();
    let (denied,) = denied.call_async(&mut store, ()).await.unwrap();
    (ran, denied, store.into_data().sqlite)
}

#[tokio::test]
async fn spin_sqlite_3_1_from_a_component() {
    let app = App::with_config("[limits]\nsqlite_connections_per_instance = 1\n").await;
    let (ran, denied, mut state) = call(&app, &component("spin:sqlite/sqlite@3.1.0", true)).await;
    // sum 12, rowid 2, and the SELECT left `changes` at the INSERT's 2.
    assert_eq!(ran, 12 + 2 * 1000 + 2 * 1_000_000);
    assert_eq!(denied, 1, "access-denied");
    // The guest dropped its connection: its one slot is free again.
    state.open("default").await.unwrap();
}

#[tokio::test]
async fn fermyon_spin_sqlite_2_from_a_component() {
    let app = App::with_config("[limits]\nsqlite_connections_per_instance = 1\n").await;
    let (ran, denied, mut state) = call(&app, &component("fermyon:spin/sqlite@2.0.0", false)).await;
    assert_eq!(ran, 12);
    assert_eq!(denied, 1, "access-denied");
    state.open("default").await.unwrap();
    // Both interfaces are the same database.
    let conn = app.open().await;
    assert_eq!(super::scalar(&conn, "SELECT count(*) FROM t").await, 2);
}

/// An async-lifted `run` (as spin-sdk 7 components export theirs) that
/// opens with `open-async`, creates and fills a table with
/// `execute-async`, reads a SELECT's rows from its stream (`count` at a
/// time) and its end from its future, and returns
/// `sum + 1000 * last-insert-rowid-async + 1_000_000 * changes-async`.
fn async_component(select: &str, count: u32) -> String {
    let select_len = select.len();
    format!(
        r#"(component
  (import "spin:sqlite/sqlite@3.1.0" (instance $sqlite
    (export "connection" (type $c (sub resource)))
    (type $value' (variant (case "integer" s64) (case "real" f64) (case "text" string) (case "blob" (list u8)) (case "null")))
    (export "value" (type $v (eq $value')))
    (type $error' (variant (case "no-such-database") (case "access-denied") (case "invalid-connection") (case "database-full") (case "io" string)))
    (export "error" (type $e (eq $error')))
    (type $row' (record (field "values" (list $v))))
    (export "row-result" (type $r (eq $row')))
    (type $own (own $c))
    (type $borrow (borrow $c))
    (export "[static]connection.open-async" (func async (param "database" string) (result (result $own (error $e)))))
    (export "[method]connection.execute-async" (func async (param "self" $borrow) (param "statement" string) (param "parameters" (list $v)) (result (result (tuple (list string) (stream $r) (future (result (error $e)))) (error $e)))))
    (export "[method]connection.last-insert-rowid-async" (func async (param "self" $borrow) (result s64)))
    (export "[method]connection.changes-async" (func async (param "self" $borrow) (result u64)))
  ))
  (core module $libc
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $at) (local.get 3)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (alias export $sqlite "connection" (type $conn))
  (alias export $sqlite "row-result" (type $row))
  (alias export $sqlite "error" (type $err))
  (type $rows (stream $row))
  (type $done (future (result (error $err))))
  (alias export $sqlite "[static]connection.open-async" (func $open))
  (alias export $sqlite "[method]connection.execute-async" (func $execute))
  (alias export $sqlite "[method]connection.last-insert-rowid-async" (func $rowid))
  (alias export $sqlite "[method]connection.changes-async" (func $changes))
  ;; Lowered without `async`: the (stackful) task blocks until each returns.
  (core func $open' (canon lower (func $open) (memory $mem) (realloc $realloc)))
  (core func $execute' (canon lower (func $execute) (memory $mem) (realloc $realloc)))
  (core func $rowid' (canon lower (func $rowid)))
  (core func $changes' (canon lower (func $changes)))
  (core func $drop' (canon resource.drop $conn))
  (core func $read' (canon stream.read $rows (memory $mem) (realloc $realloc)))
  (core func $drop-rows' (canon stream.drop-readable $rows))
  (core func $await' (canon future.read $done (memory $mem) (realloc $realloc)))
  (core func $drop-done' (canon future.drop-readable $done))
  (core func $return' (canon task.return (result s64)))
  (core instance $host
    (export "open" (func $open'))
    (export "execute" (func $execute'))
    (export "rowid" (func $rowid'))
    (export "changes" (func $changes'))
    (export "drop" (func $drop'))
    (export "read" (func $read'))
    (export "drop-rows" (func $drop-rows'))
    (export "await" (func $await'))
    (export "drop-done" (func $drop-done'))
    (export "return" (func $return')))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "open" (func $open (param i32 i32 i32)))
    (import "host" "execute" (func $execute (param i32 i32 i32 i32 i32 i32)))
    (import "host" "rowid" (func $rowid (param i32) (result i64)))
    (import "host" "changes" (func $changes (param i32) (result i64)))
    (import "host" "drop" (func $drop (param i32)))
    (import "host" "read" (func $read (param i32 i32 i32) (result i32)))
    (import "host" "drop-rows" (func $drop-rows (param i32)))
    (import "host" "await" (func $await (param i32 i32) (result i32)))
    (import "host" "drop-done" (func $drop-done (param i32)))
    (import "host" "return" (func $return (param i64)))
    (data (i32.const 16) "default")
    (data (i32.const 32) "CREATE TABLE t (x INTEGER)")
    (data (i32.const 64) "INSERT INTO t VALUES (?), (?)")
    (data (i32.const 4096) "{select}")
    ;; `execute-async` with `n` parameters at 256, its rows read `count`
    ;; at a time into 2048; the sum of their first (integer) values.
    (func $query (param $conn i32) (param $ptr i32) (param $len i32) (param $n i32) (result i64)
      (local $rc i32) (local $i i32) (local $sum i64) (local $rows i32) (local $done i32)
      (call $execute (local.get $conn) (local.get $ptr) (local.get $len) (i32.const 256) (local.get $n) (i32.const 1024))
      (if (i32.load8_u (i32.const 1024)) (then unreachable))
      (local.set $rows (i32.load (i32.const 1036)))
      (local.set $done (i32.load (i32.const 1040)))
      (block $end
        (loop $more
          (local.set $rc (call $read (local.get $rows) (i32.const 2048) (i32.const {count})))
          (local.set $i (i32.const 0))
          (block $read-all
            (loop $each
              (br_if $read-all (i32.ge_u (local.get $i) (i32.shr_u (local.get $rc) (i32.const 4))))
              (local.set $sum (i64.add (local.get $sum)
                (i64.load offset=8 (i32.load (i32.add (i32.const 2048) (i32.shl (local.get $i) (i32.const 3)))))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $each)))
          ;; 0: completed (more may come); 1: the writer is done.
          (br_if $end (i32.eq (i32.and (local.get $rc) (i32.const 15)) (i32.const 1)))
          (br $more)))
      (call $drop-rows (local.get $rows))
      (drop (call $await (local.get $done) (i32.const 3072)))
      (if (i32.load8_u (i32.const 3072)) (then unreachable))
      (call $drop-done (local.get $done))
      (local.get $sum))
    (func (export "run")
      (local $conn i32)
      (call $open (i32.const 16) (i32.const 7) (i32.const 1024))
      (if (i32.load8_u (i32.const 1024)) (then unreachable))
      (local.set $conn (i32.load (i32.const 1028)))
      (drop (call $query (local.get $conn) (i32.const 32) (i32.const 26) (i32.const 0)))
      (i32.store8 (i32.const 256) (i32.const 0))
      (i64.store (i32.const 264) (i64.const 5))
      (i32.store8 (i32.const 272) (i32.const 0))
      (i64.store (i32.const 280) (i64.const 7))
      (drop (call $query (local.get $conn) (i32.const 64) (i32.const 29) (i32.const 2)))
      (call $query (local.get $conn) (i32.const 4096) (i32.const {select_len}) (i32.const 0))
      (i64.add (i64.mul (call $rowid (local.get $conn)) (i64.const 1000)))
      (i64.add (i64.mul (call $changes (local.get $conn)) (i64.const 1000000)))
      (call $drop (local.get $conn))
      (call $return)))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance $host))))
  (func (export "run") async (result s64) (canon lift (core func $main "run") async))
)"#
    )
}

async fn call_async_run(app: &App, wat: &str) -> (i64, SqliteState) {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .wasm_component_model_async(true)
        .wasm_component_model_async_stackful(true)
        // Blocking `stream.read` and `future.read` keep the WAT short.
        .wasm_component_model_more_async_builtins(true);
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<Host> = Linker::new(&engine);
    Sqlite::add_to_linker(&mut linker).unwrap();
    let component = Component::new(&engine, wat).unwrap();
    let host = Host {
        table: ResourceTable::new(),
        sqlite: app.instance("c"),
    };
    let mut store = Store::new(&engine, host);
    let instance = linker
        .instantiate_async(&mut store, &component)
        .await
        .unwrap();
    let run = instance
        .get_typed_func::<(), (i64,)>(&mut store, "run")
        .unwrap();
    let (ran,) = run.call_async(&mut store, ()).await.unwrap();
    (ran, store.into_data().sqlite)
}

#[tokio::test]
async fn the_async_functions_from_a_component() {
    let app = App::with_config("[limits]\nsqlite_connections_per_instance = 1\n").await;
    // 500 rows: 1 + 2 + ... + 500, read 7 at a time.
    let select = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 500) SELECT i FROM c";
    let (ran, mut state) = call_async_run(&app, &async_component(select, 7)).await;
    assert_eq!(ran, 125_250 + 2 * 1000 + 2 * 1_000_000);
    state.open("default").await.unwrap();
    // The rows the async calls wrote are there for anyone.
    let conn = app.open().await;
    assert_eq!(super::scalar(&conn, "SELECT sum(x) FROM t").await, 12);
}

//! Command dispatch: turns a command document into a reply document in the
//! real server's shapes (`{ok: 1, …}` or `{ok: 0, errmsg, code, codeName}`).
//!
//! Every command takes the store lock once and runs to completion under it,
//! which makes each command atomic with respect to other connections.
//! Generic fields drivers add (`$db`, `lsid`, `$readPreference`,
//! `writeConcern`, `$clusterTime`, …) are accepted and ignored.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard};

use bson::{Bson, Document, doc};

use crate::aggregate;
use crate::auth::{self, Session, Users};
use crate::error::{CmdResult, CommandError};
use crate::query::{
    Filter, Projection, SortSpec, get_path, parse_sort, sort_by_spec, truthy, values_equal,
};
use crate::store::{Collection, ID_INDEX, Index, Store, default_index_name, with_id_first};
use crate::update::{UpdateSpec, upsert_document};
use crate::wire::{MAX_BSON_SIZE, MAX_MESSAGE_SIZE};

/// Server version we claim; drivers only use it for display.
const VERSION: &str = "7.0.0";
/// MongoDB 7.0's wire version. The 3.x Rust driver needs at least 9 (4.4)
/// and knows up to 29; 21 keeps it from using 8.0-only commands (`bulkWrite`).
const MAX_WIRE_VERSION: i32 = 21;
/// Documents in a first batch when the client gives no `batchSize`.
const DEFAULT_FIRST_BATCH: usize = 101;
/// Byte budget for one batch, so replies stay under the size limits.
const BATCH_BYTES: usize = MAX_BSON_SIZE;
const MAX_WRITE_BATCH_SIZE: i32 = 100_000;

/// State shared by all connections of one server.
#[derive(Debug, Default)]
pub struct Shared {
    store: Mutex<Store>,
    users: Mutex<Users>,
    /// Access control on: every command but the handshake and login ones
    /// needs a user with a role for it.
    enforce_auth: bool,
}

/// The store or the users, even if a previous command panicked while
/// holding them (the data is still usable; a test server should keep
/// answering).
fn lock_anyway<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// With access control on and `users` as the only users.
    pub fn with_auth(users: Users) -> Shared {
        Shared {
            users: Mutex::new(users),
            enforce_auth: true,
            ..Shared::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        lock_anyway(&self.store)
    }

    fn users(&self) -> MutexGuard<'_, Users> {
        lock_anyway(&self.users)
    }
}

/// One client connection: its id (some replies mention it) and its login.
#[derive(Debug)]
pub struct Connection {
    pub id: i64,
    pub session: Session,
}

/// Runs one command against database `db` and returns the reply document.
pub fn run(shared: &Shared, conn: &mut Connection, db: &str, command: Document) -> Document {
    let name = command.keys().next().cloned().unwrap_or_default();
    tracing::debug!(connection = conn.id, db, command = %name, "command");
    let result = catch_unwind(AssertUnwindSafe(|| {
        if shared.enforce_auth {
            auth::authorize(&shared.users(), &conn.session, db, &name, &command)?;
        }
        dispatch(shared, conn, db, &name, &command)
    }))
    .unwrap_or_else(|_| {
        Err(CommandError::internal(format!(
            "mongo-wire bug while running '{name}'"
        )))
    });
    match result {
        Ok(mut reply) => {
            reply.insert("ok", 1.0);
            reply
        }
        Err(err) => {
            tracing::debug!(connection = conn.id, command = %name, error = %err, "command failed");
            err.to_reply()
        }
    }
}

fn dispatch(
    shared: &Shared,
    conn: &mut Connection,
    db: &str,
    name: &str,
    cmd: &Document,
) -> CmdResult<Document> {
    match name {
        "" => Err(CommandError::failed_to_parse("empty command document")),
        "hello" | "isMaster" | "ismaster" => {
            let mut reply = hello(conn.id, name == "hello");
            auth::extend_hello(&shared.users(), &mut conn.session, cmd, &mut reply);
            Ok(reply)
        }
        "saslStart" => auth::sasl_start(&shared.users(), &mut conn.session, db, cmd),
        "saslContinue" => auth::sasl_continue(&mut conn.session, db, cmd),
        "createUser" => auth::create_user(
            &mut shared.users(),
            &conn.session,
            shared.enforce_auth,
            db,
            cmd,
        ),
        "dropUser" => auth::drop_user(&mut shared.users(), db, cmd),
        "ping" | "endSessions" => Ok(Document::new()),
        "buildInfo" | "buildinfo" => Ok(doc! {
            "version": VERSION,
            "gitVersion": "mongo-wire",
            "versionArray": [7, 0, 0, 0],
            "bits": 64,
            "maxBsonObjectSize": MAX_BSON_SIZE as i32,
            "storageEngines": ["mongo-wire (in memory)"],
        }),
        "listDatabases" => list_databases(&shared.lock(), cmd),
        "dropDatabase" => {
            shared.lock().dbs.remove(db);
            Ok(Document::new())
        }
        "listCollections" => list_collections(&mut shared.lock(), db, cmd),
        "create" => create(&mut shared.lock(), db, cmd),
        "drop" => drop_collection(&mut shared.lock(), db, cmd),
        "insert" => insert(&mut shared.lock(), db, cmd),
        "find" => find(&mut shared.lock(), db, cmd),
        "getMore" => get_more(&mut shared.lock(), db, cmd),
        "killCursors" => kill_cursors(&mut shared.lock(), cmd),
        "update" => update(&mut shared.lock(), db, cmd),
        "delete" => delete(&mut shared.lock(), db, cmd),
        "findAndModify" | "findandmodify" => find_and_modify(&mut shared.lock(), db, cmd),
        "count" => count(&shared.lock(), db, cmd),
        "distinct" => distinct(&shared.lock(), db, cmd),
        "aggregate" => aggregate(&mut shared.lock(), db, cmd),
        "createIndexes" => create_indexes(&mut shared.lock(), db, cmd),
        "listIndexes" => list_indexes(&mut shared.lock(), db, cmd),
        "dropIndexes" | "deleteIndexes" => drop_indexes(&mut shared.lock(), db, cmd),
        other => Err(CommandError::command_not_found(other)),
    }
}

/// The handshake reply. No `topologyVersion` is sent, so drivers poll with
/// plain `hello` instead of the streaming (exhaust) protocol.
fn hello(connection_id: i64, modern: bool) -> Document {
    let mut reply = Document::new();
    reply.insert("helloOk", true);
    reply.insert(
        if modern {
            "isWritablePrimary"
        } else {
            "ismaster"
        },
        true,
    );
    reply.extend(doc! {
        "maxBsonObjectSize": MAX_BSON_SIZE as i32,
        "maxMessageSizeBytes": MAX_MESSAGE_SIZE as i32,
        "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
        "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
    });
    reply
}

// ---- argument helpers -------------------------------------------------------

/// The collection name a command names in its first field.
fn target(cmd: &Document, name: &str) -> CmdResult<String> {
    match cmd.get(name) {
        Some(Bson::String(s)) => Ok(s.clone()),
        Some(other) => Err(CommandError::invalid_namespace(format!(
            "collection name has invalid type {:?}",
            other.element_type()
        ))),
        None => Err(CommandError::failed_to_parse(format!("missing '{name}'"))),
    }
}

fn wrong_type(cmd: &str, field: &str, expected: &str, got: &Bson) -> CommandError {
    CommandError::type_mismatch(format!(
        "BSON field '{cmd}.{field}' is the wrong type '{:?}', expected type '{expected}'",
        got.element_type()
    ))
}

fn opt_doc<'a>(cmd: &'a Document, cmd_name: &str, field: &str) -> CmdResult<Option<&'a Document>> {
    match cmd.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(wrong_type(cmd_name, field, "object", other)),
    }
}

fn opt_i64(cmd: &Document, cmd_name: &str, field: &str) -> CmdResult<Option<i64>> {
    match cmd.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int32(i)) => Ok(Some(i64::from(*i))),
        Some(Bson::Int64(i)) => Ok(Some(*i)),
        Some(Bson::Double(f)) if f.fract() == 0.0 && f.abs() < 9e18 => Ok(Some(*f as i64)),
        Some(other) => Err(wrong_type(cmd_name, field, "long", other)),
    }
}

/// A non-negative count option (`skip`, `batchSize`, …).
fn opt_count(cmd: &Document, cmd_name: &str, field: &str) -> CmdResult<Option<usize>> {
    match opt_i64(cmd, cmd_name, field)? {
        None => Ok(None),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| {
            CommandError::bad_value(format!(
                "{field} value must be non-negative, but received: {n}"
            ))
        }),
    }
}

fn opt_bool(cmd: &Document, field: &str) -> bool {
    cmd.get(field).is_some_and(truthy)
}

/// An array of documents (e.g. `documents`, `updates`, `pipeline`).
fn doc_array<'a>(cmd: &'a Document, cmd_name: &str, field: &str) -> CmdResult<Vec<&'a Document>> {
    match cmd.get(field) {
        Some(Bson::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_document()
                    .ok_or_else(|| wrong_type(cmd_name, field, "object", item))
            })
            .collect(),
        Some(other) => Err(wrong_type(cmd_name, field, "array", other)),
        None => Err(CommandError::new(
            40414,
            "Location40414",
            format!("BSON field '{cmd_name}.{field}' is missing but a required field"),
        )),
    }
}

fn filter_of(cmd: &Document, cmd_name: &str, field: &str) -> CmdResult<Filter> {
    Filter::parse(opt_doc(cmd, cmd_name, field)?.unwrap_or(&Document::new()))
}

fn i32_of(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

// ---- cursors ------------------------------------------------------------------

/// Takes up to `max` documents (and at most [`BATCH_BYTES`], but always at
/// least one) off the front of `remaining`.
fn take_batch(remaining: &mut VecDeque<Document>, max: Option<usize>) -> Vec<Bson> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(next) = remaining.front() {
        if max.is_some_and(|m| batch.len() >= m) {
            break;
        }
        let size = bson::to_vec(next).map_or(0, |v| v.len());
        if !batch.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        batch.extend(remaining.pop_front().map(Bson::Document));
    }
    batch
}

/// The `{cursor: {firstBatch, id, ns}}` reply; leftovers become a cursor
/// for `getMore` unless `single_batch`.
fn cursor_reply(
    store: &mut Store,
    ns: String,
    docs: Vec<Document>,
    batch_size: Option<usize>,
    single_batch: bool,
) -> Document {
    let mut remaining: VecDeque<Document> = docs.into();
    let first = take_batch(
        &mut remaining,
        Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)),
    );
    let id = if remaining.is_empty() || single_batch {
        0
    } else {
        store.open_cursor(ns.clone(), remaining)
    };
    doc! { "cursor": { "firstBatch": first, "id": id, "ns": ns } }
}

fn get_more(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(id)) => *id,
        Some(other) => return Err(wrong_type("getMore", "getMore", "long", other)),
        None => return Err(CommandError::failed_to_parse("missing getMore")),
    };
    let coll = target(cmd, "collection")?;
    let batch_size = opt_count(cmd, "getMore", "batchSize")?.filter(|n| *n > 0);
    let cursor = store
        .cursors
        .get_mut(&id)
        .ok_or_else(|| CommandError::cursor_not_found(id))?;
    if cursor.ns != format!("{db}.{coll}") {
        return Err(CommandError::unauthorized(format!(
            "Requested getMore on namespace '{db}.{coll}', but cursor belongs to a different namespace {}",
            cursor.ns
        )));
    }
    let batch = take_batch(&mut cursor.remaining, batch_size);
    let ns = cursor.ns.clone();
    let next_id = if cursor.remaining.is_empty() {
        store.cursors.remove(&id);
        0
    } else {
        id
    };
    Ok(doc! { "cursor": { "nextBatch": batch, "id": next_id, "ns": ns } })
}

fn kill_cursors(store: &mut Store, cmd: &Document) -> CmdResult<Document> {
    let ids = match cmd.get("cursors") {
        Some(Bson::Array(ids)) => ids,
        Some(other) => return Err(wrong_type("killCursors", "cursors", "array", other)),
        None => return Err(CommandError::failed_to_parse("missing cursors")),
    };
    let (mut killed, mut not_found) = (Vec::new(), Vec::new());
    for id in ids {
        let removed = id.as_i64().and_then(|id| store.cursors.remove(&id));
        if removed.is_some() {
            killed.push(id.clone());
        } else {
            not_found.push(id.clone());
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    })
}

// ---- databases and collections --------------------------------------------------

fn list_databases(store: &Store, cmd: &Document) -> CmdResult<Document> {
    let filter = filter_of(cmd, "listDatabases", "filter")?;
    let name_only = opt_bool(cmd, "nameOnly");
    let mut total = 0i64;
    let mut databases = Vec::new();
    for (name, collections) in &store.dbs {
        let size: i64 = collections.values().map(Collection::size_bytes).sum();
        let entry = if name_only {
            doc! { "name": name.as_str() }
        } else {
            doc! { "name": name.as_str(), "sizeOnDisk": size, "empty": false }
        };
        if filter.matches(&entry) {
            total += size;
            databases.push(entry);
        }
    }
    let mut reply = doc! { "databases": databases };
    if !name_only {
        reply.insert("totalSize", total);
        reply.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(reply)
}

fn list_collections(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let filter = filter_of(cmd, "listCollections", "filter")?;
    let name_only = opt_bool(cmd, "nameOnly");
    let batch_size = opt_doc(cmd, "listCollections", "cursor")?
        .map(|c| opt_count(c, "listCollections", "batchSize"))
        .transpose()?
        .flatten();
    let names: Vec<String> = store
        .dbs
        .get(db)
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    let docs = names
        .into_iter()
        .map(|name| {
            if name_only {
                doc! { "name": name, "type": "collection" }
            } else {
                doc! {
                    "name": name,
                    "type": "collection",
                    "options": {},
                    "info": { "readOnly": false },
                    "idIndex": { "v": 2, "key": { "_id": 1 }, "name": ID_INDEX },
                }
            }
        })
        .filter(|d| filter.matches(d))
        .collect();
    Ok(cursor_reply(
        store,
        format!("{db}.$cmd.listCollections"),
        docs,
        batch_size,
        false,
    ))
}

fn create(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "create")?;
    let (_, created) = store.collection_or_create(db, &coll)?;
    if created {
        Ok(Document::new())
    } else {
        Err(CommandError::namespace_exists(&format!("{db}.{coll}")))
    }
}

fn drop_collection(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "drop")?;
    let ns = format!("{db}.{coll}");
    store.cursors.retain(|_, c| c.ns != ns);
    // Like MongoDB 7.0, dropping a missing collection succeeds.
    Ok(match store.drop_collection(db, &coll) {
        Some(dropped) => doc! { "nIndexesWas": i32_of(dropped.indexes.len()), "ns": ns },
        None => Document::new(),
    })
}

// ---- CRUD ----------------------------------------------------------------------

/// Builds `{n, writeErrors?}` for the write commands.
fn write_reply(n: usize, write_errors: Vec<Document>) -> Document {
    let mut reply = doc! { "n": i32_of(n) };
    if !write_errors.is_empty() {
        reply.insert("writeErrors", write_errors);
    }
    reply
}

fn insert(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "insert")?;
    let docs = doc_array(cmd, "insert", "documents")?;
    let ordered = cmd.get("ordered").is_none_or(truthy);
    let ns = format!("{db}.{coll}");
    let (collection, _) = store.collection_or_create(db, &coll)?;
    let (mut n, mut write_errors) = (0, Vec::new());
    for (i, doc) in docs.into_iter().enumerate() {
        match collection.insert(&ns, with_id_first(doc.clone())) {
            Ok(()) => n += 1,
            Err(err) => {
                write_errors.push(err.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(n, write_errors))
}

/// The documents of `db.coll` matching `filter`, after sort, skip and limit
/// (projection is left to the caller). A missing collection is empty.
fn select(
    store: &Store,
    db: &str,
    coll: &str,
    filter: &Filter,
    sort: &SortSpec,
    skip: usize,
    limit: Option<usize>,
) -> Vec<Document> {
    let Some(collection) = store.collection(db, coll) else {
        return Vec::new();
    };
    let matching = collection.docs.iter().filter(|d| filter.matches(d));
    let limit = limit.unwrap_or(usize::MAX);
    if sort.is_empty() {
        // No sort: stop as soon as the limit is reached.
        return matching.skip(skip).take(limit).cloned().collect();
    }
    let sorted = sort_by_spec(matching.collect(), sort, |d| d);
    sorted.into_iter().skip(skip).take(limit).cloned().collect()
}

/// `limit` as drivers send it: 0 means none, negative means "this many, one batch".
fn limit_of(cmd: &Document, cmd_name: &str) -> CmdResult<(Option<usize>, bool)> {
    Ok(match opt_i64(cmd, cmd_name, "limit")? {
        None | Some(0) => (None, false),
        Some(n) => (usize::try_from(n.unsigned_abs()).ok(), n < 0),
    })
}

fn find(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "find")?;
    let filter = filter_of(cmd, "find", "filter")?;
    let sort = parse_sort(opt_doc(cmd, "find", "sort")?.unwrap_or(&Document::new()))?;
    let projection = opt_doc(cmd, "find", "projection")?
        .map(Projection::parse)
        .transpose()?;
    let skip = opt_count(cmd, "find", "skip")?.unwrap_or(0);
    let (limit, negative_limit) = limit_of(cmd, "find")?;
    let batch_size = opt_count(cmd, "find", "batchSize")?;
    let single_batch = opt_bool(cmd, "singleBatch") || negative_limit;
    let mut docs = select(store, db, &coll, &filter, &sort, skip, limit);
    if let Some(p) = projection {
        docs = docs.iter().map(|d| p.apply(d)).collect();
    }
    let batch_size = batch_size.or(limit.filter(|_| single_batch));
    Ok(cursor_reply(
        store,
        format!("{db}.{coll}"),
        docs,
        batch_size,
        single_batch,
    ))
}

fn count(store: &Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "count")?;
    let filter = filter_of(cmd, "count", "query")?;
    let skip = opt_count(cmd, "count", "skip")?.unwrap_or(0);
    let (limit, _) = limit_of(cmd, "count")?;
    let n = match store.collection(db, &coll) {
        Some(c) => c
            .docs
            .iter()
            .filter(|d| filter.matches(d))
            .skip(skip)
            .take(limit.unwrap_or(usize::MAX))
            .count(),
        None => 0,
    };
    Ok(doc! { "n": i32_of(n) })
}

fn distinct(store: &Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "distinct")?;
    let key = match cmd.get("key") {
        Some(Bson::String(k)) => k.clone(),
        Some(other) => return Err(wrong_type("distinct", "key", "string", other)),
        None => return Err(CommandError::failed_to_parse("missing 'key'")),
    };
    let filter = filter_of(cmd, "distinct", "query")?;
    let docs = select(store, db, &coll, &filter, &Vec::new(), 0, None);
    let mut values: Vec<Bson> = Vec::new();
    let mut push = |v: &Bson| {
        if !values.iter().any(|seen| values_equal(seen, v)) {
            values.push(v.clone());
        }
    };
    for doc in &docs {
        match get_path(doc, &key) {
            Some(Bson::Array(items)) => items.iter().for_each(&mut push),
            Some(v) => push(v),
            None => {}
        }
    }
    Ok(doc! { "values": values })
}

fn aggregate(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = match cmd.get("aggregate") {
        Some(Bson::String(s)) => s.clone(),
        _ => {
            return Err(CommandError::not_supported(
                "only collection aggregations are supported by mongo-wire",
            ));
        }
    };
    let pipeline: Vec<Document> = doc_array(cmd, "aggregate", "pipeline")?
        .into_iter()
        .cloned()
        .collect();
    let cursor = opt_doc(cmd, "aggregate", "cursor")?.ok_or_else(|| {
        CommandError::failed_to_parse(
            "The 'cursor' option is required, except for aggregate with the explain argument",
        )
    })?;
    let batch_size = opt_count(cursor, "aggregate", "batchSize")?;
    let docs = store
        .collection(db, &coll)
        .map(|c| c.docs.clone())
        .unwrap_or_default();
    let out = aggregate::run(docs, &pipeline)?;
    Ok(cursor_reply(
        store,
        format!("{db}.{coll}"),
        out,
        batch_size,
        false,
    ))
}

/// Outcome of one update statement.
struct Updated {
    matched: usize,
    modified: usize,
    upserted: Option<Bson>,
}

fn update_one_statement(
    collection: &mut Collection,
    ns: &str,
    statement: &Document,
) -> CmdResult<Updated> {
    let query = opt_doc(statement, "update", "q")?
        .cloned()
        .unwrap_or_default();
    let filter = Filter::parse(&query)?;
    let spec = UpdateSpec::parse(
        statement
            .get("u")
            .ok_or_else(|| CommandError::failed_to_parse("missing 'u'"))?,
    )?;
    let multi = opt_bool(statement, "multi");
    if multi && spec.is_replacement() {
        return Err(CommandError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    let positions: Vec<usize> = collection
        .docs
        .iter()
        .enumerate()
        .filter(|(_, d)| filter.matches(d))
        .map(|(i, _)| i)
        .take(if multi { usize::MAX } else { 1 })
        .collect();
    if positions.is_empty() {
        if !opt_bool(statement, "upsert") {
            return Ok(Updated {
                matched: 0,
                modified: 0,
                upserted: None,
            });
        }
        let doc = upsert_document(&query, &spec)?;
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        collection.insert(ns, doc)?;
        return Ok(Updated {
            matched: 0,
            modified: 0,
            upserted: Some(id),
        });
    }
    let mut modified = 0;
    for &i in &positions {
        let mut doc = collection.docs[i].clone();
        spec.apply(&mut doc, false)?;
        if doc != collection.docs[i] {
            collection.replace(ns, i, doc)?;
            modified += 1;
        }
    }
    Ok(Updated {
        matched: positions.len(),
        modified,
        upserted: None,
    })
}

fn update(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "update")?;
    let statements = doc_array(cmd, "update", "updates")?;
    let ordered = cmd.get("ordered").is_none_or(truthy);
    let ns = format!("{db}.{coll}");
    // Like the real server, only an upsert creates a missing collection.
    if store.collection(db, &coll).is_none() && !statements.iter().any(|s| opt_bool(s, "upsert")) {
        let mut reply = write_reply(0, Vec::new());
        reply.insert("nModified", 0);
        return Ok(reply);
    }
    let (collection, _) = store.collection_or_create(db, &coll)?;
    let (mut n, mut modified, mut upserted, mut write_errors) = (0, 0, Vec::new(), Vec::new());
    for (i, statement) in statements.into_iter().enumerate() {
        match update_one_statement(collection, &ns, statement) {
            Ok(result) => {
                n += result.matched;
                modified += result.modified;
                if let Some(id) = result.upserted {
                    n += 1;
                    upserted.push(doc! { "index": i32_of(i), "_id": id });
                }
            }
            Err(err) => {
                write_errors.push(err.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = write_reply(n, write_errors);
    reply.insert("nModified", i32_of(modified));
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    Ok(reply)
}

fn delete(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "delete")?;
    let statements = doc_array(cmd, "delete", "deletes")?;
    let ordered = cmd.get("ordered").is_none_or(truthy);
    let ns = format!("{db}.{coll}");
    let (mut n, mut write_errors) = (0, Vec::new());
    for (i, statement) in statements.into_iter().enumerate() {
        let result = (|| -> CmdResult<usize> {
            let filter = filter_of(statement, "delete", "q")?;
            let limit = opt_i64(statement, "delete", "limit")?.unwrap_or(0);
            if !matches!(limit, 0 | 1) {
                return Err(CommandError::failed_to_parse(format!(
                    "The limit field in delete objects must be 0 or 1. Got {limit}"
                )));
            }
            let Some(collection) = store.collection_mut(db, &coll) else {
                return Ok(0);
            };
            let mut removed = 0;
            collection.docs.retain(|d| {
                let remove = (limit == 0 || removed == 0) && filter.matches(d);
                removed += usize::from(remove);
                !remove
            });
            Ok(removed)
        })();
        match result {
            Ok(removed) => n += removed,
            Err(err) => {
                write_errors.push(err.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    tracing::trace!(ns, n, "deleted");
    Ok(write_reply(n, write_errors))
}

fn find_and_modify(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let name = "findAndModify";
    let coll = target(cmd, name).or_else(|_| target(cmd, "findandmodify"))?;
    let query = opt_doc(cmd, name, "query")?.cloned().unwrap_or_default();
    let filter = Filter::parse(&query)?;
    let sort = parse_sort(opt_doc(cmd, name, "sort")?.unwrap_or(&Document::new()))?;
    let projection = opt_doc(cmd, name, "fields")?
        .map(Projection::parse)
        .transpose()?;
    let remove = opt_bool(cmd, "remove");
    let spec = cmd.get("update").map(UpdateSpec::parse).transpose()?;
    let return_new = opt_bool(cmd, "new");
    let upsert = opt_bool(cmd, "upsert");
    match (&spec, remove) {
        (Some(_), true) => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ));
        }
        (None, false) => {
            return Err(CommandError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ));
        }
        _ => {}
    }
    let ns = format!("{db}.{coll}");
    let (collection, _) = store.collection_or_create(db, &coll)?;
    let candidates: Vec<(usize, &Document)> = collection
        .docs
        .iter()
        .enumerate()
        .filter(|(_, d)| filter.matches(d))
        .collect();
    let position = sort_by_spec(candidates, &sort, |(_, d)| d)
        .first()
        .map(|(i, _)| *i);
    let project = |d: Document| {
        projection
            .as_ref()
            .map_or_else(|| d.clone(), |p| p.apply(&d))
    };

    let (value, last_error) = match (position, spec) {
        (Some(i), None) => {
            let old = collection.docs.remove(i);
            (Bson::Document(project(old)), doc! { "n": 1 })
        }
        (Some(i), Some(spec)) => {
            let old = collection.docs[i].clone();
            let mut new = old.clone();
            spec.apply(&mut new, false)?;
            if new != old {
                collection.replace(&ns, i, new.clone())?;
            }
            let shown = if return_new { new } else { old };
            (
                Bson::Document(project(shown)),
                doc! { "n": 1, "updatedExisting": true },
            )
        }
        (None, Some(spec)) if upsert => {
            let doc = upsert_document(&query, &spec)?;
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            collection.insert(&ns, doc.clone())?;
            let value = if return_new {
                Bson::Document(project(doc))
            } else {
                Bson::Null
            };
            (
                value,
                doc! { "n": 1, "updatedExisting": false, "upserted": id },
            )
        }
        (None, Some(_)) => (Bson::Null, doc! { "n": 0, "updatedExisting": false }),
        (None, None) => (Bson::Null, doc! { "n": 0 }),
    };
    Ok(doc! { "lastErrorObject": last_error, "value": value })
}

// ---- indexes --------------------------------------------------------------------

fn create_indexes(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "createIndexes")?;
    let specs = doc_array(cmd, "createIndexes", "indexes")?;
    if specs.is_empty() {
        return Err(CommandError::bad_value("Must specify at least one index"));
    }
    let ns = format!("{db}.{coll}");
    let (collection, created) = store.collection_or_create(db, &coll)?;
    let before = collection.indexes.len();
    let mut new_indexes = Vec::new();
    for spec in specs {
        let key = match spec.get("key") {
            Some(Bson::Document(k)) if !k.is_empty() => k.clone(),
            _ => {
                return Err(CommandError::new(
                    67,
                    "CannotCreateIndex",
                    "index spec must have a non-empty 'key' document",
                ));
            }
        };
        let mut spec = spec.clone();
        if !matches!(spec.get("name"), Some(Bson::String(_))) {
            spec.insert("name", default_index_name(&key));
        }
        let index = Index::from_spec(&spec);
        let existing = collection
            .indexes
            .iter()
            .chain(&new_indexes)
            .find(|i: &&Index| {
                i.name == index.name
                    || values_equal(&Bson::Document(i.key.clone()), &Bson::Document(key.clone()))
            });
        match existing {
            Some(i)
                if i.name == index.name
                    && values_equal(
                        &Bson::Document(i.key.clone()),
                        &Bson::Document(key.clone()),
                    ) => {}
            Some(i) if i.name == index.name => {
                return Err(CommandError::new(
                    86,
                    "IndexKeySpecsConflict",
                    format!(
                        "An existing index has the same name as the requested index but different keys: {}",
                        i.name
                    ),
                ));
            }
            Some(i) => {
                return Err(CommandError::new(
                    85,
                    "IndexOptionsConflict",
                    format!("Index already exists with a different name: {}", i.name),
                ));
            }
            None => {
                collection.check_new_index(&ns, &index)?;
                new_indexes.push(index);
            }
        }
    }
    let added = !new_indexes.is_empty();
    collection.indexes.extend(new_indexes);
    let mut reply = doc! {
        "numIndexesBefore": i32_of(before),
        "numIndexesAfter": i32_of(collection.indexes.len()),
        "createdCollectionAutomatically": created,
    };
    if !added {
        reply.insert("note", "all indexes already exist");
    }
    Ok(reply)
}

fn list_indexes(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "listIndexes")?;
    let ns = format!("{db}.{coll}");
    let batch_size = opt_doc(cmd, "listIndexes", "cursor")?
        .map(|c| opt_count(c, "listIndexes", "batchSize"))
        .transpose()?
        .flatten();
    let specs = store
        .collection(db, &coll)
        .ok_or_else(|| CommandError::namespace_not_found(&ns))?
        .indexes
        .iter()
        .map(|i| i.spec.clone())
        .collect();
    Ok(cursor_reply(store, ns, specs, batch_size, false))
}

fn drop_indexes(store: &mut Store, db: &str, cmd: &Document) -> CmdResult<Document> {
    let coll = target(cmd, "dropIndexes").or_else(|_| target(cmd, "deleteIndexes"))?;
    let ns = format!("{db}.{coll}");
    let collection = store
        .collection_mut(db, &coll)
        .ok_or_else(|| CommandError::namespace_not_found(&ns))?;
    let was = i32_of(collection.indexes.len());
    let cannot_drop_id = || CommandError::new(72, "InvalidOptions", "cannot drop _id index");
    let mut names: Vec<String> = Vec::new();
    match cmd.get("index") {
        Some(Bson::String(s)) if s == "*" => {
            collection.indexes.retain(|i| i.name == ID_INDEX);
        }
        Some(Bson::String(s)) => names.push(s.clone()),
        Some(Bson::Array(items)) => {
            for item in items {
                names.push(
                    item.as_str()
                        .ok_or_else(|| wrong_type("dropIndexes", "index", "string", item))?
                        .to_owned(),
                );
            }
        }
        Some(Bson::Document(key)) => {
            let found = collection
                .indexes
                .iter()
                .find(|i| {
                    values_equal(&Bson::Document(i.key.clone()), &Bson::Document(key.clone()))
                })
                .ok_or_else(|| {
                    CommandError::index_not_found(format!("can't find index with key: {key}"))
                })?;
            names.push(found.name.clone());
        }
        Some(other) => {
            return Err(wrong_type(
                "dropIndexes",
                "index",
                "string or object",
                other,
            ));
        }
        None => return Err(CommandError::failed_to_parse("missing 'index'")),
    }
    for name in &names {
        if name == ID_INDEX {
            return Err(cannot_drop_id());
        }
        if !collection.indexes.iter().any(|i| &i.name == name) {
            return Err(CommandError::index_not_found(format!(
                "index not found with name [{name}]"
            )));
        }
    }
    collection.indexes.retain(|i| !names.contains(&i.name));
    Ok(doc! { "nIndexesWas": was })
}

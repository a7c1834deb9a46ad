//! In-memory state: databases → collections → documents, index specs, and
//! open cursors.
//!
//! Everything lives behind one mutex (see [`crate::server`]), so a command
//! sees and changes a consistent snapshot; commands are short, and this is a
//! test server, so one lock is simpler than anything finer.
//!
//! Documents are kept in insertion order in a `Vec`; lookups are linear
//! scans (including unique-index checks), which is plenty for test data.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bson::{Bson, Document, doc, oid::ObjectId};

use crate::error::{CmdResult, CommandError};
use crate::query::{get_path, values_equal};

/// Name of the implicit unique index on `_id`.
pub const ID_INDEX: &str = "_id_";

/// An index as `listIndexes` shows it; only `unique` (and `sparse`) change
/// behaviour, everything else is remembered and echoed back.
#[derive(Debug, Clone)]
pub struct Index {
    pub name: String,
    pub key: Document,
    pub unique: bool,
    pub sparse: bool,
    /// The full spec as listed: `{v: 2, key, name, …options}`.
    pub spec: Document,
}

impl Index {
    fn id_index() -> Index {
        Index::from_spec(&doc! { "key": { "_id": 1 }, "name": ID_INDEX })
    }

    /// Builds an index from a `createIndexes` entry (already validated to
    /// have `key` and `name`).
    pub fn from_spec(spec: &Document) -> Index {
        let key = spec.get_document("key").cloned().unwrap_or_default();
        let name = spec.get_str("name").unwrap_or_default().to_owned();
        let mut listed = doc! { "v": 2, "key": key.clone(), "name": name.as_str() };
        for (k, v) in spec {
            if !matches!(k.as_str(), "v" | "key" | "name" | "ns") {
                listed.insert(k.clone(), v.clone());
            }
        }
        Index {
            unique: spec.get("unique").is_some_and(crate::query::truthy) || name == ID_INDEX,
            sparse: spec.get("sparse").is_some_and(crate::query::truthy),
            name,
            key,
            spec: listed,
        }
    }

    /// The key of `doc` in this index (missing fields are null), or `None`
    /// when a sparse index skips the document.
    fn key_of(&self, doc: &Document) -> Option<Vec<Bson>> {
        let values: Vec<Option<&Bson>> = self.key.keys().map(|path| get_path(doc, path)).collect();
        if self.sparse && values.iter().all(Option::is_none) {
            return None;
        }
        Some(
            values
                .into_iter()
                .map(|v| v.cloned().unwrap_or(Bson::Null))
                .collect(),
        )
    }
}

/// The default index name the real server derives from a key: `a_1_b_-1`.
pub fn default_index_name(key: &Document) -> String {
    key.iter()
        .map(|(k, v)| match v {
            Bson::Int32(i) => format!("{k}_{i}"),
            Bson::Int64(i) => format!("{k}_{i}"),
            Bson::Double(f) => format!("{k}_{f}"),
            Bson::String(s) => format!("{k}_{s}"),
            other => format!("{k}_{other}"),
        })
        .collect::<Vec<_>>()
        .join("_")
}

#[derive(Debug, Clone)]
pub struct Collection {
    pub docs: Vec<Document>,
    pub indexes: Vec<Index>,
}

impl Default for Collection {
    fn default() -> Self {
        Collection {
            docs: Vec::new(),
            indexes: vec![Index::id_index()],
        }
    }
}

impl Collection {
    /// Fails with a duplicate key error (11000) if `doc` collides with
    /// another document (other than the one at `skip`) on a unique index.
    pub fn check_unique(&self, ns: &str, doc: &Document, skip: Option<usize>) -> CmdResult<()> {
        for index in self.indexes.iter().filter(|i| i.unique) {
            self.check_index(ns, index, doc, skip)?;
        }
        Ok(())
    }

    fn check_index(
        &self,
        ns: &str,
        index: &Index,
        doc: &Document,
        skip: Option<usize>,
    ) -> CmdResult<()> {
        let Some(key) = index.key_of(doc) else {
            return Ok(());
        };
        let clash = self.docs.iter().enumerate().any(|(i, other)| {
            Some(i) != skip
                && index
                    .key_of(other)
                    .is_some_and(|k| k.iter().zip(&key).all(|(a, b)| values_equal(a, b)))
        });
        if clash {
            let key_value = index.key.keys().cloned().zip(key).collect();
            return Err(CommandError::duplicate_key(
                ns,
                &index.name,
                &index.key,
                key_value,
            ));
        }
        Ok(())
    }

    /// Checks a new unique index against the existing documents.
    pub fn check_new_index(&self, ns: &str, index: &Index) -> CmdResult<()> {
        if index.unique {
            for (i, doc) in self.docs.iter().enumerate() {
                self.check_index(ns, index, doc, Some(i))?;
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, ns: &str, doc: Document) -> CmdResult<()> {
        if matches!(doc.get("_id"), Some(Bson::Array(_))) {
            return Err(CommandError::new(
                53,
                "InvalidIdField",
                "can't use an array for _id",
            ));
        }
        self.check_unique(ns, &doc, None)?;
        self.docs.push(doc);
        Ok(())
    }

    pub fn replace(&mut self, ns: &str, position: usize, doc: Document) -> CmdResult<()> {
        self.check_unique(ns, &doc, Some(position))?;
        match self.docs.get_mut(position) {
            Some(slot) => *slot = doc,
            None => return Err(CommandError::internal("document vanished during update")),
        }
        Ok(())
    }

    /// Approximate storage size, for `listDatabases`.
    pub fn size_bytes(&self) -> i64 {
        self.docs
            .iter()
            .map(|d| bson::to_vec(d).map_or(0, |v| v.len() as i64))
            .sum()
    }
}

/// `doc` with `_id` moved to the front (as the real server stores it), or a
/// fresh `ObjectId` there if it had none.
pub fn with_id_first(mut doc: Document) -> Document {
    let id = doc
        .remove("_id")
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    let mut out = Document::new();
    out.insert("_id", id);
    out.extend(doc);
    out
}

/// A server-side cursor: the rest of a materialised result.
#[derive(Debug)]
pub struct Cursor {
    pub ns: String,
    pub remaining: VecDeque<Document>,
}

#[derive(Debug, Default)]
pub struct Store {
    /// A database exists while it has at least one collection.
    pub dbs: BTreeMap<String, BTreeMap<String, Collection>>,
    pub cursors: HashMap<i64, Cursor>,
    next_cursor_id: i64,
}

/// Rejects names the real server would not accept.
fn validate_names(db: &str, coll: &str) -> CmdResult<()> {
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(CommandError::invalid_namespace(format!(
            "Invalid database name: '{db}'"
        )));
    }
    if coll.is_empty() || coll.contains(['$', '\0']) || coll.starts_with('.') {
        return Err(CommandError::invalid_namespace(format!(
            "Invalid collection name: '{coll}'"
        )));
    }
    Ok(())
}

impl Store {
    pub fn collection(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db)?.get(coll)
    }

    pub fn collection_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs.get_mut(db)?.get_mut(coll)
    }

    /// The collection, created (implicitly, as writes do) if missing; the
    /// flag says whether it was created.
    pub fn collection_or_create(
        &mut self,
        db: &str,
        coll: &str,
    ) -> CmdResult<(&mut Collection, bool)> {
        validate_names(db, coll)?;
        let collections = self.dbs.entry(db.to_owned()).or_default();
        let created = !collections.contains_key(coll);
        Ok((collections.entry(coll.to_owned()).or_default(), created))
    }

    pub fn drop_collection(&mut self, db: &str, coll: &str) -> Option<Collection> {
        let collections = self.dbs.get_mut(db)?;
        let dropped = collections.remove(coll);
        if collections.is_empty() {
            self.dbs.remove(db);
        }
        dropped
    }

    /// Registers a cursor over `remaining` and returns its (non-zero) id.
    pub fn open_cursor(&mut self, ns: String, remaining: VecDeque<Document>) -> i64 {
        self.next_cursor_id = self.next_cursor_id.wrapping_add(1).max(1);
        // Offset so ids do not look like small counters (drivers don't care).
        let id = self.next_cursor_id + 7_000_000_000;
        self.cursors.insert(id, Cursor { ns, remaining });
        id
    }
}

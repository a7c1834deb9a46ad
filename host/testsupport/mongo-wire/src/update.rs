//! Update documents: operator updates (`$set`, `$unset`, `$inc`,
//! `$setOnInsert`) and full replacements, plus building the document an
//! upsert inserts.
//!
//! Simplifications: no other operators (`$push`, `$rename`, …), no
//! aggregation-pipeline updates, no positional `$`/array filters, and no
//! detection of conflicting paths between operators (they apply in order).

use bson::{Bson, Document};

use crate::error::{CmdResult, CommandError};
use crate::query::get_path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpKind {
    Set,
    Unset,
    Inc,
    SetOnInsert,
}

/// A parsed `u` / `update` argument.
#[derive(Debug, Clone)]
pub enum UpdateSpec {
    Replacement(Document),
    Operators(Vec<(OpKind, String, Bson)>),
}

impl UpdateSpec {
    pub fn parse(update: &Bson) -> CmdResult<UpdateSpec> {
        let doc = match update {
            Bson::Document(d) => d,
            Bson::Array(_) => {
                return Err(CommandError::not_supported(
                    "pipeline-style updates are not supported by mongo-wire",
                ));
            }
            other => {
                return Err(CommandError::type_mismatch(format!(
                    "update must be an object, not {:?}",
                    other.element_type()
                )));
            }
        };
        let is_operators = doc.keys().next().is_some_and(|k| k.starts_with('$'));
        if !is_operators {
            if let Some(k) = doc.keys().find(|k| k.starts_with('$')) {
                return Err(CommandError::new(
                    52,
                    "DollarPrefixedFieldName",
                    format!(
                        "The dollar ($) prefixed field '{k}' in '{k}' is not valid for storage."
                    ),
                ));
            }
            return Ok(UpdateSpec::Replacement(doc.clone()));
        }
        let mut ops = Vec::new();
        for (name, fields) in doc {
            let kind = match name.as_str() {
                "$set" => OpKind::Set,
                "$unset" => OpKind::Unset,
                "$inc" => OpKind::Inc,
                "$setOnInsert" => OpKind::SetOnInsert,
                other => {
                    return Err(CommandError::failed_to_parse(format!(
                        "Unknown modifier: {other}. Expected a valid update modifier or pipeline-style update specified as an array"
                    )));
                }
            };
            let fields = fields.as_document().ok_or_else(|| {
                CommandError::failed_to_parse(format!(
                    "Modifiers operate on fields but we found a non-object value for {name}"
                ))
            })?;
            for (path, value) in fields {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(CommandError::new(
                        56,
                        "EmptyFieldName",
                        "An empty update path is not valid.",
                    ));
                }
                if kind == OpKind::Inc && !is_number(value) {
                    return Err(CommandError::type_mismatch(format!(
                        "Cannot increment with non-numeric argument: {{{path}: {value}}}"
                    )));
                }
                ops.push((kind, path.clone(), value.clone()));
            }
        }
        Ok(UpdateSpec::Operators(ops))
    }

    pub fn is_replacement(&self) -> bool {
        matches!(self, UpdateSpec::Replacement(_))
    }

    /// Applies the update to `doc` in place. `inserting` is true when the
    /// document is being created by an upsert (enables `$setOnInsert`, allows
    /// setting `_id`).
    pub fn apply(&self, doc: &mut Document, inserting: bool) -> CmdResult<()> {
        let old_id = doc.get("_id").cloned();
        match self {
            UpdateSpec::Replacement(replacement) => {
                let mut next = Document::new();
                if let Some(id) = replacement.get("_id").or(old_id.as_ref()) {
                    next.insert("_id", id.clone());
                }
                for (k, v) in replacement {
                    if k != "_id" {
                        next.insert(k.clone(), v.clone());
                    }
                }
                *doc = next;
            }
            UpdateSpec::Operators(ops) => {
                for (kind, path, value) in ops {
                    match kind {
                        OpKind::Set => set_path(doc, path, value.clone())?,
                        OpKind::SetOnInsert if inserting => set_path(doc, path, value.clone())?,
                        OpKind::SetOnInsert => {}
                        OpKind::Unset => unset_path(doc, path),
                        OpKind::Inc => {
                            let next = match get_path(doc, path) {
                                None => value.clone(),
                                Some(current) if is_number(current) => add(current, value)?,
                                Some(current) => {
                                    return Err(CommandError::type_mismatch(format!(
                                        "Cannot apply $inc to a value of non-numeric type. The field '{path}' has non-numeric type {:?}",
                                        current.element_type()
                                    )));
                                }
                            };
                            set_path(doc, path, next)?;
                        }
                    }
                }
            }
        }
        if !inserting && old_id.is_some() && doc.get("_id") != old_id.as_ref() {
            return Err(CommandError::immutable_id());
        }
        Ok(())
    }
}

fn is_number(v: &Bson) -> bool {
    matches!(v, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_))
}

/// `$inc` arithmetic with the real server's type promotion:
/// int32+int32 → int32 (int64 on overflow), with int64 → int64, with double → double.
fn add(a: &Bson, b: &Bson) -> CmdResult<Bson> {
    let overflow = || CommandError::bad_value("integer overflow in $inc");
    Ok(match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => match x.checked_add(*y) {
            Some(v) => Bson::Int32(v),
            None => Bson::Int64(i64::from(*x) + i64::from(*y)),
        },
        (Bson::Int32(x), Bson::Int64(y)) | (Bson::Int64(y), Bson::Int32(x)) => {
            Bson::Int64(i64::from(*x).checked_add(*y).ok_or_else(overflow)?)
        }
        (Bson::Int64(x), Bson::Int64(y)) => Bson::Int64(x.checked_add(*y).ok_or_else(overflow)?),
        _ => Bson::Double(to_f64(a) + to_f64(b)),
    })
}

fn to_f64(v: &Bson) -> f64 {
    match v {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(f) => *f,
        _ => 0.0,
    }
}

/// Largest array index `$set` will pad up to; keeps a hostile path like
/// `a.999999999` from allocating gigabytes.
const MAX_PAD_INDEX: usize = 1_500_000;

fn not_viable(segment: &str, value: &Bson) -> CommandError {
    CommandError::new(
        28,
        "PathNotViable",
        format!("Cannot create field '{segment}' in element {value}"),
    )
}

/// Sets a dotted path, creating intermediate documents (and padding arrays
/// with nulls for numeric segments, like the real server).
pub fn set_path(doc: &mut Document, path: &str, value: Bson) -> CmdResult<()> {
    let segments: Vec<&str> = path.split('.').collect();
    set_in_document(doc, &segments, value)
}

fn set_in_document(doc: &mut Document, segments: &[&str], value: Bson) -> CmdResult<()> {
    let Some((head, rest)) = segments.split_first() else {
        return Ok(());
    };
    if rest.is_empty() {
        doc.insert(*head, value);
        return Ok(());
    }
    let child = doc
        .entry((*head).to_owned())
        .or_insert_with(|| Bson::Document(Document::new()));
    set_in_value(child, rest, value)
}

fn set_in_value(current: &mut Bson, segments: &[&str], value: Bson) -> CmdResult<()> {
    match current {
        Bson::Document(d) => set_in_document(d, segments, value),
        Bson::Array(items) => {
            let (head, rest) = segments
                .split_first()
                .ok_or_else(|| CommandError::internal("empty path"))?;
            let index = head
                .parse::<usize>()
                .ok()
                .filter(|i| *i <= MAX_PAD_INDEX)
                .ok_or_else(|| not_viable(head, &Bson::Array(items.clone())))?;
            if index >= items.len() {
                items.resize(index + 1, Bson::Null);
            }
            if rest.is_empty() {
                items[index] = value;
                Ok(())
            } else {
                if items[index] == Bson::Null {
                    items[index] = Bson::Document(Document::new());
                }
                set_in_value(&mut items[index], rest, value)
            }
        }
        other => Err(not_viable(
            segments.first().copied().unwrap_or_default(),
            other,
        )),
    }
}

/// Removes a dotted path; array elements are set to null rather than removed.
fn unset_path(doc: &mut Document, path: &str) {
    let segments: Vec<&str> = path.split('.').collect();
    unset_in_document(doc, &segments);
}

fn unset_in_document(doc: &mut Document, segments: &[&str]) {
    match segments {
        [] => {}
        [last] => {
            doc.remove(*last);
        }
        [head, rest @ ..] => {
            if let Some(child) = doc.get_mut(*head) {
                unset_in_value(child, rest);
            }
        }
    }
}

fn unset_in_value(value: &mut Bson, segments: &[&str]) {
    match value {
        Bson::Document(d) => unset_in_document(d, segments),
        Bson::Array(items) => {
            let Some((head, rest)) = segments.split_first() else {
                return;
            };
            let Some(item) = head.parse::<usize>().ok().and_then(|i| items.get_mut(i)) else {
                return;
            };
            if rest.is_empty() {
                *item = Bson::Null;
            } else {
                unset_in_value(item, rest);
            }
        }
        _ => {}
    }
}

/// The document an upsert inserts: equality conditions of the filter (top
/// level and inside `$and`), then the update; `_id` first, generated if absent.
pub fn upsert_document(filter: &Document, update: &UpdateSpec) -> CmdResult<Document> {
    let mut seed = Document::new();
    seed_from_filter(filter, &mut seed)?;
    let doc = match update {
        UpdateSpec::Replacement(replacement) => {
            let mut doc = replacement.clone();
            if !doc.contains_key("_id")
                && let Some(id) = seed.get("_id")
            {
                doc.insert("_id", id.clone());
            }
            doc
        }
        UpdateSpec::Operators(_) => {
            update.apply(&mut seed, true)?;
            seed
        }
    };
    Ok(crate::store::with_id_first(doc))
}

fn seed_from_filter(filter: &Document, seed: &mut Document) -> CmdResult<()> {
    for (key, value) in filter {
        if key == "$and" {
            for part in value.as_array().into_iter().flatten() {
                if let Bson::Document(d) = part {
                    seed_from_filter(d, seed)?;
                }
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                if let Some(eq) = d.get("$eq") {
                    set_path(seed, key, eq.clone())?;
                }
            }
            other => set_path(seed, key, other.clone())?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn apply(doc: Document, update: Document) -> CmdResult<Document> {
        let mut doc = doc;
        UpdateSpec::parse(&Bson::Document(update))?.apply(&mut doc, false)?;
        Ok(doc)
    }

    #[test]
    fn operators() {
        let d = doc! { "_id": 1, "n": 1, "a": { "b": 2 }, "arr": [1, 2] };
        let out = apply(
            d.clone(),
            doc! { "$set": { "a.c": "x", "arr.3": 9 }, "$inc": { "n": 2, "m": 1.5, "a.b": 5i64 }, "$unset": { "gone": "" } },
        )
        .unwrap();
        assert_eq!(
            out,
            doc! { "_id": 1, "n": 3, "a": { "b": 7i64, "c": "x" }, "arr": [1, 2, null, 9], "m": 1.5 }
        );
        let out = apply(d.clone(), doc! { "$unset": { "a.b": 1, "n": 1 } }).unwrap();
        assert_eq!(out, doc! { "_id": 1, "a": {}, "arr": [1, 2] });
        assert_eq!(
            apply(d.clone(), doc! { "$inc": { "n": i32::MAX } })
                .unwrap()
                .get("n"),
            Some(&Bson::Int64(2147483648))
        );
        assert_eq!(
            apply(d.clone(), doc! { "$set": { "_id": 2 } })
                .unwrap_err()
                .code,
            66
        );
        assert_eq!(
            apply(d.clone(), doc! { "$inc": { "a": 1 } })
                .unwrap_err()
                .code,
            14
        );
        assert_eq!(
            apply(d.clone(), doc! { "$set": { "n.x": 1 } })
                .unwrap_err()
                .code,
            28
        );
        assert_eq!(
            apply(d.clone(), doc! { "$push": { "arr": 1 } })
                .unwrap_err()
                .code,
            9
        );
        assert_eq!(
            apply(d, doc! { "x": 1 }).unwrap(),
            doc! { "_id": 1, "x": 1 }
        );
    }

    #[test]
    fn upsert_seeds_from_equalities() {
        let update = UpdateSpec::parse(&Bson::Document(
            doc! { "$set": { "b": 1 }, "$setOnInsert": { "c": 2 } },
        ))
        .unwrap();
        let doc = upsert_document(
            &doc! { "_id": 7, "a.x": { "$eq": 3 }, "z": { "$gt": 1 } },
            &update,
        )
        .unwrap();
        assert_eq!(doc, doc! { "_id": 7, "a": { "x": 3 }, "b": 1, "c": 2 });
        let doc = upsert_document(&doc! { "k": 1 }, &update).unwrap();
        assert!(doc.get_object_id("_id").is_ok());
        assert_eq!(doc.keys().next().map(String::as_str), Some("_id"));
    }
}

//! The query language: BSON ordering, filters, sort and projection.
//!
//! Simplifications versus a real `mongod` (kept deliberately small):
//! * Strings compare by their UTF-8 bytes (no collations).
//! * `Decimal128` compares numerically through an `f64` approximation.
//! * A regular expression in a filter is compared as a value, not matched;
//!   `$regex`, `$elemMatch`, `$all`, `$size`, `$type`, `$expr`, `$where`,
//!   `$text` and geo operators are rejected as unknown operators.
//! * `$gt`/`$lt`/… only compare values of the same canonical type (as the real
//!   server does), except that `MinKey`/`MaxKey` are not special-cased.
//! * Sorting on an array field uses its smallest element ascending and its
//!   largest descending, like the real server; an empty array sorts as `null`.
//! * Projections support inclusion/exclusion (dotted and nested), `_id`
//!   handling, `"$field"` references and `{$literal: v}`; no `$slice`,
//!   `$elemMatch` or positional `$`.

use std::cmp::Ordering;
use std::collections::HashMap;

use bson::{Bson, Document};

use crate::error::{CmdResult, CommandError};

/// Canonical type order used by comparisons and sorts (BSON spec / mongod):
/// MinKey < null < numbers < strings < objects < arrays < binary < ObjectId
/// < booleans < dates < timestamps < regexes < … < MaxKey.
fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn as_num(v: &Bson) -> Option<Num> {
    match v {
        Bson::Int32(i) => Some(Num::Int(i64::from(*i))),
        Bson::Int64(i) => Some(Num::Int(*i)),
        Bson::Double(f) => Some(Num::Float(*f)),
        Bson::Decimal128(d) => Some(Num::Float(d.to_string().parse().unwrap_or(f64::NAN))),
        _ => None,
    }
}

/// NaN sorts below every other number and equals itself, as in mongod.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison of an integer with a double (no rounding through `as f64`).
fn cmp_i64_f64(i: i64, f: f64) -> Ordering {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    // In range, so the cast is exact.
    match i.cmp(&(whole as i64)) {
        Ordering::Equal => cmp_f64(whole, f),
        other => other,
    }
}

fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => cmp_f64(x, y),
        (Num::Int(x), Num::Float(y)) => cmp_i64_f64(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_i64_f64(y, x).reverse(),
    }
}

/// Total order over BSON values, across types (see [`type_rank`]).
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        return cmp_num(x, y);
    }
    match (a, b) {
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => x.cmp(y),
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| compare(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            (&x.pattern, &x.options).cmp(&(&y.pattern, &y.options))
        }
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(&y.code)
            .then_with(|| compare_documents(&x.scope, &y.scope)),
        // null, undefined, MinKey, MaxKey, and opaque DBPointers.
        _ => Ordering::Equal,
    }
}

/// Documents compare element by element: type, then field name, then value.
fn compare_documents(x: &Document, y: &Document) -> Ordering {
    x.iter()
        .zip(y)
        .map(|((kx, vx), (ky, vy))| {
            type_rank(vx)
                .cmp(&type_rank(vy))
                .then_with(|| kx.cmp(ky))
                .then_with(|| compare(vx, vy))
        })
        .find(|o| o.is_ne())
        .unwrap_or_else(|| x.len().cmp(&y.len()))
}

/// Equality in the query sense: `1 == 1.0 == 1i64`.
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b).is_eq()
}

/// Value at a dotted path without array expansion (numeric segments index
/// into arrays). Used for index keys, group keys and field references.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut segments = path.split('.');
    let mut current = doc.get(segments.next()?)?;
    for segment in segments {
        current = match current {
            Bson::Document(d) => d.get(segment)?,
            Bson::Array(a) => a.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// All values a dotted path reaches, descending into arrays of documents the
/// way query matching does (`{"a.b": 1}` matches `{a: [{b: 1}]}`). `None`
/// stands for "missing", which equals `null` in queries.
fn path_values<'a>(doc: &'a Document, path: &str) -> Vec<Option<&'a Bson>> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    collect_values(doc.get(segments[0]), &segments[1..], &mut out);
    out
}

fn collect_values<'a>(value: Option<&'a Bson>, rest: &[&str], out: &mut Vec<Option<&'a Bson>>) {
    let Some((segment, tail)) = rest.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Some(Bson::Document(d)) => collect_values(d.get(*segment), tail, out),
        Some(Bson::Array(items)) => {
            let before = out.len();
            if let Some(item) = segment.parse::<usize>().ok().and_then(|i| items.get(i)) {
                collect_values(Some(item), tail, out);
            }
            for item in items {
                if let Bson::Document(d) = item {
                    collect_values(d.get(*segment), tail, out);
                }
            }
            if out.len() == before {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

/// A compiled filter document.
#[derive(Debug, Clone)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    Field(String, Cond),
}

/// A condition on the values found at one path.
#[derive(Debug, Clone)]
pub enum Cond {
    Eq(Bson),
    Ne(Bson),
    Gt(Bson),
    Gte(Bson),
    Lt(Bson),
    Lte(Bson),
    In(Vec<Bson>),
    Nin(Vec<Bson>),
    Exists(bool),
    /// `$not: {…}`: true unless all inner conditions hold.
    Not(Vec<Cond>),
}

/// Whether `value` is an operator document like `{$gt: 1}`.
fn is_operator_doc(value: &Bson) -> Option<&Document> {
    match value {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

impl Filter {
    /// Compiles a filter; errors are the real server's (`BadValue`, code 2).
    pub fn parse(filter: &Document) -> CmdResult<Filter> {
        let mut parts = Vec::new();
        for (key, value) in filter {
            match key.as_str() {
                "$and" | "$or" | "$nor" => {
                    let items = value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                        CommandError::bad_value(format!("{key} must be a nonempty array"))
                    })?;
                    let mut subs = Vec::with_capacity(items.len());
                    for item in items {
                        let doc = item.as_document().ok_or_else(|| {
                            CommandError::bad_value(format!(
                                "{key} argument's entries must be objects"
                            ))
                        })?;
                        subs.push(Filter::parse(doc)?);
                    }
                    parts.push(match key.as_str() {
                        "$and" => Filter::And(subs),
                        "$or" => Filter::Or(subs),
                        _ => Filter::Nor(subs),
                    });
                }
                "$comment" => {}
                other if other.starts_with('$') => {
                    return Err(CommandError::bad_value(format!(
                        "unknown top level operator: {other}"
                    )));
                }
                path => {
                    for cond in parse_conditions(value)? {
                        parts.push(Filter::Field(path.to_owned(), cond));
                    }
                }
            }
        }
        Ok(Filter::And(parts))
    }

    pub fn matches(&self, doc: &Document) -> bool {
        match self {
            Filter::And(subs) => subs.iter().all(|f| f.matches(doc)),
            Filter::Or(subs) => subs.iter().any(|f| f.matches(doc)),
            Filter::Nor(subs) => !subs.iter().any(|f| f.matches(doc)),
            Filter::Field(path, cond) => cond.matches(&path_values(doc, path)),
        }
    }
}

fn parse_conditions(value: &Bson) -> CmdResult<Vec<Cond>> {
    let Some(ops) = is_operator_doc(value) else {
        return Ok(vec![Cond::Eq(value.clone())]);
    };
    let mut conds = Vec::with_capacity(ops.len());
    for (op, arg) in ops {
        let list = || -> CmdResult<Vec<Bson>> {
            arg.as_array()
                .cloned()
                .ok_or_else(|| CommandError::bad_value(format!("{op} needs an array")))
        };
        conds.push(match op.as_str() {
            "$eq" => Cond::Eq(arg.clone()),
            "$ne" => Cond::Ne(arg.clone()),
            "$gt" => Cond::Gt(arg.clone()),
            "$gte" => Cond::Gte(arg.clone()),
            "$lt" => Cond::Lt(arg.clone()),
            "$lte" => Cond::Lte(arg.clone()),
            "$in" => Cond::In(list()?),
            "$nin" => Cond::Nin(list()?),
            "$exists" => Cond::Exists(truthy(arg)),
            "$not" => match is_operator_doc(arg) {
                Some(_) => Cond::Not(parse_conditions(arg)?),
                None => return Err(CommandError::bad_value("$not needs a document")),
            },
            other => {
                return Err(CommandError::bad_value(format!(
                    "unknown operator: {other}"
                )));
            }
        });
    }
    Ok(conds)
}

/// Truthiness of an option value: `false`, `0` and `null` are false.
pub fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(f) => *f != 0.0,
        Bson::Null | Bson::Undefined => false,
        _ => true,
    }
}

impl Cond {
    fn matches(&self, values: &[Option<&Bson>]) -> bool {
        use Ordering::{Equal, Greater, Less};
        let any = |pred: &dyn Fn(Option<&Bson>) -> bool| values.iter().any(|v| pred(*v));
        match self {
            Cond::Eq(x) => any(&|v| eq_match(v, x)),
            Cond::Ne(x) => !any(&|v| eq_match(v, x)),
            Cond::Gt(x) => any(&|v| cmp_match(v, x, &[Greater])),
            Cond::Gte(x) => any(&|v| cmp_match(v, x, &[Greater, Equal])),
            Cond::Lt(x) => any(&|v| cmp_match(v, x, &[Less])),
            Cond::Lte(x) => any(&|v| cmp_match(v, x, &[Less, Equal])),
            Cond::In(xs) => xs.iter().any(|x| any(&|v| eq_match(v, x))),
            Cond::Nin(xs) => !xs.iter().any(|x| any(&|v| eq_match(v, x))),
            Cond::Exists(want) => any(&|v| v.is_some()) == *want,
            Cond::Not(conds) => !conds.iter().all(|c| c.matches(values)),
        }
    }
}

/// Equality against one found value: arrays match as a whole or by element;
/// a missing value equals `null`.
fn eq_match(value: Option<&Bson>, x: &Bson) -> bool {
    match value {
        None => matches!(x, Bson::Null),
        Some(v @ Bson::Array(items)) => {
            values_equal(v, x) || items.iter().any(|e| values_equal(e, x))
        }
        Some(v) => values_equal(v, x),
    }
}

/// Range comparison: only values of the same canonical type as `x` qualify.
fn cmp_match(value: Option<&Bson>, x: &Bson, accept: &[Ordering]) -> bool {
    let check = |v: &Bson| type_rank(v) == type_rank(x) && accept.contains(&compare(v, x));
    match value {
        None => matches!(x, Bson::Null) && accept.contains(&Ordering::Equal),
        Some(v @ Bson::Array(items)) => check(v) || items.iter().any(check),
        Some(v) => check(v),
    }
}

/// A parsed sort specification: `(path, ascending)` pairs.
pub type SortSpec = Vec<(String, bool)>;

pub fn parse_sort(spec: &Document) -> CmdResult<SortSpec> {
    spec.iter()
        .map(|(path, dir)| {
            let ascending = match dir {
                Bson::Int32(1) | Bson::Int64(1) => true,
                Bson::Double(f) if *f == 1.0 => true,
                Bson::Int32(-1) | Bson::Int64(-1) => false,
                Bson::Double(f) if *f == -1.0 => false,
                _ => {
                    return Err(CommandError::new(
                        15975,
                        "Location15975",
                        "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                    ));
                }
            };
            Ok((path.clone(), ascending))
        })
        .collect()
}

/// The value a document sorts by for one key (min/max element for arrays).
fn sort_value(doc: &Document, path: &str, ascending: bool) -> Bson {
    let mut flat: Vec<&Bson> = Vec::new();
    for value in path_values(doc, path).into_iter().flatten() {
        match value {
            Bson::Array(items) => flat.extend(items),
            other => flat.push(other),
        }
    }
    let pick = if ascending {
        flat.into_iter().min_by(|a, b| compare(a, b))
    } else {
        flat.into_iter().max_by(|a, b| compare(a, b))
    };
    pick.cloned().unwrap_or(Bson::Null)
}

/// Stable sort of `items` by `spec`, reading each item's document via `doc_of`.
pub fn sort_by_spec<T>(items: Vec<T>, spec: &SortSpec, doc_of: impl Fn(&T) -> &Document) -> Vec<T> {
    if spec.is_empty() {
        return items;
    }
    let mut keyed: Vec<(Vec<Bson>, T)> = items
        .into_iter()
        .map(|item| {
            let doc = doc_of(&item);
            let key = spec
                .iter()
                .map(|(p, asc)| sort_value(doc, p, *asc))
                .collect();
            (key, item)
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        a.iter()
            .zip(b)
            .zip(spec)
            .map(|((x, y), (_, asc))| {
                let o = compare(x, y);
                if *asc { o } else { o.reverse() }
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    keyed.into_iter().map(|(_, item)| item).collect()
}

/// One node of a projection tree.
#[derive(Debug, Clone)]
enum Spec {
    /// Include (`true`) or exclude (`false`) the whole field.
    Flag(bool),
    /// A computed value: `"$path"` reference or `{$literal: v}`/constant.
    Value(Bson),
    Children(HashMap<String, Spec>),
}

/// A compiled projection.
#[derive(Debug, Clone)]
pub struct Projection {
    inclusion: bool,
    include_id: bool,
    /// The `_id` node when it is more than a flag (computed or nested).
    id_spec: Option<Spec>,
    fields: HashMap<String, Spec>,
}

impl Projection {
    pub fn parse(spec: &Document) -> CmdResult<Projection> {
        let mut fields = HashMap::new();
        let mut include_id = true;
        let mut id_spec = None;
        let (mut includes, mut excludes) = (None::<String>, None::<String>);
        let mut pending: Vec<(String, Spec)> = Vec::new();
        flatten_projection("", spec, &mut pending)?;
        for (path, node) in pending {
            if path == "_id" {
                match node {
                    Spec::Flag(b) => include_id = b,
                    other => id_spec = Some(other),
                }
                continue;
            }
            match node {
                Spec::Flag(false) => excludes = Some(path.clone()),
                _ => includes = Some(path.clone()),
            }
            insert_spec(&mut fields, &path, node)?;
        }
        if let (Some(_), Some(excluded)) = (&includes, &excludes) {
            return Err(CommandError::new(
                31254,
                "Location31254",
                format!("Cannot do exclusion on field {excluded} in inclusion projection"),
            ));
        }
        // `{_id: 0}` alone is an exclusion; `{_id: 1}` alone an inclusion.
        let inclusion = includes.is_some()
            || (excludes.is_none() && (include_id || id_spec.is_some()) && !spec.is_empty());
        Ok(Projection {
            inclusion,
            include_id,
            id_spec,
            fields,
        })
    }

    pub fn apply(&self, doc: &Document) -> Document {
        let mut out = Document::new();
        if let Some(spec) = &self.id_spec {
            if let Some(v) = project_value(doc.get("_id"), spec, doc) {
                out.insert("_id", v);
            }
        } else if self.include_id
            && let Some(id) = doc.get("_id")
        {
            out.insert("_id", id.clone());
        }
        if self.inclusion {
            include_into(&mut out, doc, &self.fields, doc);
        } else {
            for (k, v) in doc {
                if k == "_id" {
                    continue;
                }
                match self.fields.get(k) {
                    Some(Spec::Flag(false)) => {}
                    Some(spec @ Spec::Children(_)) => {
                        if let Some(v) = project_value(Some(v), spec, doc) {
                            out.insert(k.clone(), v);
                        }
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        out
    }
}

/// Turns `{a: {b: 1}, "c.d": 0}` into `[("a.b", Flag(true)), ("c.d", Flag(false))]`.
fn flatten_projection(
    prefix: &str,
    spec: &Document,
    out: &mut Vec<(String, Spec)>,
) -> CmdResult<()> {
    for (key, value) in spec {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let node = match value {
            Bson::Boolean(b) => Spec::Flag(*b),
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => Spec::Flag(truthy(value)),
            Bson::Document(d) if d.len() == 1 && d.contains_key("$literal") => {
                Spec::Value(d.get("$literal").cloned().unwrap_or(Bson::Null))
            }
            Bson::Document(d) if is_operator_doc(value).is_some() => {
                let op = d.keys().next().map(String::as_str).unwrap_or_default();
                return Err(CommandError::bad_value(format!(
                    "projection operator {op} is not supported by mongo-wire"
                )));
            }
            Bson::Document(d) => {
                flatten_projection(&path, d, out)?;
                continue;
            }
            other => Spec::Value(other.clone()),
        };
        out.push((path, node));
    }
    Ok(())
}

fn insert_spec(tree: &mut HashMap<String, Spec>, path: &str, node: Spec) -> CmdResult<()> {
    let collision =
        || CommandError::new(31250, "Location31250", format!("Path collision at {path}"));
    match path.split_once('.') {
        None => {
            if tree.contains_key(path) {
                return Err(collision());
            }
            tree.insert(path.to_owned(), node);
        }
        Some((head, rest)) => {
            let child = tree
                .entry(head.to_owned())
                .or_insert_with(|| Spec::Children(HashMap::new()));
            match child {
                Spec::Children(sub) => insert_spec(sub, rest, node)?,
                _ => return Err(collision()),
            }
        }
    }
    Ok(())
}

/// Copies the included fields of `doc` (in document order), then adds
/// computed fields that were not present.
fn include_into(out: &mut Document, doc: &Document, tree: &HashMap<String, Spec>, root: &Document) {
    for (k, v) in doc {
        if k == "_id" && out.contains_key("_id") {
            continue;
        }
        if let Some(spec) = tree.get(k)
            && let Some(v) = project_value(Some(v), spec, root)
        {
            out.insert(k.clone(), v);
        }
    }
    for (k, spec) in tree {
        if !out.contains_key(k)
            && let Spec::Value(_) = spec
            && let Some(v) = project_value(None, spec, root)
        {
            out.insert(k.clone(), v);
        }
    }
}

fn project_value(value: Option<&Bson>, spec: &Spec, root: &Document) -> Option<Bson> {
    match spec {
        Spec::Flag(true) => value.cloned(),
        Spec::Flag(false) => None,
        Spec::Value(Bson::String(s)) if s.starts_with('$') => get_path(root, &s[1..]).cloned(),
        Spec::Value(v) => Some(v.clone()),
        Spec::Children(sub) => {
            let inclusion = subtree_is_inclusion(sub);
            let apply = |d: &Document| {
                let mut out = Document::new();
                if inclusion {
                    include_into(&mut out, d, sub, root);
                } else {
                    for (k, v) in d {
                        match sub.get(k) {
                            Some(Spec::Flag(false)) => {}
                            Some(s @ Spec::Children(_)) => {
                                if let Some(v) = project_value(Some(v), s, root) {
                                    out.insert(k.clone(), v);
                                }
                            }
                            _ => {
                                out.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                out
            };
            match value {
                Some(Bson::Document(d)) => Some(Bson::Document(apply(d))),
                Some(Bson::Array(items)) => Some(Bson::Array(
                    items
                        .iter()
                        .filter_map(|item| match item {
                            Bson::Document(d) => Some(Bson::Document(apply(d))),
                            other if !inclusion => Some(other.clone()),
                            _ => None,
                        })
                        .collect(),
                )),
                Some(other) if !inclusion => Some(other.clone()),
                _ => None,
            }
        }
    }
}

fn subtree_is_inclusion(tree: &HashMap<String, Spec>) -> bool {
    tree.values().any(|s| match s {
        Spec::Flag(b) => *b,
        Spec::Value(_) => true,
        Spec::Children(sub) => subtree_is_inclusion(sub),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    fn matches(filter: Document, doc: Document) -> bool {
        Filter::parse(&filter).unwrap().matches(&doc)
    }

    #[test]
    fn numbers_compare_across_types() {
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(1), &Bson::Int32(1)));
        assert_eq!(
            compare(&Bson::Int64(i64::MAX), &Bson::Double(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            compare(&Bson::Int32(2), &Bson::Double(1.5)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&Bson::Double(f64::NAN), &Bson::Int32(i32::MIN)),
            Ordering::Less
        );
        assert_eq!(compare(&Bson::Null, &Bson::Int32(0)), Ordering::Less);
        assert_eq!(
            compare(&Bson::String("a".into()), &Bson::ObjectId(ObjectId::new())),
            Ordering::Less
        );
        assert_eq!(
            compare(&Bson::Boolean(true), &Bson::DateTime(bson::DateTime::now())),
            Ordering::Less
        );
    }

    #[test]
    fn filters() {
        let d = doc! { "a": 5, "b": { "c": [1, 2, 3] }, "tags": ["x", "y"], "n": null, "arr": [{ "k": 1 }, { "k": 2 }] };
        assert!(matches(doc! { "a": 5.0 }, d.clone()));
        assert!(matches(doc! { "b.c": 2 }, d.clone()));
        assert!(matches(doc! { "b.c.1": 2 }, d.clone()));
        assert!(matches(doc! { "arr.k": 2 }, d.clone()));
        assert!(matches(doc! { "tags": "y" }, d.clone()));
        assert!(matches(doc! { "tags": ["x", "y"] }, d.clone()));
        assert!(matches(doc! { "missing": null }, d.clone()));
        assert!(matches(doc! { "n": null }, d.clone()));
        assert!(matches(doc! { "a": { "$gt": 4, "$lte": 5i64 } }, d.clone()));
        assert!(!matches(doc! { "a": { "$gt": "4" } }, d.clone()));
        assert!(matches(
            doc! { "a": { "$in": [1, 5] }, "tags": { "$nin": ["z"] } },
            d.clone()
        ));
        assert!(matches(
            doc! { "missing": { "$exists": false }, "n": { "$exists": true } },
            d.clone()
        ));
        assert!(matches(
            doc! { "$or": [{ "a": 1 }, { "b.c": { "$gte": 3 } }] },
            d.clone()
        ));
        assert!(matches(doc! { "$nor": [{ "a": 1 }] }, d.clone()));
        assert!(matches(doc! { "a": { "$not": { "$lt": 5 } } }, d.clone()));
        assert!(matches(doc! { "tags": { "$ne": "z" } }, d.clone()));
        assert!(!matches(doc! { "tags": { "$ne": "x" } }, d.clone()));
        assert!(Filter::parse(&doc! { "a": { "$regex": "x" } }).is_err());
        assert!(Filter::parse(&doc! { "$where": "1" }).is_err());
        assert!(Filter::parse(&doc! { "$and": [] }).is_err());
    }

    #[test]
    fn sort_uses_cross_type_order() {
        let docs = vec![
            doc! { "v": 2.5 },
            doc! { "v": "s" },
            doc! { "v": 1i64 },
            doc! {},
            doc! { "v": 3 },
            doc! { "v": [10, 0] },
        ];
        let spec = parse_sort(&doc! { "v": 1 }).unwrap();
        let sorted = sort_by_spec(docs, &spec, |d| d);
        let shown: Vec<String> = sorted.iter().map(|d| format!("{d}")).collect();
        assert_eq!(
            shown,
            [
                "{}",
                "{ \"v\": [10, 0] }",
                "{ \"v\": 1 }",
                "{ \"v\": 2.5 }",
                "{ \"v\": 3 }",
                "{ \"v\": \"s\" }"
            ]
        );
    }

    #[test]
    fn projections() {
        let d = doc! { "_id": 1, "a": 1, "b": { "c": 2, "d": 3 }, "e": [{ "f": 1, "g": 2 }] };
        let p = |s: Document| Projection::parse(&s).unwrap().apply(&d);
        assert_eq!(p(doc! { "a": 1 }), doc! { "_id": 1, "a": 1 });
        assert_eq!(p(doc! { "a": 1, "_id": 0 }), doc! { "a": 1 });
        assert_eq!(
            p(doc! { "_id": 0 }),
            doc! { "a": 1, "b": { "c": 2, "d": 3 }, "e": [{ "f": 1, "g": 2 }] }
        );
        assert_eq!(
            p(doc! { "b.c": 1, "e.g": 1 }),
            doc! { "_id": 1, "b": { "c": 2 }, "e": [{ "g": 2 }] }
        );
        assert_eq!(
            p(doc! { "b": { "d": 0 }, "a": 0 }),
            doc! { "_id": 1, "b": { "c": 2 }, "e": [{ "f": 1, "g": 2 }] }
        );
        assert_eq!(p(doc! { "x": "$b.c", "_id": 0 }), doc! { "x": 2 });
        assert!(Projection::parse(&doc! { "a": 1, "b": 0 }).is_err());
        assert!(Projection::parse(&doc! { "a": 1, "a.b": 1 }).is_err());
    }
}

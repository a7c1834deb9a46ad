//! A small aggregation pipeline: `$match`, `$sort`, `$skip`, `$limit`,
//! `$project`, `$count` and `$group`.
//!
//! `$group` takes an `_id` that is a constant, a `"$field"` reference or a
//! document of those, and the accumulators `$sum`, `$avg`, `$min`, `$max`,
//! `$first`, `$last`, `$push` and `$count`; accumulator arguments are a
//! constant or a `"$field"` reference (no general expression language).
//! Groups come out in order of first appearance.

use bson::{Bson, Document};

use crate::error::{CmdResult, CommandError};
use crate::query::{Filter, Projection, compare, get_path, parse_sort, sort_by_spec, values_equal};

fn non_negative(stage: &str, v: &Bson) -> CmdResult<usize> {
    let n = match v {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(f) if f.fract() == 0.0 => *f as i64,
        _ => -1,
    };
    usize::try_from(n)
        .map_err(|_| CommandError::bad_value(format!("invalid argument to {stage} stage: {v}")))
}

/// Runs `pipeline` over `docs`.
pub fn run(mut docs: Vec<Document>, pipeline: &[Document]) -> CmdResult<Vec<Document>> {
    for stage in pipeline {
        let mut entries = stage.iter();
        let (Some((name, arg)), None) = (entries.next(), entries.next()) else {
            return Err(CommandError::new(
                40323,
                "Location40323",
                "A pipeline stage specification object must contain exactly one field.",
            ));
        };
        let arg_doc = || {
            arg.as_document().ok_or_else(|| {
                CommandError::type_mismatch(format!("{name} stage argument must be an object"))
            })
        };
        docs = match name.as_str() {
            "$match" => {
                let filter = Filter::parse(arg_doc()?)?;
                docs.into_iter().filter(|d| filter.matches(d)).collect()
            }
            "$sort" => sort_by_spec(docs, &parse_sort(arg_doc()?)?, |d| d),
            "$skip" => docs.into_iter().skip(non_negative(name, arg)?).collect(),
            "$limit" => docs.into_iter().take(non_negative(name, arg)?).collect(),
            "$project" => {
                let projection = Projection::parse(arg_doc()?)?;
                docs.iter().map(|d| projection.apply(d)).collect()
            }
            "$count" => {
                let field = arg
                    .as_str()
                    .filter(|s| !s.is_empty() && !s.starts_with('$') && !s.contains('.'))
                    .ok_or_else(|| {
                        CommandError::bad_value("the count field must be a non-empty string")
                    })?;
                let n = i32::try_from(docs.len()).unwrap_or(i32::MAX);
                if docs.is_empty() {
                    Vec::new()
                } else {
                    let mut out = Document::new();
                    out.insert(field, n);
                    vec![out]
                }
            }
            "$group" => group(docs, arg_doc()?)?,
            other => {
                return Err(CommandError::new(
                    40324,
                    "Location40324",
                    format!("Unrecognized pipeline stage name: '{other}'"),
                ));
            }
        };
    }
    Ok(docs)
}

/// Evaluates a constant, `"$path"` reference or document of those against
/// `doc`. `None` means "missing".
fn eval(expr: &Bson, doc: &Document) -> CmdResult<Option<Bson>> {
    Ok(match expr {
        Bson::String(s) if s.starts_with("$$") => {
            return Err(CommandError::bad_value(format!(
                "variables like {s} are not supported by mongo-wire"
            )));
        }
        Bson::String(s) if s.starts_with('$') => get_path(doc, &s[1..]).cloned(),
        Bson::Document(d) if d.len() == 1 && d.contains_key("$literal") => {
            d.get("$literal").cloned()
        }
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let op = d.keys().next().cloned().unwrap_or_default();
            return Err(CommandError::bad_value(format!(
                "expression {op} is not supported by mongo-wire"
            )));
        }
        Bson::Document(d) => {
            let mut out = Document::new();
            for (k, v) in d {
                if let Some(v) = eval(v, doc)? {
                    out.insert(k.clone(), v);
                }
            }
            Some(Bson::Document(out))
        }
        other => Some(other.clone()),
    })
}

#[derive(Debug, Clone, Copy)]
enum AccKind {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
}

/// Running state of one accumulator in one group.
#[derive(Debug, Clone, Default)]
struct Acc {
    int: i64,
    float: f64,
    saw_float: bool,
    saw_long: bool,
    overflowed: bool,
    count: u64,
    value: Option<Bson>,
    seen_first: bool,
    items: Vec<Bson>,
}

impl Acc {
    fn add_number(&mut self, v: &Bson) {
        match v {
            Bson::Int32(i) => self.add_int(i64::from(*i)),
            Bson::Int64(i) => {
                self.saw_long = true;
                self.add_int(*i);
            }
            Bson::Double(f) => {
                self.saw_float = true;
                self.float += f;
            }
            _ => return,
        }
        self.count += 1;
    }

    fn add_int(&mut self, i: i64) {
        match self.int.checked_add(i) {
            Some(sum) => self.int = sum,
            None => {
                self.overflowed = true;
                self.float += i as f64;
            }
        }
    }

    fn update(&mut self, kind: AccKind, value: Option<Bson>) {
        match kind {
            AccKind::Sum | AccKind::Avg => {
                if let Some(v) = &value {
                    self.add_number(v);
                }
            }
            AccKind::Min | AccKind::Max => {
                let Some(v) = value.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) else {
                    return;
                };
                let replace = match &self.value {
                    None => true,
                    Some(current) => {
                        let o = compare(&v, current);
                        if matches!(kind, AccKind::Min) {
                            o.is_lt()
                        } else {
                            o.is_gt()
                        }
                    }
                };
                if replace {
                    self.value = Some(v);
                }
            }
            AccKind::First => {
                if !self.seen_first {
                    self.seen_first = true;
                    self.value = Some(value.unwrap_or(Bson::Null));
                }
            }
            AccKind::Last => self.value = Some(value.unwrap_or(Bson::Null)),
            AccKind::Push => self.items.extend(value),
        }
    }

    /// `$sum` result type follows the inputs: int32 if it fits and all inputs
    /// were int32, int64 for longs, double once a double (or overflow) appears.
    fn sum(&self) -> Bson {
        if self.saw_float || self.overflowed {
            Bson::Double(self.int as f64 + self.float)
        } else if let (false, Ok(i)) = (self.saw_long, i32::try_from(self.int)) {
            Bson::Int32(i)
        } else {
            Bson::Int64(self.int)
        }
    }

    fn finish(self, kind: AccKind) -> Bson {
        match kind {
            AccKind::Sum => self.sum(),
            AccKind::Avg if self.count == 0 => Bson::Null,
            AccKind::Avg => Bson::Double((self.int as f64 + self.float) / self.count as f64),
            AccKind::Min | AccKind::Max | AccKind::First | AccKind::Last => {
                self.value.unwrap_or(Bson::Null)
            }
            AccKind::Push => Bson::Array(self.items),
        }
    }
}

fn group(docs: Vec<Document>, spec: &Document) -> CmdResult<Vec<Document>> {
    let id_expr = spec.get("_id").ok_or_else(|| {
        CommandError::new(
            15955,
            "Location15955",
            "a group specification must include an _id",
        )
    })?;
    let mut accumulators: Vec<(String, AccKind, Bson)> = Vec::new();
    for (field, acc) in spec.iter().filter(|(k, _)| k.as_str() != "_id") {
        let invalid = || {
            CommandError::new(
                40234,
                "Location40234",
                format!("The field '{field}' must be an accumulator object"),
            )
        };
        let acc = acc
            .as_document()
            .filter(|d| d.len() == 1)
            .ok_or_else(invalid)?;
        let Some((op, arg)) = acc.iter().next() else {
            return Err(invalid());
        };
        let (kind, arg) = match op.as_str() {
            "$sum" => (AccKind::Sum, arg.clone()),
            "$count" => (AccKind::Sum, Bson::Int32(1)),
            "$avg" => (AccKind::Avg, arg.clone()),
            "$min" => (AccKind::Min, arg.clone()),
            "$max" => (AccKind::Max, arg.clone()),
            "$first" => (AccKind::First, arg.clone()),
            "$last" => (AccKind::Last, arg.clone()),
            "$push" => (AccKind::Push, arg.clone()),
            other => {
                return Err(CommandError::new(
                    15952,
                    "Location15952",
                    format!("unknown group operator '{other}'"),
                ));
            }
        };
        accumulators.push((field.clone(), kind, arg));
    }

    let mut groups: Vec<(Bson, Vec<Acc>)> = Vec::new();
    for doc in &docs {
        let key = eval(id_expr, doc)?.unwrap_or(Bson::Null);
        let position = match groups.iter().position(|(k, _)| values_equal(k, &key)) {
            Some(p) => p,
            None => {
                groups.push((key, vec![Acc::default(); accumulators.len()]));
                groups.len() - 1
            }
        };
        for ((_, kind, arg), acc) in accumulators.iter().zip(groups[position].1.iter_mut()) {
            acc.update(*kind, eval(arg, doc)?);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(key, accs)| {
            let mut out = Document::new();
            out.insert("_id", key);
            for ((field, kind, _), acc) in accumulators.iter().zip(accs) {
                out.insert(field.clone(), acc.finish(*kind));
            }
            out
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn count_documents_pipeline() {
        let docs = vec![doc! { "a": 1 }, doc! { "a": 2 }, doc! { "a": 3 }];
        let pipeline = vec![
            doc! { "$match": { "a": { "$gte": 2 } } },
            doc! { "$skip": 0i64 },
            doc! { "$group": { "_id": 1, "n": { "$sum": 1 } } },
        ];
        assert_eq!(
            run(docs, &pipeline).unwrap(),
            vec![doc! { "_id": 1, "n": 2 }]
        );
    }

    #[test]
    fn group_by_field() {
        let docs = vec![
            doc! { "k": "x", "v": 1 },
            doc! { "k": "y", "v": 2.5 },
            doc! { "k": "x", "v": 3i64 },
        ];
        let out = run(
            docs,
            &[
                doc! { "$group": { "_id": "$k", "total": { "$sum": "$v" }, "max": { "$max": "$v" }, "all": { "$push": "$v" }, "avg": { "$avg": "$v" } } },
                doc! { "$sort": { "_id": -1 } },
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                doc! { "_id": "y", "total": 2.5, "max": 2.5, "all": [2.5], "avg": 2.5 },
                doc! { "_id": "x", "total": 4i64, "max": 3i64, "all": [1, 3i64], "avg": 2.0 },
            ]
        );
        assert_eq!(
            run(vec![doc! {}], &[doc! { "$bogus": {} }])
                .unwrap_err()
                .code,
            40324
        );
    }
}

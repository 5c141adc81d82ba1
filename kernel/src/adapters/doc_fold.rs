//! Folding a batch's document ops in memory, so a read store writes each touched document
//! once per batch instead of running one statement per op.
//!
//! A batch of events touches the same documents many times (a caretaker's counters move
//! with every memento of it). [`Fold`] collects the ops per document in order, says which
//! documents it must read first (those whose first op needs the stored body), and then
//! computes each document's final state with the same semantics the SQL translation has:
//! `Merge` and `Increment` set dotted paths the way SQLite's `json_set` does (missing parent
//! objects are created, a non-object parent leaves the document as it is), increments keep
//! whole numbers integral, and `Merge`/`Increment` never create a document.
//!
//! Set-wise ops (`DeleteWhere`, `TombstoneWhere`) match documents by content, so they are
//! not folded: the caller writes what is folded so far, runs them, and starts a new fold.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::{KernelError, KernelResult};
use crate::ports::DocOp;

/// A document's (collection, id).
pub type DocKey = (String, String);

/// The ops of one document, in order.
#[derive(Debug)]
struct Pending<'a> {
    collection: String,
    id: &'a str,
    ops: Vec<&'a DocOp>,
}

impl Pending<'_> {
    /// Where the last op that replaces or removes the document whole is: nothing before it
    /// changes the result.
    fn last_whole(&self) -> Option<usize> {
        self.ops
            .iter()
            .rposition(|op| matches!(op, DocOp::Upsert { .. } | DocOp::Delete { .. }))
    }

    /// Whether the folded result depends on the stored body.
    fn needs_base(&self) -> bool {
        self.last_whole().is_none()
    }
}

/// What a fold leaves to write for one document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocWrite {
    /// Store this body (serialized JSON), replacing any stored one.
    Put {
        collection: String,
        id: String,
        body: String,
    },
    /// Remove the document if it exists.
    Remove { collection: String, id: String },
}

/// The per-document ops of a batch, in the order they were pushed.
#[derive(Debug, Default)]
pub struct Fold<'a> {
    /// Collection, then id: where each document's ops are in `docs`.
    index: HashMap<String, HashMap<&'a str, usize>>,
    docs: Vec<Pending<'a>>,
}

impl<'a> Fold<'a> {
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Queues a document op (not a set-wise one) against `collection` (the physical name).
    pub fn push(&mut self, collection: &str, id: &'a str, op: &'a DocOp) {
        let Fold { index, docs } = self;
        let ids = match index.get_mut(collection) {
            Some(ids) => ids,
            None => index.entry(collection.to_string()).or_default(),
        };
        let at = *ids.entry(id).or_insert_with(|| {
            docs.push(Pending {
                collection: collection.to_string(),
                id,
                ops: Vec::new(),
            });
            docs.len() - 1
        });
        docs[at].ops.push(op);
    }

    /// The documents whose stored body the fold needs, by collection.
    pub fn bases_needed(&self) -> HashMap<&str, Vec<&'a str>> {
        let mut needed: HashMap<&str, Vec<&'a str>> = HashMap::new();
        for doc in self.docs.iter().filter(|doc| doc.needs_base()) {
            needed.entry(&doc.collection).or_default().push(doc.id);
        }
        needed
    }

    /// Applies every document's ops to its stored body (`bases`: the bodies read for
    /// [`bases_needed`](Self::bases_needed); a needed one missing from it does not exist)
    /// and returns what to write, one entry per document. Nothing is written for a document
    /// that was absent and stays absent.
    pub fn finish(self, mut bases: HashMap<DocKey, Value>) -> KernelResult<Vec<DocWrite>> {
        let mut writes = Vec::with_capacity(self.docs.len());
        for doc in self.docs {
            let whole = doc.last_whole();
            let (overwritten, live) = doc.ops.split_at(whole.unwrap_or(0));
            // They change nothing, but a bad one still fails the batch, as it would alone.
            for op in overwritten {
                check(op)?;
            }
            let id = doc.id.to_string();
            let write = match live {
                // Replaced whole and left alone after: written straight from the op.
                [DocOp::Upsert { doc: body, .. }] => Some(DocWrite::Put {
                    collection: doc.collection,
                    id,
                    body: serde_json::to_string(body)?,
                }),
                [DocOp::Delete { .. }] => Some(DocWrite::Remove {
                    collection: doc.collection,
                    id,
                }),
                _ => {
                    let mut state = match whole {
                        None => bases.remove(&(doc.collection.clone(), id.clone())),
                        Some(_) => None,
                    };
                    let existed = state.is_some();
                    for op in live {
                        apply(&mut state, op)?;
                    }
                    match state {
                        Some(body) => Some(DocWrite::Put {
                            collection: doc.collection,
                            id,
                            body: serde_json::to_string(&body)?,
                        }),
                        // Known absent before and after: nothing to do.
                        None if whole.is_none() && !existed => None,
                        None => Some(DocWrite::Remove {
                            collection: doc.collection,
                            id,
                        }),
                    }
                }
            };
            writes.extend(write);
        }
        Ok(writes)
    }
}

/// Checks an op's input (field names, the merge patch, the increment) without applying it:
/// what makes an op fail whether or not its document exists.
fn check(op: &DocOp) -> KernelResult<()> {
    match op {
        DocOp::Merge { patch, .. } => {
            let Some(fields) = patch.as_object() else {
                return Err(KernelError::Storage(
                    "a merge patch must be an object".into(),
                ));
            };
            fields.keys().try_for_each(|field| check_path(field))
        }
        DocOp::Increment { field, by, .. } => {
            check_path(field)?;
            if by.is_finite() {
                Ok(())
            } else {
                Err(KernelError::Storage(format!(
                    "cannot increment `{field}` by {by}"
                )))
            }
        }
        DocOp::Upsert { .. } | DocOp::InsertIfAbsent { .. } | DocOp::Delete { .. } => Ok(()),
        DocOp::DeleteWhere { .. } | DocOp::TombstoneWhere { .. } => Err(KernelError::Storage(
            "set-wise ops are not folded per document".into(),
        )),
    }
}

/// Applies one document op to a document's state (`None`: absent). Set-wise ops are an error:
/// they are not folded.
pub fn apply(state: &mut Option<Value>, op: &DocOp) -> KernelResult<()> {
    check(op)?;
    match op {
        DocOp::Upsert { doc, .. } => *state = Some(doc.clone()),
        DocOp::InsertIfAbsent { doc, .. } => {
            if state.is_none() {
                *state = Some(doc.clone());
            }
        }
        DocOp::Merge { patch, .. } => {
            if let (Some(body), Some(fields)) = (state, patch.as_object()) {
                for (field, value) in fields {
                    set_path(body, field, |_| Some(value.clone()));
                }
            }
        }
        DocOp::Increment { field, by, .. } => {
            if let Some(body) = state {
                let mut failed = None;
                set_path(body, field, |current| match add(current, *by) {
                    Ok(sum) => Some(sum),
                    Err(err) => {
                        failed = Some(err);
                        None
                    }
                });
                if let Some(err) = failed {
                    return Err(err);
                }
            }
        }
        DocOp::Delete { .. } => *state = None,
        // Refused by `check`.
        DocOp::DeleteWhere { .. } | DocOp::TombstoneWhere { .. } => {}
    }
    Ok(())
}

/// Whether an op matches documents by content (and so cannot be folded per document).
pub fn is_set_wise(op: &DocOp) -> bool {
    matches!(op, DocOp::DeleteWhere { .. } | DocOp::TombstoneWhere { .. })
}

/// The (collection, id) a per-document op targets; `None` for set-wise ops.
pub fn target_of(op: &DocOp) -> Option<(&str, &str)> {
    match op {
        DocOp::Upsert { collection, id, .. }
        | DocOp::InsertIfAbsent { collection, id, .. }
        | DocOp::Merge { collection, id, .. }
        | DocOp::Increment { collection, id, .. }
        | DocOp::Delete { collection, id } => Some((collection, id)),
        DocOp::DeleteWhere { .. } | DocOp::TombstoneWhere { .. } => None,
    }
}

/// Checks a read-model field name: a dotted path such as `by_type.document`, of
/// `[A-Za-z0-9_]` segments separated by single dots.
pub fn check_path(field: &str) -> KernelResult<()> {
    let valid = field.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if valid {
        Ok(())
    } else {
        Err(KernelError::Storage(format!(
            "invalid read-model field name `{field}`: only [A-Za-z0-9_] segments joined by dots"
        )))
    }
}

/// Sets the value at the dotted `path` to what `value` makes of the current one (`None`:
/// leave it), creating missing parent objects; a parent that exists and is not an object (or
/// a body that is not one) leaves the document unchanged, as `json_set` does.
fn set_path(body: &mut Value, path: &str, value: impl FnOnce(Option<&Value>) -> Option<Value>) {
    let (parents, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, path),
    };
    let mut node = body;
    for segment in parents.into_iter().flat_map(|parents| parents.split('.')) {
        let Value::Object(map) = node else {
            return;
        };
        // Look up first: the entry API would allocate the key every time.
        if !map.contains_key(segment) {
            map.insert(segment.to_string(), Value::Object(Map::new()));
        }
        node = match map.get_mut(segment) {
            Some(child) => child,
            None => return,
        };
    }
    let Value::Object(map) = node else {
        return;
    };
    if let Some(new) = value(map.get(last)) {
        match map.get_mut(last) {
            Some(slot) => *slot = new,
            None => {
                map.insert(last.to_string(), new);
            }
        }
    }
}

/// `current + by`: a missing or non-numeric current counts as 0; whole steps on integers stay
/// integers (past `i64` they become floats, as SQLite's arithmetic does).
fn add(current: Option<&Value>, by: f64) -> KernelResult<Value> {
    // 2^53: whole steps below it are exact as integers.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let whole_step = by.fract() == 0.0 && by.abs() < EXACT;
    let current = match current {
        Some(Value::Number(n)) => Some(n),
        _ => None,
    };
    if whole_step {
        let base = match current {
            None => Some(0),
            Some(n) => n.as_i64(),
        };
        if let Some(sum) = base.and_then(|base| base.checked_add(by as i64)) {
            return Ok(Value::from(sum));
        }
    }
    let base = current.and_then(|n| n.as_f64()).unwrap_or(0.0);
    let sum = base + by;
    serde_json::Number::from_f64(sum)
        .map(Value::Number)
        .ok_or_else(|| KernelError::Storage(format!("increment by {by} overflowed")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inc(field: &str, by: f64) -> DocOp {
        DocOp::Increment {
            collection: "c".into(),
            id: "a".into(),
            field: field.into(),
            by,
        }
    }

    fn merge(patch: Value) -> DocOp {
        DocOp::Merge {
            collection: "c".into(),
            id: "a".into(),
            patch,
        }
    }

    fn run(start: Option<Value>, ops: &[DocOp]) -> KernelResult<Option<Value>> {
        let mut state = start;
        for op in ops {
            apply(&mut state, op)?;
        }
        Ok(state)
    }

    #[test]
    fn increments_create_parents_and_keep_integers() {
        let out = run(
            Some(json!({"n": 1})),
            &[
                inc("n", 2.0),
                inc("by.kind", 1.0),
                inc("by.kind", 1.0),
                inc("r", 0.5),
            ],
        )
        .expect("fold");
        assert_eq!(out, Some(json!({"n": 3, "by": {"kind": 2}, "r": 0.5})));
        assert!(out.expect("doc")["n"].is_i64());
    }

    #[test]
    fn increments_of_floats_and_non_numbers() {
        let out = run(
            Some(json!({"f": 1.5, "s": "x", "b": true, "big": i64::MAX})),
            &[inc("f", 1.0), inc("s", 2.0), inc("b", 1.0), inc("big", 1.0)],
        )
        .expect("fold");
        let out = out.expect("doc");
        assert_eq!(out["f"], json!(2.5));
        assert_eq!(out["s"], json!(2), "a non-number counts as 0");
        assert_eq!(out["b"], json!(1));
        assert_eq!(out["big"].as_f64(), Some(i64::MAX as f64 + 1.0));
    }

    #[test]
    fn a_non_object_parent_leaves_the_document_alone() {
        let start = json!({"a": 3, "list": [1]});
        let out = run(
            Some(start.clone()),
            &[inc("a.b", 1.0), merge(json!({"list.x": 1}))],
        )
        .expect("fold");
        assert_eq!(out, Some(start));
        assert_eq!(
            run(Some(json!([1, 2])), &[inc("a", 1.0)]).expect("fold"),
            Some(json!([1, 2]))
        );
    }

    #[test]
    fn merge_and_increment_never_create() {
        assert_eq!(
            run(None, &[merge(json!({"a": 1})), inc("n", 1.0)]).expect("fold"),
            None
        );
    }

    #[test]
    fn bad_input_fails_even_on_absent_documents() {
        assert!(run(None, &[inc("n", f64::NAN)]).is_err());
        assert!(run(None, &[inc("bad-name", 1.0)]).is_err());
        assert!(run(None, &[merge(json!([1]))]).is_err());
        assert!(run(None, &[merge(json!({"a..b": 1}))]).is_err());
    }

    #[test]
    fn ops_before_a_whole_replacement_are_checked_but_change_nothing() {
        let upsert = DocOp::Upsert {
            collection: "c".into(),
            id: "a".into(),
            doc: json!({"n": 7}),
        };
        let mut fold = Fold::default();
        let merged = merge(json!({"x": 1}));
        let ops = [merged, inc("n", 5.0), upsert.clone()];
        for op in &ops {
            fold.push("c", "a", op);
        }
        assert!(fold.bases_needed().is_empty(), "replaced whole: no read");
        assert_eq!(
            fold.finish(HashMap::new()).expect("finish"),
            vec![DocWrite::Put {
                collection: "c".into(),
                id: "a".into(),
                body: r#"{"n":7}"#.into()
            }]
        );
        let mut fold = Fold::default();
        let ops = [inc("n", f64::NAN), upsert];
        for op in &ops {
            fold.push("c", "a", op);
        }
        assert!(fold.finish(HashMap::new()).is_err());
    }

    #[test]
    fn fold_reads_only_what_it_needs_and_writes_each_document_once() {
        let ops = [
            DocOp::Upsert {
                collection: "c".into(),
                id: "fresh".into(),
                doc: json!({"n": 0}),
            },
            inc("n", 1.0),
            DocOp::Increment {
                collection: "c".into(),
                id: "fresh".into(),
                field: "n".into(),
                by: 1.0,
            },
            DocOp::Merge {
                collection: "c".into(),
                id: "gone".into(),
                patch: json!({"x": 1}),
            },
            DocOp::Delete {
                collection: "c".into(),
                id: "b".into(),
            },
        ];
        let mut fold = Fold::default();
        for op in &ops {
            let (collection, id) = target_of(op).expect("per document");
            fold.push(collection, id, op);
        }
        let mut needed = fold.bases_needed().remove("c").expect("collection c");
        needed.sort_unstable();
        assert_eq!(needed, vec!["a", "gone"]);
        let bases = HashMap::from([(("c".to_string(), "a".to_string()), json!({"n": 41}))]);
        let writes = fold.finish(bases).expect("finish");
        assert_eq!(
            writes,
            vec![
                DocWrite::Put {
                    collection: "c".into(),
                    id: "fresh".into(),
                    body: r#"{"n":1}"#.into()
                },
                DocWrite::Put {
                    collection: "c".into(),
                    id: "a".into(),
                    body: r#"{"n":42}"#.into()
                },
                DocWrite::Remove {
                    collection: "c".into(),
                    id: "b".into()
                },
            ]
        );
    }
}

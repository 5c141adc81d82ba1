//! Specification queries: a filter tree (eq, ne, gt, gte, lt, lte, in, contains, combined
//! with and, or, not), a sort and a page, checked against the fields a collection exposes.
//! Pure data: each read store translates it (SQLite JSON functions, MongoDB filters).
//!
//! # Request shape
//!
//! A filter node is exactly one of `{"and": [node, ..]}`, `{"or": [node, ..]}`,
//! `{"not": node}` or `{"field": "price", "op": "lt", "value": 10}`. A sort is an array of
//! `{"field": "name", "dir": "asc" | "desc"}` (`dir` defaults to `asc`). [`parse_filter`] and
//! [`parse_sort`] check them against the collection's [`FieldSpec`]s and name the faulty
//! place in [`SpecError::path`] (`filter.and[1].op`, `sort[0].dir`); they never panic.
//!
//! # Semantics (both read stores implement exactly these)
//!
//! - A condition holds only when the document's field is present and holds a value of the
//!   field's kind: a string for `Text` and `Time`, a number for `Number`, a boolean for `Bool`.
//!   A missing field, `null`, an array or a value of another type fails every comparison
//!   (`eq`, `gt`, .., `in`, `contains`); numbers and strings are never compared to each other.
//! - `ne` is the negation of `eq` and `not` the negation of its node (two-valued logic), so
//!   both match documents whose field is missing, null or of another type. De Morgan holds.
//! - Numbers compare numerically (integers exactly, 3 == 3.0); text compares case-sensitively
//!   by UTF-8 bytes (`"B" < "a"`, `"10" < "9"`).
//! - `contains` is a case-insensitive substring test where "case-insensitive" means ASCII
//!   letters only: SQLite's `lower()` folds A-Z alone, so the MongoDB store folds the same
//!   letters (`é` does not match `É` in either). `%`, `_` and regex characters are literal.
//! - `Time` values are parsed as RFC 3339 and normalised to the read models' form (UTC,
//!   microseconds, `Z`: see `domain::memento::projection::rfc3339`), then compared as strings;
//!   so read models must store times in that fixed-width form.
//! - Sorting is the stores' own order (missing and null first ascending); ties break by id.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::domain::DomainError;

/// Deepest nesting of and/or/not (the root node is level 1).
pub const MAX_DEPTH: usize = 8;
/// Most conditions (leaves) in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// Most values in one `in` list.
pub const MAX_IN_VALUES: usize = 100;
/// Most sort keys.
pub const MAX_SORT_KEYS: usize = 4;
/// Longest piece of user text quoted back in an error message.
const QUOTE_LIMIT: usize = 64;

/// The JSON type of a field that specifications may filter and sort on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// Any JSON number.
    Number,
    Bool,
    /// An RFC 3339 string (compared as a string; read models store fixed-width UTC).
    Time,
}

impl FieldKind {
    fn name(self) -> &'static str {
        match self {
            FieldKind::Text => "text",
            FieldKind::Number => "number",
            FieldKind::Bool => "bool",
            FieldKind::Time => "time",
        }
    }

    /// The ops a field of this kind accepts.
    fn allows(self, op: Op) -> bool {
        match self {
            FieldKind::Text => true,
            FieldKind::Number | FieldKind::Time => op != Op::Contains,
            FieldKind::Bool => matches!(op, Op::Eq | Op::Ne | Op::In),
        }
    }
}

/// A top-level field of a read-model collection that specifications may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
}

impl FieldSpec {
    pub const fn new(name: &'static str, kind: FieldKind) -> Self {
        Self { name, kind }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    /// The field equals one of the values (a JSON array).
    In,
    /// A text field contains the value as a substring (case-insensitive).
    Contains,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Eq,
        Op::Ne,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::In,
        Op::Contains,
    ];

    /// The op's name in requests.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::Contains => "contains",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// A checked filter tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Condition { field: String, op: Op, value: Value },
}

impl Filter {
    /// A condition node (values are not checked: use [`parse_filter`] for requests).
    pub fn condition(field: &str, op: Op, value: Value) -> Filter {
        Filter::Condition {
            field: field.to_owned(),
            op,
            value,
        }
    }

    /// Nesting levels, the node itself included (a lone condition is 1).
    pub fn depth(&self) -> usize {
        match self {
            Filter::And(nodes) | Filter::Or(nodes) => {
                1 + nodes.iter().map(Filter::depth).max().unwrap_or(0)
            }
            Filter::Not(node) => 1 + node.depth(),
            Filter::Condition { .. } => 1,
        }
    }

    /// The number of conditions (leaves).
    pub fn conditions(&self) -> usize {
        match self {
            Filter::And(nodes) | Filter::Or(nodes) => nodes.iter().map(Filter::conditions).sum(),
            Filter::Not(node) => node.conditions(),
            Filter::Condition { .. } => 1,
        }
    }
}

/// One sort key: a field, ascending when true.
pub type SortKey = (String, bool);

/// A specification the request got wrong: where (`filter.and[1].field`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl SpecError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A 422 naming the faulty place of the request.
impl From<SpecError> for DomainError {
    fn from(err: SpecError) -> Self {
        DomainError::invalid(&err.path, err.message)
    }
}

/// Checks a filter tree (the request's `filter`) against the collection's fields.
pub fn parse_filter(value: &Value, fields: &[FieldSpec]) -> Result<Filter, SpecError> {
    let mut parser = FilterParser {
        fields,
        conditions: 0,
    };
    parser.node(value, "filter", 1)
}

/// Checks a sort (the request's `sort`) against the collection's fields.
pub fn parse_sort(value: &Value, fields: &[FieldSpec]) -> Result<Vec<SortKey>, SpecError> {
    let Value::Array(items) = value else {
        return Err(SpecError::new(
            "sort",
            format!(
                "expected an array of {{\"field\", \"dir\"}}, got {}",
                type_name(value)
            ),
        ));
    };
    if items.len() > MAX_SORT_KEYS {
        return Err(SpecError::new(
            "sort",
            format!("at most {MAX_SORT_KEYS} sort keys, got {}", items.len()),
        ));
    }
    let mut keys: Vec<SortKey> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let path = format!("sort[{index}]");
        let Value::Object(map) = item else {
            return Err(SpecError::new(
                path,
                format!(
                    "expected an object {{\"field\", \"dir\"}}, got {}",
                    type_name(item)
                ),
            ));
        };
        reject_unknown_keys(
            map,
            &path,
            &["field", "dir"],
            "a sort key has `field` and `dir`",
        )?;
        let field = known_field(map.get("field"), &format!("{path}.field"), fields)?;
        if keys.iter().any(|(name, _)| name == field.name) {
            return Err(SpecError::new(
                format!("{path}.field"),
                format!("`{}` is already a sort key", field.name),
            ));
        }
        let ascending = match map.get("dir") {
            None => true,
            Some(Value::String(dir)) if dir == "asc" => true,
            Some(Value::String(dir)) if dir == "desc" => false,
            Some(other) => {
                return Err(SpecError::new(
                    format!("{path}.dir"),
                    format!("expected \"asc\" or \"desc\", got {}", shown(other)),
                ))
            }
        };
        keys.push((field.name.to_owned(), ascending));
    }
    Ok(keys)
}

struct FilterParser<'a> {
    fields: &'a [FieldSpec],
    conditions: usize,
}

const NODE_SHAPES: &str =
    "{\"and\": [..]}, {\"or\": [..]}, {\"not\": {..}} or {\"field\", \"op\", \"value\"}";

impl FilterParser<'_> {
    fn node(&mut self, value: &Value, path: &str, depth: usize) -> Result<Filter, SpecError> {
        if depth > MAX_DEPTH {
            return Err(SpecError::new(
                path,
                format!("filters nest at most {MAX_DEPTH} levels deep"),
            ));
        }
        let Value::Object(map) = value else {
            return Err(SpecError::new(
                path,
                format!("expected one of {NODE_SHAPES}, got {}", type_name(value)),
            ));
        };
        if map.is_empty() {
            return Err(SpecError::new(
                path,
                format!("empty object: expected one of {NODE_SHAPES}"),
            ));
        }
        let combinator = ["and", "or", "not"]
            .into_iter()
            .find_map(|key| map.get(key).map(|child| (key, child)));
        let Some((combinator, child)) = combinator else {
            return self.condition(map, path);
        };
        if let Some(other) = map.keys().find(|key| key.as_str() != combinator) {
            return Err(SpecError::new(
                format!("{path}.{}", quoted_key(other)),
                format!("unexpected key beside `{combinator}`, which stands alone in its object"),
            ));
        }
        let child_path = format!("{path}.{combinator}");
        if combinator == "not" {
            return Ok(Filter::Not(Box::new(self.node(
                child,
                &child_path,
                depth + 1,
            )?)));
        }
        let Value::Array(children) = child else {
            return Err(SpecError::new(
                child_path,
                format!(
                    "expected an array of filter nodes, got {}",
                    type_name(child)
                ),
            ));
        };
        if children.is_empty() {
            return Err(SpecError::new(
                child_path,
                "expected at least one filter node",
            ));
        }
        let nodes = children
            .iter()
            .enumerate()
            .map(|(index, child)| self.node(child, &format!("{child_path}[{index}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if combinator == "and" {
            Filter::And(nodes)
        } else {
            Filter::Or(nodes)
        })
    }

    fn condition(&mut self, map: &Map<String, Value>, path: &str) -> Result<Filter, SpecError> {
        reject_unknown_keys(
            map,
            path,
            &["field", "op", "value"],
            &format!("expected one of {NODE_SHAPES}"),
        )?;
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(SpecError::new(
                path,
                format!("a filter has at most {MAX_CONDITIONS} conditions"),
            ));
        }
        let field = known_field(map.get("field"), &format!("{path}.field"), self.fields)?;
        let op_path = format!("{path}.op");
        let op = match map.get("op") {
            None => return Err(SpecError::new(op_path, format!("missing; {}", op_list()))),
            Some(Value::String(name)) => Op::from_name(name).ok_or_else(|| {
                SpecError::new(
                    &op_path,
                    format!("unknown op {}; {}", shown_str(name), op_list()),
                )
            })?,
            Some(other) => {
                return Err(SpecError::new(
                    op_path,
                    format!("expected a string, got {}; {}", type_name(other), op_list()),
                ))
            }
        };
        if !field.kind.allows(op) {
            let allowed: Vec<&str> = Op::ALL
                .into_iter()
                .filter(|op| field.kind.allows(*op))
                .map(Op::name)
                .collect();
            return Err(SpecError::new(
                op_path,
                format!(
                    "op `{}` does not apply to the {} field `{}` (it takes {})",
                    op.name(),
                    field.kind.name(),
                    field.name,
                    allowed.join(", ")
                ),
            ));
        }
        let value_path = format!("{path}.value");
        let Some(value) = map.get("value") else {
            return Err(SpecError::new(value_path, "missing"));
        };
        let value = if op == Op::In {
            in_values(value, field.kind, &value_path)?
        } else {
            scalar(value, field.kind, &value_path)?
        };
        Ok(Filter::Condition {
            field: field.name.to_owned(),
            op,
            value,
        })
    }
}

fn in_values(value: &Value, kind: FieldKind, path: &str) -> Result<Value, SpecError> {
    let Value::Array(items) = value else {
        return Err(SpecError::new(
            path,
            format!(
                "`in` takes an array of {} values, got {}",
                kind.name(),
                type_name(value)
            ),
        ));
    };
    if items.is_empty() || items.len() > MAX_IN_VALUES {
        return Err(SpecError::new(
            path,
            format!(
                "`in` takes 1 to {MAX_IN_VALUES} values, got {}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| scalar(item, kind, &format!("{path}[{index}]")))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Checks one value against the field's kind; times come back normalised.
fn scalar(value: &Value, kind: FieldKind, path: &str) -> Result<Value, SpecError> {
    let fits = match (kind, value) {
        (FieldKind::Text, Value::String(_))
        | (FieldKind::Number, Value::Number(_))
        | (FieldKind::Bool, Value::Bool(_)) => true,
        (FieldKind::Time, Value::String(text)) => return normalised_time(text, path),
        _ => false,
    };
    if fits {
        Ok(value.clone())
    } else {
        let expected = match kind {
            FieldKind::Text => "a string",
            FieldKind::Number => "a number",
            FieldKind::Bool => "a boolean",
            FieldKind::Time => "an RFC 3339 time string",
        };
        Err(SpecError::new(
            path,
            format!("expected {expected}, got {}", type_name(value)),
        ))
    }
}

/// An RFC 3339 time in the read models' form: UTC, microseconds, `Z`.
fn normalised_time(text: &str, path: &str) -> Result<Value, SpecError> {
    let invalid = || {
        SpecError::new(
            path,
            format!(
                "expected an RFC 3339 time such as 2024-01-31T12:00:00Z, got {}",
                shown_str(text)
            ),
        )
    };
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| invalid())?
        .with_timezone(&Utc);
    // Outside four-digit years the string form would no longer sort as time.
    if !(0..=9999).contains(&at.year()) {
        return Err(invalid());
    }
    Ok(Value::String(
        at.to_rfc3339_opts(SecondsFormat::Micros, true),
    ))
}

/// The field named by `value` (a `field` entry), which must be one of `fields`.
fn known_field<'a>(
    value: Option<&Value>,
    path: &str,
    fields: &'a [FieldSpec],
) -> Result<&'a FieldSpec, SpecError> {
    let name = match value {
        Some(Value::String(name)) => name,
        None => {
            return Err(SpecError::new(
                path,
                format!("missing; {}", field_list(fields)),
            ))
        }
        Some(other) => {
            return Err(SpecError::new(
                path,
                format!(
                    "expected a string, got {}; {}",
                    type_name(other),
                    field_list(fields)
                ),
            ))
        }
    };
    fields
        .iter()
        .find(|field| field.name == name)
        .ok_or_else(|| {
            SpecError::new(
                path,
                format!("unknown field {}; {}", shown_str(name), field_list(fields)),
            )
        })
}

fn reject_unknown_keys(
    map: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
    hint: &str,
) -> Result<(), SpecError> {
    match map.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(SpecError::new(
            format!("{path}.{}", quoted_key(key)),
            format!("unknown key; {hint}"),
        )),
        None => Ok(()),
    }
}

fn field_list(fields: &[FieldSpec]) -> String {
    let names: Vec<&str> = fields.iter().map(|field| field.name).collect();
    format!("fields: {}", names.join(", "))
}

fn op_list() -> String {
    let names: Vec<&str> = Op::ALL.into_iter().map(Op::name).collect();
    format!("ops: {}", names.join(", "))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// User text cut to a readable length.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// User text quoted for a message.
fn shown_str(text: &str) -> String {
    format!("`{}`", truncated(text))
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => shown_str(text),
        other => type_name(other).to_owned(),
    }
}

/// A request key as a path segment.
fn quoted_key(key: &str) -> String {
    truncated(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[FieldSpec] = &[
        FieldSpec::new("name", FieldKind::Text),
        FieldSpec::new("price", FieldKind::Number),
        FieldSpec::new("active", FieldKind::Bool),
        FieldSpec::new("created_at", FieldKind::Time),
    ];

    fn cond(field: &str, op: &str, value: Value) -> Value {
        json!({"field": field, "op": op, "value": value})
    }

    fn filter_error(value: Value) -> SpecError {
        match parse_filter(&value, FIELDS) {
            Ok(filter) => panic!("{value} should be rejected, got {filter:?}"),
            Err(err) => err,
        }
    }

    fn sort_error(value: Value) -> SpecError {
        match parse_sort(&value, FIELDS) {
            Ok(keys) => panic!("{value} should be rejected, got {keys:?}"),
            Err(err) => err,
        }
    }

    /// `depth` nested nots around one condition.
    fn nested_nots(depth: usize) -> Value {
        (0..depth).fold(
            cond("price", "gt", json!(1)),
            |inner, _| json!({"not": inner}),
        )
    }

    #[test]
    fn a_tree_of_every_node_parses() {
        let request = json!({"and": [
            {"field": "name", "op": "eq", "value": "x"},
            {"or": [
                {"field": "price", "op": "lt", "value": 10},
                {"not": {"field": "active", "op": "in", "value": [true]}},
            ]},
            {"field": "name", "op": "contains", "value": "50%"},
        ]});
        let filter = parse_filter(&request, FIELDS).expect("valid");
        assert_eq!(
            filter,
            Filter::And(vec![
                Filter::condition("name", Op::Eq, json!("x")),
                Filter::Or(vec![
                    Filter::condition("price", Op::Lt, json!(10)),
                    Filter::Not(Box::new(Filter::condition("active", Op::In, json!([true])))),
                ]),
                Filter::condition("name", Op::Contains, json!("50%")),
            ])
        );
        assert_eq!(filter.depth(), 4);
        assert_eq!(filter.conditions(), 4);
    }

    #[test]
    fn every_op_parses_on_the_kinds_that_take_it() {
        for op in Op::ALL {
            let value = if op == Op::In {
                json!(["a", "b"])
            } else {
                json!("a")
            };
            let parsed = parse_filter(&cond("name", op.name(), value.clone()), FIELDS);
            assert_eq!(parsed, Ok(Filter::condition("name", op, value)));
        }
        for op in ["eq", "ne", "gt", "gte", "lt", "lte"] {
            assert!(parse_filter(&cond("price", op, json!(1.5)), FIELDS).is_ok());
        }
        for (op, value) in [
            ("eq", json!(true)),
            ("ne", json!(false)),
            ("in", json!([true, false])),
        ] {
            assert!(parse_filter(&cond("active", op, value), FIELDS).is_ok());
        }
    }

    #[test]
    fn times_are_normalised_to_utc_microseconds() {
        let parsed = parse_filter(
            &cond("created_at", "gte", json!("2024-01-31T12:00:00+02:00")),
            FIELDS,
        );
        assert_eq!(
            parsed,
            Ok(Filter::condition(
                "created_at",
                Op::Gte,
                json!("2024-01-31T10:00:00.000000Z")
            ))
        );
        let parsed = parse_filter(
            &cond("created_at", "in", json!(["2024-01-31T12:00:00.5Z"])),
            FIELDS,
        );
        assert_eq!(
            parsed,
            Ok(Filter::condition(
                "created_at",
                Op::In,
                json!(["2024-01-31T12:00:00.500000Z"])
            ))
        );
    }

    #[test]
    fn limits_are_inclusive() {
        assert_eq!(
            parse_filter(&nested_nots(MAX_DEPTH - 1), FIELDS).map(|f| f.depth()),
            Ok(MAX_DEPTH)
        );
        let conditions: Vec<Value> = (0..MAX_CONDITIONS)
            .map(|i| cond("price", "eq", json!(i)))
            .collect();
        let filter = parse_filter(&json!({"or": conditions}), FIELDS).expect("64 conditions");
        assert_eq!(filter.conditions(), MAX_CONDITIONS);
        let values: Vec<usize> = (0..MAX_IN_VALUES).collect();
        assert!(parse_filter(&cond("price", "in", json!(values)), FIELDS).is_ok());
    }

    #[test]
    fn malformed_nodes_are_rejected_where_they_are() {
        let cases = [
            (json!(null), "filter", "got null"),
            (json!([]), "filter", "got an array"),
            (json!({}), "filter", "empty object"),
            (json!({"and": []}), "filter.and", "at least one"),
            (json!({"or": {}}), "filter.or", "array of filter nodes"),
            (json!({"and": [1]}), "filter.and[0]", "got a number"),
            (
                json!({"not": [cond("price", "eq", json!(1))]}),
                "filter.not",
                "got an array",
            ),
            (
                json!({"and": [cond("price", "eq", json!(1))], "or": []}),
                "filter.or",
                "beside `and`",
            ),
            (
                json!({"not": cond("price", "eq", json!(1)), "field": "price"}),
                "filter.field",
                "beside `not`",
            ),
            (
                json!({"field": "price", "op": "eq", "value": 1, "extra": 2}),
                "filter.extra",
                "unknown key",
            ),
            (
                json!({"or": [cond("price", "eq", json!(1)), {"feld": "price"}]}),
                "filter.or[1].feld",
                "unknown key",
            ),
        ];
        for (request, path, message) in cases {
            let err = filter_error(request.clone());
            assert_eq!(err.path, path, "{request}");
            assert!(
                err.message.contains(message),
                "{request}: {:?} should mention {message:?}",
                err.message
            );
        }
    }

    #[test]
    fn unknown_or_missing_fields_list_the_fields() {
        let err = filter_error(json!({"and": [
            cond("price", "eq", json!(1)),
            cond("colour", "eq", json!("red")),
        ]}));
        assert_eq!(err.path, "filter.and[1].field");
        assert!(err.message.contains("unknown field `colour`"));
        assert!(err
            .message
            .contains("fields: name, price, active, created_at"));

        let err = filter_error(json!({"op": "eq", "value": 1}));
        assert_eq!(err.path, "filter.field");
        assert!(err.message.starts_with("missing"));

        let err = filter_error(json!({"field": 7, "op": "eq", "value": 1}));
        assert_eq!(err.path, "filter.field");
        assert!(err.message.contains("expected a string, got a number"));
    }

    #[test]
    fn unknown_missing_or_misplaced_ops_are_rejected_on_op() {
        let err = filter_error(json!({"or": [cond("price", "like", json!(1))]}));
        assert_eq!(err.path, "filter.or[0].op");
        assert!(err.message.contains("unknown op `like`"));
        assert!(err
            .message
            .contains("ops: eq, ne, gt, gte, lt, lte, in, contains"));

        let err = filter_error(json!({"field": "price", "value": 1}));
        assert_eq!(err.path, "filter.op");
        assert!(err.message.starts_with("missing"));

        let err = filter_error(json!({"field": "price", "op": 3, "value": 1}));
        assert_eq!(err.path, "filter.op");

        for (field, op, value) in [
            ("price", "contains", json!("1")),
            ("created_at", "contains", json!("2024")),
            ("active", "gt", json!(true)),
            ("active", "contains", json!(true)),
        ] {
            let err = filter_error(cond(field, op, value));
            assert_eq!(err.path, "filter.op", "{field} {op}");
            assert!(err.message.contains("does not apply"), "{field} {op}");
        }
    }

    #[test]
    fn values_of_the_wrong_type_are_rejected_on_value() {
        let cases = [
            (
                cond("price", "lt", json!("10")),
                "filter.value",
                "expected a number",
            ),
            (cond("price", "eq", json!(null)), "filter.value", "got null"),
            (
                cond("name", "eq", json!(1)),
                "filter.value",
                "expected a string",
            ),
            (
                cond("name", "gt", json!(["a"])),
                "filter.value",
                "got an array",
            ),
            (
                cond("active", "eq", json!("true")),
                "filter.value",
                "expected a boolean",
            ),
            (
                cond("created_at", "gt", json!("yesterday")),
                "filter.value",
                "RFC 3339",
            ),
            (
                cond("created_at", "gt", json!(1_706_700_000)),
                "filter.value",
                "RFC 3339",
            ),
            (cond("price", "in", json!(3)), "filter.value", "array"),
            (cond("price", "in", json!([])), "filter.value", "1 to 100"),
            (
                cond("price", "in", json!([1, "2"])),
                "filter.value[1]",
                "expected a number",
            ),
            (
                cond("created_at", "in", json!(["2024-01-01T00:00:00Z", "soon"])),
                "filter.value[1]",
                "RFC 3339",
            ),
        ];
        for (request, path, message) in cases {
            let err = filter_error(request.clone());
            assert_eq!(err.path, path, "{request}");
            assert!(
                err.message.contains(message),
                "{request}: {:?} should mention {message:?}",
                err.message
            );
        }
        let err = filter_error(json!({"field": "price", "op": "eq"}));
        assert_eq!(
            (err.path.as_str(), err.message.as_str()),
            ("filter.value", "missing")
        );
        let too_many: Vec<usize> = (0..=MAX_IN_VALUES).collect();
        assert_eq!(
            filter_error(cond("price", "in", json!(too_many))).path,
            "filter.value"
        );
    }

    #[test]
    fn too_deep_or_too_many_is_rejected() {
        let err = filter_error(json!({"and": [nested_nots(MAX_DEPTH)]}));
        assert!(err.message.contains("at most 8 levels"));
        assert_eq!(
            err.path,
            format!("filter.and[0]{}", ".not".repeat(MAX_DEPTH - 1))
        );

        let conditions: Vec<Value> = (0..=MAX_CONDITIONS)
            .map(|i| cond("price", "eq", json!(i)))
            .collect();
        let err = filter_error(json!({"or": conditions}));
        assert_eq!(err.path, format!("filter.or[{MAX_CONDITIONS}]"));
        assert!(err.message.contains("at most 64 conditions"));
    }

    #[test]
    fn long_user_text_is_cut_in_messages() {
        let long = "x".repeat(10_000);
        let err = filter_error(cond(&long, "eq", json!(1)));
        assert!(err.message.len() < 300, "{}", err.message);
        let err = filter_error(json!({ long.clone(): 1 }));
        assert!(err.path.len() < 100, "{}", err.path);
    }

    #[test]
    fn errors_become_invalid_input_naming_the_path() {
        let err = filter_error(cond("price", "like", json!(1)));
        assert_eq!(err.to_string(), format!("filter.op: {}", err.message));
        match DomainError::from(err) {
            DomainError::Invalid { field, .. } => assert_eq!(field.as_deref(), Some("filter.op")),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn sorts_parse_with_ascending_default() {
        assert_eq!(parse_sort(&json!([]), FIELDS), Ok(vec![]));
        assert_eq!(
            parse_sort(
                &json!([{"field": "price", "dir": "desc"}, {"field": "name"}, {"field": "active", "dir": "asc"}]),
                FIELDS
            ),
            Ok(vec![
                ("price".to_owned(), false),
                ("name".to_owned(), true),
                ("active".to_owned(), true),
            ])
        );
    }

    #[test]
    fn malformed_sorts_are_rejected_where_they_are() {
        let five: Vec<Value> = ["name", "price", "active", "created_at", "name"]
            .iter()
            .map(|field| json!({ "field": field }))
            .collect();
        let cases = [
            (json!({"field": "name"}), "sort", "expected an array"),
            (json!(five), "sort", "at most 4"),
            (json!(["name"]), "sort[0]", "expected an object"),
            (
                json!([{"field": "colour"}]),
                "sort[0].field",
                "unknown field `colour`",
            ),
            (json!([{"dir": "asc"}]), "sort[0].field", "missing"),
            (json!([{"field": 1}]), "sort[0].field", "expected a string"),
            (
                json!([{"field": "name"}, {"field": "name", "dir": "desc"}]),
                "sort[1].field",
                "already a sort key",
            ),
            (
                json!([{"field": "name", "dir": "up"}]),
                "sort[0].dir",
                "\"asc\" or \"desc\"",
            ),
            (
                json!([{"field": "name", "dir": null}]),
                "sort[0].dir",
                "got null",
            ),
            (
                json!([{"field": "name", "order": "asc"}]),
                "sort[0].order",
                "unknown key",
            ),
        ];
        for (request, path, message) in cases {
            let err = sort_error(request.clone());
            assert_eq!(err.path, path, "{request}");
            assert!(
                err.message.contains(message),
                "{request}: {:?} should mention {message:?}",
                err.message
            );
        }
    }
}

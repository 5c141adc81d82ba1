//! Feeds arbitrary bytes, as JSON, to the specification parsers (`kernel::spec`): they must
//! never panic, and whatever they accept must keep the documented limits and types.

#![no_main]

use kernel::spec::{
    parse_filter, parse_sort, FieldKind, FieldSpec, Filter, Op, MAX_CONDITIONS, MAX_DEPTH,
    MAX_IN_VALUES, MAX_SORT_KEYS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const FIELDS: &[FieldSpec] = &[
    FieldSpec::new("name", FieldKind::Text),
    FieldSpec::new("price", FieldKind::Number),
    FieldSpec::new("active", FieldKind::Bool),
    FieldSpec::new("created_at", FieldKind::Time),
];

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The whole input as a filter and as a sort, and its parts the way the query route
    // takes them (`{"filter": .., "sort": ..}`).
    for filter in [Some(&request), request.get("filter")]
        .into_iter()
        .flatten()
    {
        check_filter(filter);
    }
    for sort in [Some(&request), request.get("sort")].into_iter().flatten() {
        check_sort(sort);
    }
});

fn check_filter(value: &Value) {
    match parse_filter(value, FIELDS) {
        Ok(filter) => {
            assert!(filter.depth() <= MAX_DEPTH, "too deep: {filter:?}");
            let conditions = filter.conditions();
            assert!((1..=MAX_CONDITIONS).contains(&conditions), "{filter:?}");
            check_node(&filter);
        }
        Err(err) => assert!(err.path.starts_with("filter"), "{err:?}"),
    }
}

fn check_node(filter: &Filter) {
    match filter {
        Filter::And(nodes) | Filter::Or(nodes) => {
            assert!(!nodes.is_empty());
            nodes.iter().for_each(check_node);
        }
        Filter::Not(node) => check_node(node),
        Filter::Condition { field, op, value } => {
            let spec = FIELDS
                .iter()
                .find(|spec| spec.name == field)
                .unwrap_or_else(|| panic!("unknown field {field} accepted"));
            if *op == Op::Contains {
                assert_eq!(spec.kind, FieldKind::Text);
            }
            if spec.kind == FieldKind::Bool {
                assert!(matches!(op, Op::Eq | Op::Ne | Op::In), "{op:?} on a bool");
            }
            match (op, value) {
                (Op::In, Value::Array(items)) => {
                    assert!((1..=MAX_IN_VALUES).contains(&items.len()));
                    items.iter().for_each(|item| check_value(spec.kind, item));
                }
                (Op::In, other) => panic!("in with {other}"),
                (_, value) => check_value(spec.kind, value),
            }
        }
    }
}

fn check_value(kind: FieldKind, value: &Value) {
    let fits = match (kind, value) {
        (FieldKind::Text, Value::String(_))
        | (FieldKind::Number, Value::Number(_))
        | (FieldKind::Bool, Value::Bool(_)) => true,
        // Normalised: UTC, microseconds, `Z`, so the strings sort as times.
        (FieldKind::Time, Value::String(time)) => {
            time.len() == "2024-01-31T12:00:00.000000Z".len() && time.ends_with('Z')
        }
        _ => false,
    };
    assert!(fits, "{value} accepted for a {kind:?} field");
}

fn check_sort(value: &Value) {
    match parse_sort(value, FIELDS) {
        Ok(keys) => {
            assert!(keys.len() <= MAX_SORT_KEYS);
            for (index, (field, _)) in keys.iter().enumerate() {
                assert!(FIELDS.iter().any(|spec| spec.name == field));
                assert!(!keys[..index].iter().any(|(other, _)| other == field));
            }
        }
        Err(err) => assert!(err.path.starts_with("sort"), "{err:?}"),
    }
}

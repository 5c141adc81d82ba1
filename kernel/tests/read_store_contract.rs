//! The read-store contract: what every `ReadStore` backend must do, written once as scenarios
//! over `&dyn ReadStore` and run against each backend. SQLite runs here on a temp file per test;
//! MongoDB on a database of its own per test when `MONGODB_URL` is set (the `mongodb::*` tests
//! return at once otherwise, and `mongodb_contract` prints the skip line).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kernel::adapters::mongo::MongoReadStore;
use kernel::adapters::read_sqlite::SqliteReadStore;
use kernel::ports::{
    generation_key, DocOp, DocQuery, EventEffect, ProjectedEvent, ReadStore, STATUS_COLLECTION,
};
use kernel::spec::{parse_filter, parse_sort, FieldKind, FieldSpec};
use serde_json::{json, Value};

/// The scenarios. Each one starts from an empty store.
mod scenarios {
    use super::*;

    fn upsert(collection: &str, id: &str, doc: Value) -> DocOp {
        DocOp::Upsert {
            collection: collection.into(),
            id: id.into(),
            doc,
        }
    }

    fn increment(collection: &str, id: &str, field: &str, by: f64) -> DocOp {
        DocOp::Increment {
            collection: collection.into(),
            id: id.into(),
            field: field.into(),
            by,
        }
    }

    async fn ops(store: &dyn ReadStore, ops: Vec<DocOp>) {
        store
            .apply("contract", ops, vec![], 0)
            .await
            .expect("apply succeeds");
    }

    async fn get(store: &dyn ReadStore, collection: &str, id: &str) -> Option<Value> {
        store.get(collection, id).await.expect("get succeeds")
    }

    fn query(filter: &[(&str, Value)]) -> DocQuery {
        DocQuery {
            filter: filter
                .iter()
                .map(|(f, v)| ((*f).to_owned(), v.clone()))
                .collect(),
            condition: None,
            sort: vec![],
            limit: 0,
            offset: 0,
        }
    }

    fn ids(items: &[Value]) -> Vec<String> {
        items
            .iter()
            .map(|doc| doc["id"].as_str().expect("doc has a string id").to_owned())
            .collect()
    }

    async fn find_ids(store: &dyn ReadStore, collection: &str, q: &DocQuery) -> Vec<String> {
        let page = store.find(collection, q).await.expect("find succeeds");
        let mut found = ids(&page.items);
        found.sort();
        found
    }

    pub async fn upsert_replaces_whole_document(store: &dyn ReadStore) {
        assert_eq!(get(store, "users", "u1").await, None);
        ops(
            store,
            vec![upsert("users", "u1", json!({"id": "u1", "a": 1, "b": 2}))],
        )
        .await;
        assert_eq!(
            get(store, "users", "u1").await,
            Some(json!({"id": "u1", "a": 1, "b": 2}))
        );
        ops(
            store,
            vec![upsert("users", "u1", json!({"id": "u1", "a": 3}))],
        )
        .await;
        assert_eq!(
            get(store, "users", "u1").await,
            Some(json!({"id": "u1", "a": 3}))
        );
        // Same id, other collection: a different document.
        assert_eq!(get(store, "orders", "u1").await, None);
    }

    pub async fn merge_patches_existing_and_skips_absent(store: &dyn ReadStore) {
        ops(
            store,
            vec![upsert(
                "users",
                "u1",
                json!({"id": "u1", "name": "Ann", "nested": {"x": 1, "y": 2}, "drop": 1}),
            )],
        )
        .await;
        let patch =
            json!({"name": "Bea", "nested": {"y": null, "z": 3}, "drop": null, "new": true});
        let merge = |id: &str| DocOp::Merge {
            collection: "users".into(),
            id: id.into(),
            patch: patch.clone(),
        };
        ops(store, vec![merge("u1"), merge("absent")]).await;
        assert_eq!(
            get(store, "users", "u1").await,
            Some(
                json!({"id": "u1", "name": "Bea", "nested": {"y": null, "z": 3}, "drop": null, "new": true})
            ),
            "merge replaces top-level fields whole, nulls included"
        );
        assert_eq!(
            get(store, "users", "absent").await,
            None,
            "merge never creates"
        );
    }

    pub async fn increment_adds_at_dotted_paths(store: &dyn ReadStore) {
        ops(
            store,
            vec![upsert("stats", "s", json!({"id": "s", "count": 1}))],
        )
        .await;
        ops(
            store,
            vec![
                increment("stats", "s", "count", 2.0),
                increment("stats", "s", "by_type.document", 1.0),
                increment("stats", "s", "by_type.document", 1.0),
                increment("stats", "s", "by_type.file", -1.0),
                increment("stats", "s", "ratio", 0.5),
                increment("stats", "absent", "count", 1.0),
            ],
        )
        .await;
        let doc = get(store, "stats", "s").await.expect("doc exists");
        // Whole increments stay integers (3, not 3.0).
        assert_eq!(doc["count"], json!(3));
        assert_eq!(doc["by_type"], json!({"document": 2, "file": -1}));
        assert_eq!(doc["ratio"].as_f64(), Some(0.5));
        assert_eq!(
            get(store, "stats", "absent").await,
            None,
            "increment never creates"
        );
    }

    fn insert_if_absent(collection: &str, id: &str, doc: Value) -> DocOp {
        DocOp::InsertIfAbsent {
            collection: collection.into(),
            id: id.into(),
            doc,
        }
    }

    pub async fn insert_if_absent_creates_only_missing_documents(store: &dyn ReadStore) {
        let zero = json!({"id": "k", "count": 0, "buckets": {}});
        ops(store, vec![insert_if_absent("counters", "k", zero.clone())]).await;
        assert_eq!(
            get(store, "counters", "k").await,
            Some(zero.clone()),
            "absent: created"
        );
        ops(
            store,
            vec![
                increment("counters", "k", "count", 2.0),
                insert_if_absent("counters", "k", json!({"id": "k", "other": true})),
            ],
        )
        .await;
        assert_eq!(
            get(store, "counters", "k").await,
            Some(json!({"id": "k", "count": 2, "buckets": {}})),
            "present: untouched"
        );
        // The counter pattern: create if absent, then increment, in one apply.
        let bump = |id: &str| {
            vec![
                insert_if_absent("counters", id, json!({"id": id, "count": 0, "buckets": {}})),
                increment("counters", id, "count", 1.0),
                increment("counters", id, "buckets.b17", 1.0),
            ]
        };
        ops(store, [bump("k"), bump("fresh"), bump("fresh")].concat()).await;
        assert_eq!(
            get(store, "counters", "k").await,
            Some(json!({"id": "k", "count": 3, "buckets": {"b17": 1}}))
        );
        assert_eq!(
            get(store, "counters", "fresh").await,
            Some(json!({"id": "fresh", "count": 2, "buckets": {"b17": 2}}))
        );
        // Same id, other collection: created there.
        ops(
            store,
            vec![insert_if_absent("other", "k", json!({"id": "k"}))],
        )
        .await;
        assert_eq!(get(store, "other", "k").await, Some(json!({"id": "k"})));
        // Part of an apply that fails: not created.
        let failed = store
            .apply(
                "contract",
                vec![
                    insert_if_absent("counters", "never", json!({"id": "never"})),
                    increment("counters", "k", "count", f64::NAN),
                ],
                vec![],
                0,
            )
            .await;
        assert!(failed.is_err(), "a NaN increment fails the apply");
        assert_eq!(get(store, "counters", "never").await, None);
    }

    /// Counters shared by many aggregates (create if absent, then increment; a reset from
    /// another aggregate upserts zero) count every event once, whatever the redelivery.
    pub async fn shared_counters_count_each_event_once(store: &dyn ReadStore) {
        let bump = |key: &str, sequence: u64, position: u64| {
            projected(
                key,
                sequence,
                position,
                Ok(vec![
                    insert_if_absent("m", "t", json!({"id": "t", "count": 0, "reset": null})),
                    increment("m", "t", "count", 1.0),
                    increment("m", "t", "buckets.b3", 1.0),
                ]),
            )
        };
        let batch = vec![
            bump("cmd/1", 1, 1),
            bump("cmd/2", 1, 2),
            bump("cmd/1", 2, 3),
        ];
        let (x, y) = tokio::join!(
            store.apply_projected("sc", batch.clone(), 3),
            store.apply_projected("sc", batch.clone(), 3),
        );
        x.expect("first delivery");
        y.expect("second delivery");
        store
            .apply_projected("sc", batch, 3)
            .await
            .expect("redelivery");
        assert_eq!(
            get(store, "m", "t").await,
            Some(json!({"id": "t", "count": 3, "reset": null, "buckets": {"b3": 3}}))
        );
        let reset = projected(
            "metrics/1",
            1,
            4,
            Ok(vec![upsert(
                "m",
                "t",
                json!({"id": "t", "count": 0, "reset": "r1"}),
            )]),
        );
        let after = vec![reset, bump("cmd/3", 1, 5)];
        let (x, y) = tokio::join!(
            store.apply_projected("sc", after.clone(), 5),
            store.apply_projected("sc", after.clone(), 5),
        );
        x.expect("first delivery");
        y.expect("second delivery");
        assert_eq!(
            get(store, "m", "t").await,
            Some(json!({"id": "t", "count": 1, "reset": "r1", "buckets": {"b3": 1}}))
        );
        assert_eq!(store.checkpoint("sc").await.expect("checkpoint"), 5);
    }

    pub async fn delete_removes_one_document(store: &dyn ReadStore) {
        ops(
            store,
            vec![
                upsert("users", "u1", json!({"id": "u1"})),
                upsert("users", "u2", json!({"id": "u2"})),
            ],
        )
        .await;
        let delete = |id: &str| DocOp::Delete {
            collection: "users".into(),
            id: id.into(),
        };
        ops(store, vec![delete("u1"), delete("absent")]).await;
        assert_eq!(get(store, "users", "u1").await, None);
        assert_eq!(get(store, "users", "u2").await, Some(json!({"id": "u2"})));
    }

    pub async fn delete_where_matches_field_and_type(store: &dyn ReadStore) {
        ops(
            store,
            vec![
                upsert("payments", "p1", json!({"id": "p1", "user_id": "u1"})),
                upsert("payments", "p2", json!({"id": "p2", "user_id": "u1"})),
                upsert("payments", "p3", json!({"id": "p3", "user_id": "u2"})),
                upsert("payments", "p4", json!({"id": "p4", "user_id": 1})),
                upsert("orders", "o1", json!({"id": "o1", "user_id": "u1"})),
            ],
        )
        .await;
        ops(
            store,
            vec![DocOp::DeleteWhere {
                collection: "payments".into(),
                field: "user_id".into(),
                value: json!("u1"),
            }],
        )
        .await;
        assert_eq!(
            find_ids(store, "payments", &query(&[])).await,
            vec!["p3", "p4"]
        );
        assert!(
            get(store, "orders", "o1").await.is_some(),
            "other collections untouched"
        );
    }

    pub async fn tombstone_where_replaces_matches(store: &dyn ReadStore) {
        ops(
            store,
            vec![
                upsert(
                    "payments",
                    "p1",
                    json!({"id": "p1", "user_id": "u1", "card": "4111"}),
                ),
                // No `id` field in the body: the tombstone takes the document key.
                upsert("payments", "p2", json!({"user_id": "u1", "card": "5500"})),
                upsert("payments", "p3", json!({"id": "p3", "user_id": "u2"})),
            ],
        )
        .await;
        ops(
            store,
            vec![DocOp::TombstoneWhere {
                collection: "payments".into(),
                field: "user_id".into(),
                value: json!("u1"),
            }],
        )
        .await;
        assert_eq!(
            get(store, "payments", "p1").await,
            Some(json!({"id": "p1", "tombstone": true}))
        );
        assert_eq!(
            get(store, "payments", "p2").await,
            Some(json!({"id": "p2", "tombstone": true}))
        );
        assert_eq!(
            get(store, "payments", "p3").await,
            Some(json!({"id": "p3", "user_id": "u2"}))
        );
    }

    pub async fn ops_apply_in_order(store: &dyn ReadStore) {
        ops(
            store,
            vec![
                upsert("c", "a", json!({"id": "a", "n": 1})),
                DocOp::Merge {
                    collection: "c".into(),
                    id: "a".into(),
                    patch: json!({"m": "x"}),
                },
                increment("c", "a", "n", 4.0),
                DocOp::Delete {
                    collection: "c".into(),
                    id: "a".into(),
                },
                // Absent again: these are no-ops.
                increment("c", "a", "n", 1.0),
                upsert("c", "b", json!({"id": "b", "n": 1})),
                increment("c", "b", "n", 1.0),
                upsert("c", "b", json!({"id": "b", "n": 10})),
            ],
        )
        .await;
        assert_eq!(get(store, "c", "a").await, None);
        assert_eq!(
            get(store, "c", "b").await,
            Some(json!({"id": "b", "n": 10}))
        );
    }

    pub async fn checkpoint_and_versions_never_move_backwards(store: &dyn ReadStore) {
        assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 0);
        let keys = vec![
            "user/1".to_owned(),
            "user/2".to_owned(),
            "user/3".to_owned(),
        ];
        assert!(store
            .versions("p", &keys)
            .await
            .expect("versions")
            .is_empty());

        let v = |a: u64, b: u64| vec![("user/1".to_owned(), a), ("user/2".to_owned(), b)];
        store.apply("p", vec![], v(3, 5), 10).await.expect("apply");
        // The same batch again (at-least-once delivery) changes nothing.
        store.apply("p", vec![], v(3, 5), 10).await.expect("apply");
        assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 10);
        assert_eq!(store.versions("p", &keys).await.expect("versions"), v(3, 5));

        // An older checkpoint and a lower version never win; a higher version does.
        store.apply("p", vec![], v(2, 7), 5).await.expect("apply");
        assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 10);
        assert_eq!(store.versions("p", &keys).await.expect("versions"), v(3, 7));
        store.apply("p", vec![], vec![], 11).await.expect("apply");
        assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 11);

        // Projections are independent.
        assert_eq!(store.checkpoint("q").await.expect("checkpoint"), 0);
        assert!(store
            .versions("q", &keys)
            .await
            .expect("versions")
            .is_empty());
    }

    pub async fn failed_apply_writes_nothing(store: &dyn ReadStore) {
        store
            .apply(
                "p",
                vec![upsert("c", "base", json!({"id": "base", "n": 1}))],
                vec![("agg/1".to_owned(), 1)],
                1,
            )
            .await
            .expect("apply");

        let bad_ops: [DocOp; 3] = [
            increment("c", "base", "bad field", 1.0),
            increment("c", "base", "n']; DROP TABLE documents; --", 1.0),
            DocOp::DeleteWhere {
                collection: "c".into(),
                field: "a.b'".into(),
                value: json!("x"),
            },
        ];
        for bad in bad_ops {
            let result = store
                .apply(
                    "p",
                    vec![
                        upsert("c", "new", json!({"id": "new"})),
                        increment("c", "base", "n", 5.0),
                        DocOp::Delete {
                            collection: "c".into(),
                            id: "base".into(),
                        },
                        bad.clone(),
                    ],
                    vec![("agg/1".to_owned(), 9), ("agg/2".to_owned(), 9)],
                    9,
                )
                .await;
            assert!(result.is_err(), "{bad:?} must fail the apply");
            assert_eq!(get(store, "c", "new").await, None);
            assert_eq!(
                get(store, "c", "base").await,
                Some(json!({"id": "base", "n": 1}))
            );
            assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 1);
            assert_eq!(
                store
                    .versions("p", &["agg/1".to_owned(), "agg/2".to_owned()])
                    .await
                    .expect("versions"),
                vec![("agg/1".to_owned(), 1)]
            );
        }
        // The store still works after the failures.
        store
            .apply("p", vec![increment("c", "base", "n", 1.0)], vec![], 2)
            .await
            .expect("apply");
        assert_eq!(
            get(store, "c", "base").await,
            Some(json!({"id": "base", "n": 2}))
        );
        // A bad field in a query is an error too, never a query.
        assert!(store
            .find("c", &query(&[("x') OR 1=1 --", json!(1))]))
            .await
            .is_err());
    }

    pub async fn find_filters_sorts_and_pages(store: &dyn ReadStore) {
        let docs = (0..25)
            .map(|i| {
                let id = format!("o{i:02}");
                upsert(
                    "orders",
                    &id,
                    json!({"id": id, "user_id": format!("u{}", i % 3), "amount": i, "paid": i % 2 == 0}),
                )
            })
            .chain(std::iter::once(upsert(
                "other",
                "x",
                json!({"id": "x", "user_id": "u1"}),
            )))
            .collect();
        ops(store, docs).await;

        let all = store.find("orders", &query(&[])).await.expect("find");
        assert_eq!(all.total, 25);
        assert_eq!(all.items.len(), 25, "limit 0 means no limit");

        let u1 = store
            .find("orders", &query(&[("user_id", json!("u1"))]))
            .await
            .expect("find");
        assert_eq!(u1.total, 8);
        assert!(u1.items.iter().all(|d| d["user_id"] == "u1"));

        // Two filters are ANDed; booleans filter as booleans.
        let q = query(&[("user_id", json!("u1")), ("paid", json!(true))]);
        assert_eq!(
            find_ids(store, "orders", &q).await,
            vec!["o04", "o10", "o16", "o22"]
        );

        // Numeric sort (2 before 10), descending, paged; total ignores paging.
        let mut q = query(&[("user_id", json!("u1"))]);
        q.sort = vec![("amount".into(), false)];
        q.limit = 3;
        q.offset = 2;
        let page = store.find("orders", &q).await.expect("find");
        assert_eq!(page.total, 8);
        assert_eq!(ids(&page.items), vec!["o16", "o13", "o10"]);

        let mut q = query(&[]);
        q.sort = vec![("amount".into(), true)];
        q.limit = 4;
        q.offset = 8;
        let page = store.find("orders", &q).await.expect("find");
        assert_eq!(ids(&page.items), vec!["o08", "o09", "o10", "o11"]);

        // Sort by a string field, then the remaining page.
        let mut q = query(&[]);
        q.sort = vec![("user_id".into(), true)];
        q.limit = 10;
        let page = store.find("orders", &q).await.expect("find");
        let users: Vec<&Value> = page.items.iter().map(|d| &d["user_id"]).collect();
        assert_eq!(users[..9], [&json!("u0"); 9]);
        assert_eq!(users[9], &json!("u1"));

        // Past the end: no items, the total still counts every match.
        let mut q = query(&[("user_id", json!("u2"))]);
        q.limit = 10;
        q.offset = 100;
        let page = store.find("orders", &q).await.expect("find");
        assert!(page.items.is_empty());
        assert_eq!(page.total, 8);
        // An offset no store can index (past i64::MAX) is just past the end too.
        q.offset = u64::MAX;
        let page = store
            .find("orders", &q)
            .await
            .expect("a huge offset is no error");
        assert!(page.items.is_empty());
        assert_eq!(page.total, 8);

        let none = store
            .find("orders", &query(&[("user_id", json!("nobody"))]))
            .await
            .expect("find");
        assert_eq!((none.items.len(), none.total), (0, 0));
        let empty = store.find("empty", &query(&[])).await.expect("find");
        assert_eq!((empty.items.len(), empty.total), (0, 0));
    }

    pub async fn equality_respects_json_types(store: &dyn ReadStore) {
        ops(
            store,
            vec![
                upsert("t", "str1", json!({"id": "str1", "code": "1"})),
                upsert("t", "int1", json!({"id": "int1", "code": 1})),
                upsert("t", "real1", json!({"id": "real1", "code": 1.0})),
                upsert("t", "real15", json!({"id": "real15", "code": 1.5})),
                upsert("t", "true", json!({"id": "true", "code": true})),
                upsert("t", "false", json!({"id": "false", "code": false})),
                upsert("t", "null", json!({"id": "null", "code": null})),
                upsert("t", "missing", json!({"id": "missing"})),
                upsert("t", "zero", json!({"id": "zero", "code": 0})),
                upsert("t", "empty", json!({"id": "empty", "code": ""})),
                upsert("t", "arr", json!({"id": "arr", "code": [1, 2]})),
                upsert(
                    "t",
                    "big",
                    json!({"id": "big", "code": 9_007_199_254_740_993_i64}),
                ),
            ],
        )
        .await;
        let by = |v: Value| query(&[("code", v)]);
        assert_eq!(find_ids(store, "t", &by(json!("1"))).await, vec!["str1"]);
        assert_eq!(
            find_ids(store, "t", &by(json!(1))).await,
            vec!["int1", "real1"]
        );
        assert_eq!(
            find_ids(store, "t", &by(json!(1.0))).await,
            vec!["int1", "real1"]
        );
        assert_eq!(find_ids(store, "t", &by(json!(1.5))).await, vec!["real15"]);
        assert_eq!(find_ids(store, "t", &by(json!(true))).await, vec!["true"]);
        assert_eq!(find_ids(store, "t", &by(json!(false))).await, vec!["false"]);
        assert_eq!(find_ids(store, "t", &by(json!(0))).await, vec!["zero"]);
        assert_eq!(find_ids(store, "t", &by(json!(""))).await, vec!["empty"]);
        assert_eq!(
            find_ids(store, "t", &by(json!(null))).await,
            vec!["missing", "null"],
            "null matches null and a missing field"
        );
        assert_eq!(find_ids(store, "t", &by(json!([1, 2]))).await, vec!["arr"]);
        // Integers compare exactly, past 2^53 too.
        assert_eq!(
            find_ids(store, "t", &by(json!(9_007_199_254_740_993_i64))).await,
            vec!["big"]
        );
    }

    /// The fields of the specification scenarios' `products` collection.
    const PRODUCT_FIELDS: &[FieldSpec] = &[
        FieldSpec::new("name", FieldKind::Text),
        FieldSpec::new("category", FieldKind::Text),
        FieldSpec::new("price", FieldKind::Number),
        FieldSpec::new("sku", FieldKind::Text),
        FieldSpec::new("active", FieldKind::Bool),
        FieldSpec::new("note", FieldKind::Text),
        FieldSpec::new("created_at", FieldKind::Time),
    ];

    /// Ten products, with a wrong-typed, a null, an array-valued and a missing field here and
    /// there (p08-p10), which no typed comparison matches.
    async fn products(store: &dyn ReadStore) {
        let time = |day: &str| format!("2024-{day}T00:00:00.000000Z");
        let docs = vec![
            json!({"id": "p01", "name": "apple", "category": "fruit", "price": 3, "sku": "10",
                   "active": true, "note": "50% off", "created_at": time("01-01")}),
            json!({"id": "p02", "name": "Banana", "category": "fruit", "price": 1.5, "sku": "9",
                   "active": true, "note": "half_price", "created_at": time("01-02")}),
            json!({"id": "p03", "name": "cherry", "category": "fruit", "price": 10, "sku": "100",
                   "active": false, "note": "5% OFF", "created_at": time("01-03")}),
            json!({"id": "p04", "name": "Daikon", "category": "veg", "price": 2, "sku": "2",
                   "active": true, "note": "x5_y", "created_at": time("02-01")}),
            json!({"id": "p05", "name": "eggplant", "category": "veg", "price": 10.0, "sku": "20",
                   "active": false, "note": "Café", "created_at": time("02-02")}),
            json!({"id": "p06", "name": "fennel", "category": "veg", "price": 7.25, "sku": "7",
                   "active": true, "note": "CAFÉ", "created_at": time("03-01")}),
            json!({"id": "p07", "name": "Garlic", "category": "spice", "price": 0.5, "sku": "1",
                   "active": true, "note": null, "created_at": time("03-02")}),
            json!({"id": "p08", "name": "horseradish", "category": "spice", "price": "5",
                   "sku": 5, "active": "yes", "created_at": time("03-03")}),
            json!({"id": "p09", "name": "ice", "category": "other"}),
            json!({"id": "p10", "name": "juniper", "category": "spice", "price": [1, 2],
                   "sku": ["1"], "active": [true], "note": ["50% off"], "created_at": null}),
        ];
        let ops_list = docs
            .into_iter()
            .map(|doc| {
                let id = doc["id"].as_str().expect("id").to_owned();
                upsert("products", &id, doc)
            })
            .collect();
        ops(store, ops_list).await;
        // Another collection with matching documents, never returned.
        ops(
            store,
            vec![upsert(
                "other",
                "x",
                json!({"id": "x", "category": "fruit", "price": 3}),
            )],
        )
        .await;
    }

    fn spec_query(filter: Value, sort: Value) -> DocQuery {
        DocQuery {
            filter: vec![],
            condition: Some(parse_filter(&filter, PRODUCT_FIELDS).expect("valid filter")),
            sort: parse_sort(&sort, PRODUCT_FIELDS).expect("valid sort"),
            limit: 0,
            offset: 0,
        }
    }

    fn cond(field: &str, op: &str, value: Value) -> Value {
        json!({"field": field, "op": op, "value": value})
    }

    pub async fn specifications_filter_by_every_op(store: &dyn ReadStore) {
        products(store).await;
        let table: Vec<(Value, Vec<&str>)> = vec![
            (
                cond("category", "eq", json!("fruit")),
                vec!["p01", "p02", "p03"],
            ),
            // ne and not match missing, null and wrong-typed fields too.
            (
                cond("category", "ne", json!("fruit")),
                vec!["p04", "p05", "p06", "p07", "p08", "p09", "p10"],
            ),
            // Numbers compare numerically (10 > 2, 10.0 == 10); "5" and [1, 2] are no numbers.
            (
                cond("price", "gt", json!(2)),
                vec!["p01", "p03", "p05", "p06"],
            ),
            (
                cond("price", "gte", json!(2)),
                vec!["p01", "p03", "p04", "p05", "p06"],
            ),
            (cond("price", "lt", json!(2)), vec!["p02", "p07"]),
            (cond("price", "lte", json!(2)), vec!["p02", "p04", "p07"]),
            (cond("price", "eq", json!(10)), vec!["p03", "p05"]),
            (cond("price", "eq", json!(10.0)), vec!["p03", "p05"]),
            (cond("price", "eq", json!(5)), vec![]),
            (
                cond("price", "ne", json!(10)),
                vec!["p01", "p02", "p04", "p06", "p07", "p08", "p09", "p10"],
            ),
            // Text compares by bytes: "10" < "2" < "20" < "9", the number 5 is no text.
            (cond("sku", "gt", json!("2")), vec!["p02", "p05", "p06"]),
            (cond("sku", "lt", json!("2")), vec!["p01", "p03", "p07"]),
            (
                cond("sku", "gte", json!("2")),
                vec!["p02", "p04", "p05", "p06"],
            ),
            (cond("sku", "lte", json!("10")), vec!["p01", "p07"]),
            (
                cond("name", "gt", json!("Z")),
                vec!["p01", "p03", "p05", "p06", "p08", "p09", "p10"],
            ),
            (cond("name", "eq", json!("Apple")), vec![]),
            // in: per element, never inside an array field.
            (
                cond("price", "in", json!([3, 10])),
                vec!["p01", "p03", "p05"],
            ),
            (cond("price", "in", json!([1, 2])), vec!["p04"]),
            (
                cond("category", "in", json!(["veg", "spice"])),
                vec!["p04", "p05", "p06", "p07", "p08", "p10"],
            ),
            (cond("sku", "in", json!(["1", "5"])), vec!["p07"]),
            // Booleans match booleans only ("yes" and [true] are none).
            (
                cond("active", "eq", json!(true)),
                vec!["p01", "p02", "p04", "p06", "p07"],
            ),
            (cond("active", "eq", json!(false)), vec!["p03", "p05"]),
            (
                cond("active", "ne", json!(true)),
                vec!["p03", "p05", "p08", "p09", "p10"],
            ),
            (
                cond("active", "in", json!([true, false])),
                vec!["p01", "p02", "p03", "p04", "p05", "p06", "p07"],
            ),
            // contains: literal % and _, ASCII letters folded, other letters not.
            (cond("note", "contains", json!("%")), vec!["p01", "p03"]),
            (cond("note", "contains", json!("off")), vec!["p01", "p03"]),
            (cond("note", "contains", json!("0% O")), vec!["p01"]),
            (cond("note", "contains", json!("_")), vec!["p02", "p04"]),
            (cond("note", "contains", json!("5_")), vec!["p04"]),
            (cond("note", "contains", json!("5%")), vec!["p03"]),
            (cond("note", "contains", json!("caf")), vec!["p05", "p06"]),
            (cond("note", "contains", json!("café")), vec!["p05"]),
            (cond("note", "contains", json!("É")), vec!["p06"]),
            (cond("note", "contains", json!(".*")), vec![]),
            (
                cond("note", "contains", json!("")),
                vec!["p01", "p02", "p03", "p04", "p05", "p06"],
            ),
            (cond("name", "contains", json!("AN")), vec!["p02", "p05"]),
            // Times compare as instants: the offset is normalised to UTC.
            (
                cond("created_at", "lt", json!("2024-01-02T01:00:00+01:00")),
                vec!["p01"],
            ),
            (
                cond("created_at", "gte", json!("2024-03-02T00:00:00Z")),
                vec!["p07", "p08"],
            ),
            (
                cond("created_at", "eq", json!("2024-02-01T00:00:00Z")),
                vec!["p04"],
            ),
        ];
        for (filter, expected) in table {
            let found = find_ids(store, "products", &spec_query(filter.clone(), json!([]))).await;
            assert_eq!(found, expected, "filter {filter}");
        }
    }

    pub async fn specifications_combine_with_and_or_not(store: &dyn ReadStore) {
        products(store).await;
        let table: Vec<(Value, Vec<&str>)> = vec![
            (
                json!({"and": [cond("category", "eq", json!("fruit")), cond("price", "lt", json!(5))]}),
                vec!["p01", "p02"],
            ),
            (
                json!({"or": [cond("category", "eq", json!("spice")), cond("price", "gte", json!(10))]}),
                vec!["p03", "p05", "p07", "p08", "p10"],
            ),
            (
                json!({"not": cond("category", "eq", json!("fruit"))}),
                vec!["p04", "p05", "p06", "p07", "p08", "p09", "p10"],
            ),
            // not is the exact complement: missing, null and wrong-typed prices included.
            (
                json!({"not": cond("price", "lt", json!(5))}),
                vec!["p03", "p05", "p06", "p08", "p09", "p10"],
            ),
            (
                json!({"not": {"not": cond("price", "lt", json!(5))}}),
                vec!["p02", "p01", "p04", "p07"],
            ),
            (
                json!({"or": [
                    {"and": [cond("category", "eq", json!("veg")),
                             {"not": cond("active", "eq", json!(true))}]},
                    {"and": [cond("category", "eq", json!("fruit")),
                             cond("price", "gt", json!(2)),
                             {"not": cond("note", "contains", json!("50%"))}]},
                ]}),
                vec!["p03", "p05"],
            ),
            // De Morgan: not(a or b) == not a and not b.
            (
                json!({"not": {"or": [cond("category", "eq", json!("fruit")),
                                       cond("active", "eq", json!(true))]}}),
                vec!["p05", "p08", "p09", "p10"],
            ),
            (
                json!({"and": [{"not": cond("category", "eq", json!("fruit"))},
                               {"not": cond("active", "eq", json!(true))}]}),
                vec!["p05", "p08", "p09", "p10"],
            ),
            (
                json!({"and": [cond("price", "gt", json!(100)), cond("price", "lt", json!(0))]}),
                vec![],
            ),
        ];
        for (filter, expected) in table {
            let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
            expected.sort();
            let found = find_ids(store, "products", &spec_query(filter.clone(), json!([]))).await;
            assert_eq!(found, expected, "filter {filter}");
        }

        // The equality filter and the specification combine with and.
        let mut q = spec_query(cond("price", "gt", json!(2)), json!([]));
        q.filter = vec![("category".to_owned(), json!("fruit"))];
        assert_eq!(find_ids(store, "products", &q).await, vec!["p01", "p03"]);
    }

    pub async fn specifications_sort_by_several_keys_and_page(store: &dyn ReadStore) {
        products(store).await;
        let page_ids = |q: DocQuery| async move {
            let page = store.find("products", &q).await.expect("find succeeds");
            (ids(&page.items), page.total)
        };
        let fruit_or_veg = cond("category", "in", json!(["fruit", "veg"]));

        // Numeric descending; the tie at 10 breaks by id, in the last key's direction.
        let (found, total) = page_ids(spec_query(
            fruit_or_veg.clone(),
            json!([{"field": "price", "dir": "desc"}]),
        ))
        .await;
        assert_eq!(found, vec!["p05", "p03", "p06", "p01", "p04", "p02"]);
        assert_eq!(total, 6);

        // A second key orders the tie first.
        let (found, _) = page_ids(spec_query(
            fruit_or_veg.clone(),
            json!([{"field": "price", "dir": "desc"}, {"field": "category"}]),
        ))
        .await;
        assert_eq!(found, vec!["p03", "p05", "p06", "p01", "p04", "p02"]);

        let (found, _) = page_ids(spec_query(
            fruit_or_veg,
            json!([{"field": "category", "dir": "desc"}, {"field": "price", "dir": "asc"}]),
        ))
        .await;
        assert_eq!(found, vec!["p04", "p06", "p05", "p02", "p01", "p03"]);

        // Text sorts by bytes (upper case first); ties within a category break by id.
        let every = json!({"not": cond("category", "eq", json!("none"))});
        let (found, total) = page_ids(spec_query(every.clone(), json!([{"field": "name"}]))).await;
        assert_eq!(
            found,
            vec!["p02", "p04", "p07", "p01", "p03", "p05", "p06", "p08", "p09", "p10"]
        );
        assert_eq!(total, 10);
        let (found, _) = page_ids(spec_query(every, json!([{"field": "category"}]))).await;
        assert_eq!(
            found,
            vec!["p01", "p02", "p03", "p09", "p07", "p08", "p10", "p04", "p05", "p06"]
        );

        // Pages: the total counts every match, pages split the sorted list.
        let not_other = cond("category", "ne", json!("other"));
        let mut pages = Vec::new();
        for offset in [0, 3, 6, 9] {
            let mut q = spec_query(not_other.clone(), json!([{"field": "name", "dir": "asc"}]));
            q.limit = 3;
            q.offset = offset;
            let (found, total) = page_ids(q).await;
            assert_eq!(total, 9, "offset {offset}");
            pages.push(found);
        }
        assert_eq!(
            pages,
            vec![
                vec!["p02", "p04", "p07"],
                vec!["p01", "p03", "p05"],
                vec!["p06", "p08", "p10"],
                vec![],
            ]
        );
    }

    pub async fn reset_drops_only_that_projection(store: &dyn ReadStore) {
        store
            .apply(
                "p",
                vec![
                    upsert("pa", "1", json!({"id": "1"})),
                    upsert("pb", "1", json!({"id": "1"})),
                ],
                vec![("agg/1".to_owned(), 4)],
                7,
            )
            .await
            .expect("apply");
        store
            .apply(
                "q",
                vec![upsert("qa", "1", json!({"id": "1"}))],
                vec![("agg/1".to_owned(), 2)],
                3,
            )
            .await
            .expect("apply");

        store.reset("p", &["pa", "pb"]).await.expect("reset");
        assert_eq!(get(store, "pa", "1").await, None);
        assert_eq!(get(store, "pb", "1").await, None);
        assert_eq!(store.find("pa", &query(&[])).await.expect("find").total, 0);
        assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 0);
        let keys = ["agg/1".to_owned()];
        assert!(store
            .versions("p", &keys)
            .await
            .expect("versions")
            .is_empty());

        assert_eq!(get(store, "qa", "1").await, Some(json!({"id": "1"})));
        assert_eq!(store.checkpoint("q").await.expect("checkpoint"), 3);
        assert_eq!(
            store.versions("q", &keys).await.expect("versions"),
            vec![("agg/1".to_owned(), 2)]
        );

        // After a reset the projection starts over from scratch, checkpoint included.
        store.apply("p", vec![], vec![], 2).await.expect("apply");
        assert_eq!(store.checkpoint("p").await.expect("checkpoint"), 2);
    }

    /// Each event's effect lands once, however often and however concurrently it is
    /// delivered, and an older sequence than the stored one changes nothing.
    pub async fn guarded_effects_apply_once(store: &dyn ReadStore) {
        ops(store, vec![upsert("c", "a", json!({"id": "a", "n": 0}))]).await;
        let effect = |sequence: u64| EventEffect {
            aggregate_key: "agg/1".into(),
            sequence,
            ops: vec![increment("c", "a", "n", 1.0)],
        };
        let batch = vec![effect(1), effect(2), effect(3)];
        let (first, second) = tokio::join!(
            store.apply_guarded("g", batch.clone(), 3),
            store.apply_guarded("g", batch.clone(), 3),
        );
        first.expect("first delivery");
        second.expect("second delivery");
        store
            .apply_guarded("g", batch, 3)
            .await
            .expect("redelivery");
        store
            .apply_guarded("g", vec![effect(2)], 2)
            .await
            .expect("an old event");
        assert_eq!(get(store, "c", "a").await, Some(json!({"id": "a", "n": 3})));
        assert_eq!(store.checkpoint("g").await.expect("checkpoint"), 3);
        assert_eq!(
            store
                .versions("g", &["agg/1".into()])
                .await
                .expect("versions"),
            vec![("agg/1".to_string(), 3)]
        );
        store
            .apply_guarded("g", vec![effect(4), effect(4), effect(5)], 7)
            .await
            .expect("next events, one duplicated within the batch");
        assert_eq!(get(store, "c", "a").await, Some(json!({"id": "a", "n": 5})));
        assert_eq!(store.checkpoint("g").await.expect("checkpoint"), 7);
    }

    fn projected(
        key: &str,
        sequence: u64,
        position: u64,
        outcome: Result<Vec<DocOp>, &str>,
    ) -> ProjectedEvent {
        ProjectedEvent {
            aggregate_key: key.into(),
            sequence,
            position,
            event_id: format!("ev-{key}-{sequence}"),
            outcome: outcome.map_err(str::to_string),
            envelope: json!({ "aggregate_key": key, "sequence": sequence, "position": position })
                .into(),
        }
    }

    async fn parked_seqs(store: &dyn ReadStore, projection: &str) -> Vec<(String, u64)> {
        let page = store
            .parked(projection, 0, 0)
            .await
            .expect("parked succeeds");
        assert_eq!(page.total as usize, page.items.len());
        page.items
            .into_iter()
            .map(|p| (p.aggregate_key, p.sequence))
            .collect()
    }

    /// Ordered parking at the store: a failed event parks with every later event of its
    /// aggregate, others apply, the checkpoint moves; redelivery changes nothing; a retry
    /// applies in order up to the first failure.
    pub async fn projected_events_park_in_order_and_retry(store: &dyn ReadStore) {
        let inc = |id: &str| vec![increment("c", id, "n", 1.0)];
        let batch = vec![
            projected(
                "a/1",
                1,
                1,
                Ok(vec![upsert("c", "a", json!({"id": "a", "n": 0}))]),
            ),
            projected(
                "b/1",
                1,
                2,
                Ok(vec![upsert("c", "b", json!({"id": "b", "n": 0}))]),
            ),
            projected("a/1", 2, 3, Err("boom at 2")),
            projected("b/1", 2, 4, Ok(inc("b"))),
            projected("a/1", 3, 5, Ok(inc("a"))),
        ];
        let report = store
            .apply_projected("pk", batch.clone(), 5)
            .await
            .expect("apply");
        assert_eq!((report.applied, report.parked, report.skipped), (3, 2, 0));
        assert_eq!(store.checkpoint("pk").await.expect("checkpoint"), 5);
        assert_eq!(
            parked_seqs(store, "pk").await,
            vec![("a/1".to_string(), 2), ("a/1".to_string(), 3)]
        );
        let page = store.parked("pk", 1, 1).await.expect("parked page");
        assert_eq!(page.total, 2);
        assert_eq!(page.items[0].sequence, 3);
        assert!(page.items[0].error.contains("held back"), "{page:?}");
        let first = store
            .parked_by_id("pk", "ev-a/1-2")
            .await
            .expect("by id")
            .expect("parked");
        assert_eq!(first.error, "boom at 2");
        assert_eq!(first.position, 3);
        assert_eq!(first.envelope["sequence"], json!(2));
        assert!(store
            .parked_by_id("pk", "nope")
            .await
            .expect("by id")
            .is_none());

        // Redelivery, twice at once and once more: nothing changes.
        let (x, y) = tokio::join!(
            store.apply_projected("pk", batch.clone(), 5),
            store.apply_projected("pk", batch.clone(), 5),
        );
        assert_eq!(
            x.expect("redelivery").applied + y.expect("redelivery").applied,
            0
        );
        assert_eq!(
            store
                .apply_projected("pk", batch, 5)
                .await
                .expect("again")
                .skipped,
            5
        );
        assert_eq!(get(store, "c", "a").await, Some(json!({"id": "a", "n": 0})));
        assert_eq!(get(store, "c", "b").await, Some(json!({"id": "b", "n": 1})));

        // A later event of the parked aggregate parks; another aggregate still flows.
        let more = vec![
            projected("a/1", 4, 6, Ok(inc("a"))),
            projected("b/1", 3, 7, Ok(inc("b"))),
        ];
        let report = store.apply_projected("pk", more, 7).await.expect("apply");
        assert_eq!((report.applied, report.parked), (1, 1));
        assert_eq!(
            store
                .parked_of("pk", "a/1")
                .await
                .expect("parked_of")
                .iter()
                .map(|p| p.sequence)
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );

        // Retry: 2 applies now, 3 still fails (new error), 4 stays behind it.
        let retry = vec![
            projected("a/1", 2, 3, Ok(inc("a"))),
            projected("a/1", 3, 5, Err("still broken")),
            projected("a/1", 4, 6, Ok(inc("a"))),
        ];
        let report = store.retry_parked("pk", retry).await.expect("retry");
        assert_eq!((report.applied, report.still_parked), (1, 2));
        let left = store.parked_of("pk", "a/1").await.expect("parked_of");
        assert_eq!(
            left.iter().map(|p| p.sequence).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(left[0].error, "still broken");
        assert_eq!(get(store, "c", "a").await, Some(json!({"id": "a", "n": 1})));

        // Retrying from the middle is refused: the first parked event must go first.
        let report = store
            .retry_parked("pk", vec![projected("a/1", 4, 6, Ok(inc("a")))])
            .await
            .expect("retry");
        assert_eq!((report.applied, report.still_parked), (0, 2));
        assert!(store.parked_of("pk", "a/1").await.expect("parked_of")[0]
            .error
            .contains("first parked"));

        // The fix: everything applies in order and the aggregate flows again.
        let retry = vec![
            projected("a/1", 3, 5, Ok(inc("a"))),
            projected("a/1", 4, 6, Ok(inc("a"))),
        ];
        let report = store
            .retry_parked("pk", retry.clone())
            .await
            .expect("retry");
        assert_eq!((report.applied, report.still_parked), (2, 0));
        assert!(parked_seqs(store, "pk").await.is_empty());
        let again = store.retry_parked("pk", retry).await.expect("retry again");
        assert_eq!((again.applied, again.still_parked), (0, 0));
        assert_eq!(get(store, "c", "a").await, Some(json!({"id": "a", "n": 3})));
        assert_eq!(
            store
                .versions("pk", &["a/1".into(), "b/1".into()])
                .await
                .expect("versions"),
            vec![("a/1".to_string(), 4), ("b/1".to_string(), 3)]
        );
        let report = store
            .apply_projected("pk", vec![projected("a/1", 5, 8, Ok(inc("a")))], 8)
            .await
            .expect("apply");
        assert_eq!(report.applied, 1);
        assert_eq!(get(store, "c", "a").await, Some(json!({"id": "a", "n": 4})));
        assert_eq!(store.checkpoint("pk").await.expect("checkpoint"), 8);
    }

    pub async fn status_documents_merge_fields(store: &dyn ReadStore) {
        assert_eq!(store.status("st").await.expect("status"), None);
        store
            .merge_status(
                "st",
                json!({"paused": true, "rebuild": {"state": "running"}}),
            )
            .await
            .expect("merge");
        store
            .merge_status("st", json!({"events_per_second": 1.5}))
            .await
            .expect("merge");
        store
            .merge_status("st", json!({"paused": false, "rebuild": {"state": "done"}}))
            .await
            .expect("merge");
        let expected = json!({
            "name": "st", "paused": false, "events_per_second": 1.5,
            "rebuild": {"state": "done"},
        });
        assert_eq!(
            store.status("st").await.expect("status"),
            Some(expected.clone())
        );
        assert_eq!(get(store, STATUS_COLLECTION, "st").await, Some(expected));
        assert_eq!(store.status("other").await.expect("status"), None);
        assert!(store
            .merge_status("st", json!({"bad field": 1}))
            .await
            .is_err());
    }

    /// Blue/green: a shadow generation is built beside the live one, swapped in only when it
    /// has seen everything the live one has, atomically; live writes then follow it.
    pub async fn generations_swap_atomically(store: &dyn ReadStore) {
        let set = |v: &str| {
            vec![DocOp::Merge {
                collection: "gc".into(),
                id: "x".into(),
                patch: json!({ "v": v }),
            }]
        };
        let shadow_key = |g: u64| generation_key("gp", g);
        assert_eq!(store.generation("gp").await.expect("generation"), 0);
        store
            .apply_projected(
                "gp",
                vec![projected(
                    "a/1",
                    1,
                    1,
                    Ok(vec![upsert("gc", "x", json!({"id": "x", "v": "live1"}))]),
                )],
                1,
            )
            .await
            .expect("live apply");
        // A collection of another projection, never touched by the swap.
        ops(store, vec![upsert("other", "o", json!({"id": "o"}))]).await;

        let generation = store.begin_generation("gp", &["gc"]).await.expect("begin");
        assert_eq!(generation, 1);
        let second = store.begin_generation("gp", &["gc"]).await;
        assert!(
            matches!(second, Err(kernel::KernelError::Rejected(_))),
            "one rebuild at a time: {second:?}"
        );
        // The shadow fills up while reads still see the live copy.
        store
            .apply_projected(
                &shadow_key(1),
                vec![projected(
                    "a/1",
                    1,
                    1,
                    Ok(vec![upsert("gc", "x", json!({"id": "x", "v": "shadow1"}))]),
                )],
                1,
            )
            .await
            .expect("shadow apply");
        assert_eq!(get(store, "gc", "x").await.expect("doc")["v"], "live1");
        assert_eq!(store.find("gc", &query(&[])).await.expect("find").total, 1);
        // The live copy moves on: the shadow is behind, so the swap is refused.
        store
            .apply_projected("gp", vec![projected("a/1", 2, 2, Ok(set("live2")))], 2)
            .await
            .expect("live apply");
        assert!(!store.swap_generation("gp", 1).await.expect("swap"));
        assert_eq!(store.generation("gp").await.expect("generation"), 0);
        assert_eq!(get(store, "gc", "x").await.expect("doc")["v"], "live2");
        // Caught up (one event parked in the shadow counts as seen): the swap goes through.
        store
            .apply_projected(
                &shadow_key(1),
                vec![projected("a/1", 2, 2, Err("shadow parks it"))],
                2,
            )
            .await
            .expect("shadow apply");
        assert!(store.swap_generation("gp", 1).await.expect("swap"));
        assert_eq!(store.generation("gp").await.expect("generation"), 1);
        assert_eq!(get(store, "gc", "x").await.expect("doc")["v"], "shadow1");
        assert_eq!(store.checkpoint("gp").await.expect("checkpoint"), 2);
        assert_eq!(parked_seqs(store, "gp").await, vec![("a/1".to_string(), 2)]);
        assert_eq!(
            store.checkpoint(&shadow_key(0)).await.expect("checkpoint"),
            0,
            "the old generation is dropped"
        );
        assert_eq!(get(store, "other", "o").await, Some(json!({"id": "o"})));
        // Live writes (by name) now land in the new generation; an explicit write to a
        // generation that is neither active nor being built is refused.
        store
            .apply_projected(
                "gp",
                vec![projected(
                    "b/1",
                    1,
                    3,
                    Ok(vec![upsert("gc", "y", json!({"id": "y"}))]),
                )],
                3,
            )
            .await
            .expect("live apply");
        assert_eq!(get(store, "gc", "y").await, Some(json!({"id": "y"})));
        assert!(store
            .apply_projected(&shadow_key(7), vec![], 3)
            .await
            .is_err());

        // An abandoned rebuild leaves the live copy alone, and the next one may start.
        let next = store.begin_generation("gp", &["gc"]).await.expect("begin");
        assert_eq!(next, 2);
        store
            .apply_projected(
                &shadow_key(2),
                vec![projected(
                    "a/1",
                    1,
                    1,
                    Ok(vec![upsert(
                        "gc",
                        "x",
                        json!({"id": "x", "v": "abandoned"}),
                    )]),
                )],
                1,
            )
            .await
            .expect("shadow apply");
        store.abandon_generation("gp", 2).await.expect("abandon");
        assert!(
            store.abandon_generation("gp", 1).await.is_err(),
            "the active one stays"
        );
        assert_eq!(store.generation("gp").await.expect("generation"), 1);
        assert_eq!(get(store, "gc", "x").await.expect("doc")["v"], "shadow1");
        assert_eq!(
            store.checkpoint(&shadow_key(2)).await.expect("checkpoint"),
            0
        );
        assert!(store.begin_generation("gp", &["gc"]).await.is_ok());

        // A reset clears the active generation.
        store.reset("gp", &["gc"]).await.expect("reset");
        assert_eq!(store.find("gc", &query(&[])).await.expect("find").total, 0);
        assert_eq!(store.checkpoint("gp").await.expect("checkpoint"), 0);
    }

    pub async fn ping_answers(store: &dyn ReadStore) {
        store.ping().await.expect("ping");
    }

    /// 1000 upserts in one apply, then 1000 increments: reports the time, fails if absurd.
    pub async fn bulk_apply_is_fast(store: &dyn ReadStore) {
        let upserts = (0..1000)
            .map(|i| {
                let id = format!("d{i:04}");
                upsert(
                    "bulk",
                    &id,
                    json!({"id": id, "group": format!("g{}", i % 10), "n": i, "tags": ["a", "b"]}),
                )
            })
            .collect();
        let started = Instant::now();
        store
            .apply("bulk", upserts, vec![("agg/1".to_owned(), 1000)], 1000)
            .await
            .expect("apply");
        let upsert_time = started.elapsed();

        let increments = (0..1000)
            .map(|i| increment("bulk", &format!("d{i:04}"), "n", 1.0))
            .collect();
        let started = Instant::now();
        store
            .apply("bulk", increments, vec![], 1001)
            .await
            .expect("apply");
        let increment_time = started.elapsed();

        let started = Instant::now();
        let page = store
            .find("bulk", &query(&[("group", json!("g3"))]))
            .await
            .expect("find");
        let find_time = started.elapsed();
        assert_eq!(page.total, 100);
        assert_eq!(
            get(store, "bulk", "d0999").await.expect("doc")["n"],
            json!(1000)
        );

        println!(
            "read_store_contract: 1000 upserts in {upsert_time:?}, 1000 increments in \
             {increment_time:?}, filtered find over 1000 docs in {find_time:?}"
        );
        assert!(
            upsert_time.as_secs() < 5 && increment_time.as_secs() < 5,
            "bulk apply too slow: {upsert_time:?} / {increment_time:?}"
        );
    }
}

/// Generates one test per scenario for a backend; `$store` is an async expression giving a
/// fresh store (and whatever guard keeps it alive), or `None` to skip.
macro_rules! contract {
    ($backend:ident, $store:expr, [$($scenario:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(fresh) = $store else { return };
                    super::scenarios::$scenario(fresh.store()).await;
                }
            )*
        }
    };
}

/// Every scenario, for each backend's `contract!` invocation.
macro_rules! all_scenarios {
    ($backend:ident, $store:expr) => {
        contract!(
            $backend,
            $store,
            [
                upsert_replaces_whole_document,
                merge_patches_existing_and_skips_absent,
                increment_adds_at_dotted_paths,
                insert_if_absent_creates_only_missing_documents,
                shared_counters_count_each_event_once,
                delete_removes_one_document,
                delete_where_matches_field_and_type,
                tombstone_where_replaces_matches,
                ops_apply_in_order,
                checkpoint_and_versions_never_move_backwards,
                failed_apply_writes_nothing,
                find_filters_sorts_and_pages,
                equality_respects_json_types,
                specifications_filter_by_every_op,
                specifications_combine_with_and_or_not,
                specifications_sort_by_several_keys_and_page,
                reset_drops_only_that_projection,
                guarded_effects_apply_once,
                projected_events_park_in_order_and_retry,
                status_documents_merge_fields,
                generations_swap_atomically,
                ping_answers,
                bulk_apply_is_fast,
            ]
        );
    };
}

/// A SQLite read store on its own temp file, removed (with its WAL files) on drop.
struct TempSqlite {
    store: SqliteReadStore,
    path: PathBuf,
}

impl TempSqlite {
    async fn new() -> Self {
        let path = std::env::temp_dir().join(format!("quintet-read-{}.db", uuid::Uuid::new_v4()));
        let store = SqliteReadStore::connect(path.to_str().expect("utf-8 temp path"), 4)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        // Migrating twice is harmless.
        store.migrate().await.expect("migrate again");
        Self { store, path }
    }

    fn store(&self) -> &dyn ReadStore {
        &self.store
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

all_scenarios!(sqlite, Some(TempSqlite::new().await));

#[tokio::test]
async fn sqlite_in_memory_store_works() {
    let store = SqliteReadStore::connect(":memory:", 4)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    scenarios::ops_apply_in_order(&store).await;
    scenarios::find_filters_sorts_and_pages(&store).await;
}

#[tokio::test]
async fn sqlite_store_survives_reopen() {
    let temp = TempSqlite::new().await;
    temp.store
        .apply(
            "p",
            vec![DocOp::Upsert {
                collection: "c".into(),
                id: "1".into(),
                doc: json!({"id": "1"}),
            }],
            vec![("agg/1".to_owned(), 1)],
            5,
        )
        .await
        .expect("apply");
    temp.store.close().await;
    let reopened = SqliteReadStore::connect(&format!("sqlite://{}", temp.path.display()), 2)
        .await
        .expect("reconnect");
    reopened.migrate().await.expect("migrate");
    assert_eq!(reopened.checkpoint("p").await.expect("checkpoint"), 5);
    assert_eq!(
        reopened.get("c", "1").await.expect("get"),
        Some(json!({"id": "1"}))
    );
}

/// A MongoDB read store on a database of its own (`quintet_t_<hex>` on `MONGODB_URL`),
/// dropped on drop; `None` when `MONGODB_URL` is not set.
struct TempMongo {
    store: MongoReadStore,
    url: String,
    database: String,
}

impl TempMongo {
    async fn new() -> Option<Self> {
        let url = std::env::var("MONGODB_URL").ok()?;
        let database = format!(
            "quintet_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let store = MongoReadStore::connect(&url, &database)
            .await
            .expect("connect to MONGODB_URL")
            // The swap's grace period only has to outlast this test's own applies.
            .with_swap_grace(Duration::from_millis(50));
        store.migrate().await.expect("create indexes");
        store.migrate().await.expect("create indexes again");
        Some(Self {
            store,
            url,
            database,
        })
    }

    fn store(&self) -> &dyn ReadStore {
        &self.store
    }
}

impl Drop for TempMongo {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: use a runtime of our own on a thread of our own.
        let (url, database) = (self.url.clone(), self.database.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let store = MongoReadStore::connect(&url, &database).await.ok()?;
                store.drop_database().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.database);
        }
    }
}

all_scenarios!(mongodb, TempMongo::new().await);

#[test]
fn mongodb_contract() {
    // The `mongodb::*` tests above run the whole contract when MONGODB_URL is set, and return
    // at once otherwise. No MongoDB server can be installed here, so none is faked.
    match std::env::var("MONGODB_URL") {
        Ok(_) => println!("read_store_contract: running the MongoDB contract against MONGODB_URL"),
        Err(_) => println!("read_store_contract: MONGODB_URL not set, skipping the MongoDB run"),
    }
}

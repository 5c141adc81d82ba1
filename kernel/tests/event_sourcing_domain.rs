//! Given/when/then tests of the event-sourcing context's aggregates (the four generic
//! kinds and the snapshot log), its projection, and its schema-fixture support: one test
//! per rule, each event and each error path.

mod event_sourcing {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Duration, TimeZone, Utc};
    use cqrs_es::test::TestFramework;
    use cqrs_es::{Aggregate, DomainEvent};
    use kernel::domain::event_sourcing::projection::{
        assemble, field_doc_id, snapshot_doc_id, AGGREGATES, FIELDS, PROJECTION_NAME, SNAPSHOTS,
    };
    use kernel::domain::event_sourcing::{
        fixtures, AggregateKind, CustomAggregate, EventKind, EventSourcingPolicy,
        EventSourcingProjection, GenericCommand as C, GenericEvent, GenericState, OrderAggregate,
        PaymentAggregate, SnapshotLog, SnapshotLogCommand, SnapshotLogEvent, UserAggregate,
        ValidationRules, SNAPSHOT_LOG,
    };
    use kernel::domain::projection::{Projection, AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
    use kernel::domain::DomainError;
    use kernel::envelope::RecordedEvent;
    use kernel::ports::DocOp;
    use serde_json::{json, Map, Value};
    use uuid::Uuid;

    type UserTest = TestFramework<UserAggregate>;
    type OrderTest = TestFramework<OrderAggregate>;
    type PaymentTest = TestFramework<PaymentAggregate>;
    type CustomTest = TestFramework<CustomAggregate>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date")
            + Duration::seconds(secs)
    }

    fn policy() -> EventSourcingPolicy {
        EventSourcingPolicy::default()
    }

    fn obj(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("a JSON object")
    }

    fn ev(kind: EventKind, data: Value, secs: i64) -> GenericEvent {
        GenericEvent {
            kind,
            data: obj(data),
            metadata: Map::new(),
            at: t(secs),
        }
    }

    fn invalid(field: &str) -> impl Fn(DomainError) {
        let field = field.to_string();
        move |e| match e {
            DomainError::Invalid { field: Some(f), .. } if f == field => {}
            other => panic!("expected Invalid({field}), got {other:?}"),
        }
    }

    fn expect_invalid(result: Result<Vec<GenericEvent>, DomainError>, field: &str) {
        match result {
            Err(e) => invalid(field)(e),
            Ok(events) => panic!("expected Invalid({field}), got events {events:?}"),
        }
    }

    fn expect_err(result: Result<Vec<GenericEvent>, DomainError>) -> DomainError {
        result.expect_err("the command is refused")
    }

    fn create(id: &str, data: Value) -> C {
        C::Create {
            id: id.into(),
            data,
            metadata: Map::new(),
            aggregates: 0,
            at: t(0),
        }
    }

    fn publish(id: &str, event_type: &str, data: Value, expected: Option<u64>) -> C {
        C::Publish {
            id: id.into(),
            event_type: event_type.into(),
            data,
            metadata: Map::new(),
            expected_version: expected,
            aggregates: 0,
            at: t(10),
        }
    }

    fn update(id: &str, changes: Value, expected: Option<u64>) -> C {
        C::Update {
            id: id.into(),
            changes,
            metadata: Map::new(),
            expected_version: expected,
            at: t(10),
        }
    }

    fn user_created() -> GenericEvent {
        ev(
            EventKind::UserCreated,
            json!({"email": "john@example.com", "first_name": "John", "role": "user"}),
            0,
        )
    }

    fn order_created() -> GenericEvent {
        ev(
            EventKind::OrderCreated,
            json!({"status": "pending", "total": 10}),
            0,
        )
    }

    fn payment_created() -> GenericEvent {
        ev(
            EventKind::PaymentProcessed,
            json!({"amount": 10, "currency": "EUR"}),
            0,
        )
    }

    type Runner = fn(Vec<GenericEvent>, C) -> Result<Vec<GenericEvent>, DomainError>;

    fn run_user(given: Vec<GenericEvent>, cmd: C) -> Result<Vec<GenericEvent>, DomainError> {
        UserTest::with(policy())
            .given(given)
            .when(cmd)
            .inspect_result()
    }

    fn run_order(given: Vec<GenericEvent>, cmd: C) -> Result<Vec<GenericEvent>, DomainError> {
        OrderTest::with(policy())
            .given(given)
            .when(cmd)
            .inspect_result()
    }

    fn run_payment(given: Vec<GenericEvent>, cmd: C) -> Result<Vec<GenericEvent>, DomainError> {
        PaymentTest::with(policy())
            .given(given)
            .when(cmd)
            .inspect_result()
    }

    // ------------------------------------------------------------------ identity

    #[test]
    fn aggregate_types_are_prefixed_and_events_versioned() {
        assert_eq!(UserAggregate::TYPE, "es-user");
        assert_eq!(OrderAggregate::TYPE, "es-order");
        assert_eq!(PaymentAggregate::TYPE, "es-payment");
        assert_eq!(CustomAggregate::TYPE, "es-custom");
        assert_eq!(SnapshotLog::TYPE, SNAPSHOT_LOG);
        let e = user_created();
        assert_eq!(e.event_type(), "user_created");
        assert_eq!(e.event_version(), "1");
        let stored = serde_json::to_value(&e).expect("serialize");
        assert_eq!(stored["type"], "user_created");
        assert_eq!(stored["data"]["email"], "john@example.com");
        assert_eq!(stored["metadata"], json!({}));
    }

    // ------------------------------------------------------------------ create

    #[test]
    fn create_user_emits_user_created_with_the_initial_state() {
        UserTest::with(policy())
            .given_no_previous_events()
            .when(create(
                "u1",
                json!({"email": "john@example.com", "first_name": "John", "role": "user"}),
            ))
            .then_expect_events(vec![user_created()]);
    }

    #[test]
    fn create_user_needs_a_valid_email() {
        expect_invalid(
            run_user(vec![], create("u1", json!({"first_name": "John"}))),
            "data.email",
        );
        expect_invalid(
            run_user(vec![], create("u1", json!({"email": "not-an-email"}))),
            "data.email",
        );
        expect_invalid(
            run_user(vec![], create("u1", json!({"email": 42}))),
            "data.email",
        );
    }

    #[test]
    fn create_order_starts_pending_unless_it_names_a_legal_status() {
        OrderTest::with(policy())
            .given_no_previous_events()
            .when(create("o1", json!({"total": 10})))
            .then_expect_events(vec![ev(
                EventKind::OrderCreated,
                json!({"total": 10, "status": "pending"}),
                0,
            )]);
        OrderTest::with(policy())
            .given_no_previous_events()
            .when(create("o1", json!({"status": "confirmed"})))
            .then_expect_events(vec![ev(
                EventKind::OrderCreated,
                json!({"status": "confirmed"}),
                0,
            )]);
        expect_invalid(
            run_order(vec![], create("o1", json!({"status": "teleported"}))),
            "data.status",
        );
        expect_invalid(
            run_order(vec![], create("o1", json!({"items": "three"}))),
            "data.items",
        );
    }

    #[test]
    fn create_payment_emits_payment_processed_and_needs_an_amount() {
        PaymentTest::with(policy())
            .given_no_previous_events()
            .when(create("p1", json!({"amount": 10, "currency": "EUR"})))
            .then_expect_events(vec![payment_created()]);
        expect_invalid(
            run_payment(vec![], create("p1", json!({"currency": "EUR"}))),
            "data.amount",
        );
        expect_invalid(
            run_payment(vec![], create("p1", json!({"amount": -1}))),
            "data.amount",
        );
        expect_invalid(
            run_payment(vec![], create("p1", json!({"amount": "10"}))),
            "data.amount",
        );
        expect_invalid(
            run_payment(
                vec![],
                create("p1", json!({"amount": 1, "status": "stolen"})),
            ),
            "data.status",
        );
        expect_invalid(
            run_payment(vec![], create("p1", json!({"amount": 1, "currency": 978}))),
            "data.currency",
        );
    }

    #[test]
    fn create_custom_takes_any_object() {
        CustomTest::with(policy())
            .given_no_previous_events()
            .when(create("c1", json!({"anything": [1, {"x": null}]})))
            .then_expect_events(vec![ev(
                EventKind::Custom,
                json!({"anything": [1, {"x": null}]}),
                0,
            )]);
    }

    #[test]
    fn create_refuses_non_objects_bad_ids_and_existing_aggregates() {
        expect_invalid(
            run_user(vec![], create("u1", json!(["john@example.com"]))),
            "data",
        );
        expect_invalid(
            run_user(vec![], create("a/b", json!({"email": "a@b.co"}))),
            "id",
        );
        expect_invalid(
            run_user(vec![], create("", json!({"email": "a@b.co"}))),
            "id",
        );
        let err = expect_err(run_user(
            vec![user_created()],
            create("u1", json!({"email": "a@b.co"})),
        ));
        assert_eq!(err, DomainError::AlreadyExists("user u1".into()));
    }

    #[test]
    fn create_stops_at_max_aggregates() {
        let policy = EventSourcingPolicy {
            max_aggregates: 2,
            ..Default::default()
        };
        let with = |aggregates| {
            UserTest::with(policy.clone())
                .given_no_previous_events()
                .when(C::Create {
                    id: "u1".into(),
                    data: json!({"email": "a@b.co"}),
                    metadata: Map::new(),
                    aggregates,
                    at: t(0),
                })
                .inspect_result()
        };
        assert!(with(1).is_ok());
        assert!(matches!(with(2), Err(DomainError::StateConflict(_))));
    }

    #[test]
    fn create_limits_data_size_to_the_byte() {
        let policy = EventSourcingPolicy {
            validation_rules: ValidationRules {
                max_event_data_size: 20,
                ..Default::default()
            },
            ..Default::default()
        };
        // {"x":"<n chars>"} is 8 + n bytes of canonical JSON.
        let sized = |n: usize| json!({ "x": "y".repeat(n) });
        let run = |data| {
            CustomTest::with(policy.clone())
                .given_no_previous_events()
                .when(create("c1", data))
                .inspect_result()
        };
        assert!(run(sized(12)).is_ok());
        match run(sized(13)) {
            Err(DomainError::TooLarge(message)) => {
                assert!(message.contains("21 bytes"), "{message}");
                assert!(message.contains("max_event_data_size"), "{message}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn create_refuses_unsupported_types_and_oversized_metadata_or_keys() {
        let policy = EventSourcingPolicy {
            supported_aggregate_types: vec!["order".into()],
            ..Default::default()
        };
        let err = UserTest::with(policy)
            .given_no_previous_events()
            .when(create("u1", json!({"email": "a@b.co"})))
            .inspect_result()
            .expect_err("unsupported");
        invalid("aggregate_type")(err);
        let metadata: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        let result = run_user(
            vec![],
            C::Create {
                id: "u1".into(),
                data: json!({"email": "a@b.co"}),
                metadata,
                aggregates: 0,
                at: t(0),
            },
        );
        expect_invalid(result, "metadata");
        let long_key = "k".repeat(257);
        expect_invalid(
            run_user(
                vec![],
                create("u1", json!({"email": "a@b.co", long_key: 1})),
            ),
            "data",
        );
    }

    // ------------------------------------------------------------------ publish

    #[test]
    fn publish_refuses_unknown_event_types() {
        expect_invalid(
            run_user(
                vec![user_created()],
                publish("u1", "user_exploded", json!({}), None),
            ),
            "type",
        );
    }

    #[test]
    fn publish_refuses_an_event_type_that_does_not_fit_the_aggregate_type() {
        let cases: [(&str, Runner); 4] = [
            ("order_created", run_user),
            ("payment_processed", run_user),
            ("user_updated", run_order),
            ("order_status_changed", run_payment),
        ];
        for (event_type, run) in cases {
            let result = run(vec![], publish("x1", event_type, json!({}), None));
            match result {
                Err(DomainError::Invalid {
                    field: Some(field),
                    message,
                }) => {
                    assert_eq!(field, "type");
                    assert!(message.contains("does not fit"), "{message}");
                }
                other => panic!("{event_type}: expected Invalid(type), got {other:?}"),
            }
        }
        let custom_only = CustomTest::with(policy())
            .given_no_previous_events()
            .when(publish(
                "c1",
                "user_created",
                json!({"email": "a@b.co"}),
                None,
            ))
            .inspect_result();
        expect_invalid(custom_only, "type");
    }

    #[test]
    fn publish_custom_fits_every_aggregate_type() {
        let data = json!({"note": "hi"});
        let expected = vec![ev(EventKind::Custom, data.clone(), 10)];
        UserTest::with(policy())
            .given(vec![user_created()])
            .when(publish("u1", "custom", data.clone(), None))
            .then_expect_events(expected.clone());
        OrderTest::with(policy())
            .given(vec![order_created()])
            .when(publish("o1", "custom", data.clone(), None))
            .then_expect_events(expected.clone());
        PaymentTest::with(policy())
            .given(vec![payment_created()])
            .when(publish("p1", "custom", data.clone(), None))
            .then_expect_events(expected.clone());
        CustomTest::with(policy())
            .given(vec![ev(EventKind::Custom, json!({}), 0)])
            .when(publish("c1", "custom", data, None))
            .then_expect_events(expected);
    }

    #[test]
    fn publish_a_creation_event_creates_and_anything_else_needs_the_aggregate() {
        UserTest::with(policy())
            .given_no_previous_events()
            .when(publish(
                "u1",
                "user_created",
                json!({"email": "john@example.com"}),
                Some(0),
            ))
            .then_expect_events(vec![ev(
                EventKind::UserCreated,
                json!({"email": "john@example.com"}),
                10,
            )]);
        let err = expect_err(run_user(
            vec![],
            publish("u1", "user_updated", json!({"first_name": "x"}), None),
        ));
        assert_eq!(err, DomainError::NotFound("user u1".into()));
        let err = expect_err(run_user(vec![], publish("u1", "custom", json!({}), None)));
        assert_eq!(err, DomainError::NotFound("user u1".into()));
        // A creation with a stale expectation.
        let err = expect_err(run_user(
            vec![],
            publish("u1", "user_created", json!({"email": "a@b.co"}), Some(3)),
        ));
        assert!(matches!(err, DomainError::StateConflict(_)), "{err:?}");
        // The creation event again.
        let err = expect_err(run_user(
            vec![user_created()],
            publish("u1", "user_created", json!({"email": "a@b.co"}), None),
        ));
        assert_eq!(err, DomainError::AlreadyExists("user u1".into()));
        let err = expect_err(run_order(
            vec![order_created()],
            publish("o1", "order_created", json!({}), None),
        ));
        assert_eq!(err, DomainError::AlreadyExists("order o1".into()));
    }

    #[test]
    fn publish_checks_the_expected_version() {
        let err = expect_err(run_user(
            vec![user_created()],
            publish("u1", "custom", json!({}), Some(0)),
        ));
        match err {
            DomainError::StateConflict(message) => {
                assert!(message.contains("expected 0, current 1"), "{message}")
            }
            other => panic!("expected a stale version, got {other:?}"),
        }
        assert!(run_user(
            vec![user_created()],
            publish("u1", "custom", json!({}), Some(1))
        )
        .is_ok());
    }

    #[test]
    fn publish_user_updated_records_the_changes_and_their_previous_values() {
        let expected = vec![ev(
            EventKind::UserUpdated,
            json!({
                "changes": {"first_name": "Jane", "nickname": "JJ"},
                "previous": {"first_name": "John", "nickname": null},
            }),
            10,
        )];
        // Wrapped in `changes`, with a `previous` the aggregate replaces...
        UserTest::with(policy())
            .given(vec![user_created()])
            .when(publish(
                "u1",
                "user_updated",
                json!({"changes": {"first_name": "Jane", "nickname": "JJ", "role": "user"},
                       "previous": {"first_name": "forged"}}),
                Some(1),
            ))
            .then_expect_events(expected.clone());
        // ...or the changed fields themselves.
        UserTest::with(policy())
            .given(vec![user_created()])
            .when(publish(
                "u1",
                "user_updated",
                json!({"first_name": "Jane", "nickname": "JJ"}),
                None,
            ))
            .then_expect_events(expected);
        expect_invalid(
            run_user(
                vec![user_created()],
                publish(
                    "u1",
                    "user_updated",
                    json!({"changes": {"email": "nope"}}),
                    None,
                ),
            ),
            "data.changes.email",
        );
        expect_invalid(
            run_user(
                vec![user_created()],
                publish("u1", "user_updated", json!({"email": null}), None),
            ),
            "data.email",
        );
        expect_invalid(
            run_user(
                vec![user_created()],
                publish("u1", "user_updated", json!({"changes": 5}), None),
            ),
            "data.changes",
        );
        expect_invalid(
            run_user(
                vec![user_created()],
                publish("u1", "user_updated", json!({"role": "user"}), None),
            ),
            "data",
        );
    }

    #[test]
    fn publish_user_deleted_ends_the_user() {
        UserTest::with(policy())
            .given(vec![user_created()])
            .when(publish(
                "u1",
                "user_deleted",
                json!({"reason": "closed"}),
                None,
            ))
            .then_expect_events(vec![ev(
                EventKind::UserDeleted,
                json!({"reason": "closed"}),
                10,
            )]);
        expect_invalid(
            run_user(
                vec![user_created()],
                publish("u1", "user_deleted", json!({"reason": 5}), None),
            ),
            "data.reason",
        );
        let deleted = vec![user_created(), ev(EventKind::UserDeleted, json!({}), 1)];
        for cmd in [
            publish("u1", "custom", json!({"x": 1}), None),
            publish("u1", "user_deleted", json!({}), None),
            update("u1", json!({"first_name": "Jane"}), None),
        ] {
            let err = expect_err(run_user(deleted.clone(), cmd));
            assert!(matches!(err, DomainError::StateConflict(_)), "{err:?}");
        }
    }

    #[test]
    fn publish_order_status_changed_needs_a_legal_new_status() {
        OrderTest::with(policy())
            .given(vec![order_created()])
            .when(publish(
                "o1",
                "order_status_changed",
                json!({"status": "shipped", "reason": "packed"}),
                None,
            ))
            .then_expect_events(vec![ev(
                EventKind::OrderStatusChanged,
                json!({"status": "shipped", "reason": "packed", "previous_status": "pending"}),
                10,
            )]);
        for data in [json!({}), json!({"status": "lost"}), json!({"status": 3})] {
            expect_invalid(
                run_order(
                    vec![order_created()],
                    publish("o1", "order_status_changed", data, None),
                ),
                "data.status",
            );
        }
        let err = expect_err(run_order(
            vec![order_created()],
            publish(
                "o1",
                "order_status_changed",
                json!({"status": "pending"}),
                None,
            ),
        ));
        assert_eq!(
            err,
            DomainError::StateConflict("order o1 is already pending".into())
        );
        // Only order_status_changed moves the status.
        expect_invalid(
            run_order(
                vec![order_created()],
                publish("o1", "custom", json!({"status": "shipped"}), None),
            ),
            "data.status",
        );
    }

    #[test]
    fn publish_payment_processed_on_an_existing_payment_appends() {
        PaymentTest::with(policy())
            .given(vec![payment_created()])
            .when(publish(
                "p1",
                "payment_processed",
                json!({"status": "completed"}),
                Some(1),
            ))
            .then_expect_events(vec![ev(
                EventKind::PaymentProcessed,
                json!({"status": "completed"}),
                10,
            )]);
        expect_invalid(
            run_payment(
                vec![payment_created()],
                publish("p1", "payment_processed", json!({"status": "stolen"}), None),
            ),
            "data.status",
        );
    }

    #[test]
    fn publish_stops_at_max_aggregate_events() {
        let policy = EventSourcingPolicy {
            validation_rules: ValidationRules {
                max_aggregate_events: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let run = |given: Vec<GenericEvent>| {
            UserTest::with(policy.clone())
                .given(given)
                .when(publish("u1", "custom", json!({"n": 1}), None))
                .inspect_result()
        };
        assert!(run(vec![user_created()]).is_ok());
        let full = vec![user_created(), ev(EventKind::Custom, json!({"n": 0}), 1)];
        match run(full) {
            Err(DomainError::StateConflict(message)) => {
                assert!(message.contains("max_aggregate_events"), "{message}")
            }
            other => panic!("expected StateConflict, got {other:?}"),
        }
    }

    #[test]
    fn publish_limits_data_size_and_supported_event_types() {
        let small = EventSourcingPolicy {
            validation_rules: ValidationRules {
                max_event_data_size: 10,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = UserTest::with(small)
            .given(vec![user_created()])
            .when(publish(
                "u1",
                "custom",
                json!({"note": "far too long"}),
                None,
            ))
            .inspect_result()
            .expect_err("too large");
        assert!(matches!(err, DomainError::TooLarge(_)), "{err:?}");
        let no_custom = EventSourcingPolicy {
            supported_event_types: vec!["user_created".into()],
            ..Default::default()
        };
        let err = UserTest::with(no_custom)
            .given(vec![user_created()])
            .when(publish("u1", "custom", json!({}), None))
            .inspect_result()
            .expect_err("unsupported");
        invalid("type")(err);
    }

    // ------------------------------------------------------------------ update (PUT)

    #[test]
    fn update_needs_an_existing_aggregate_and_a_fresh_version() {
        let err = expect_err(run_user(vec![], update("u1", json!({"x": 1}), None)));
        assert_eq!(err, DomainError::NotFound("user u1".into()));
        let err = expect_err(run_user(
            vec![user_created()],
            update("u1", json!({"first_name": "Jane"}), Some(7)),
        ));
        assert!(matches!(err, DomainError::StateConflict(_)), "{err:?}");
    }

    #[test]
    fn update_user_emits_user_updated_with_changed_fields_and_previous_values() {
        UserTest::with(policy())
            .given(vec![user_created()])
            .when(update(
                "u1",
                json!({"first_name": "Jane", "role": "user", "role2": null, "nickname": "JJ"}),
                Some(1),
            ))
            .then_expect_events(vec![ev(
                EventKind::UserUpdated,
                json!({
                    "changes": {"first_name": "Jane", "nickname": "JJ"},
                    "previous": {"first_name": "John", "nickname": null},
                }),
                10,
            )]);
        // null removes a field, and the previous value is kept.
        UserTest::with(policy())
            .given(vec![user_created()])
            .when(update("u1", json!({"role": null}), None))
            .then_expect_events(vec![ev(
                EventKind::UserUpdated,
                json!({"changes": {"role": null}, "previous": {"role": "user"}}),
                10,
            )]);
        expect_invalid(
            run_user(
                vec![user_created()],
                update("u1", json!({"email": "x"}), None),
            ),
            "changes.email",
        );
    }

    #[test]
    fn update_order_splits_a_status_change_from_the_other_changes() {
        OrderTest::with(policy())
            .given(vec![order_created()])
            .when(update(
                "o1",
                json!({"status": "shipped", "tracking": "T1", "total": 10}),
                None,
            ))
            .then_expect_events(vec![
                ev(
                    EventKind::OrderStatusChanged,
                    json!({"status": "shipped", "previous_status": "pending"}),
                    10,
                ),
                ev(EventKind::Custom, json!({"tracking": "T1"}), 10),
            ]);
        OrderTest::with(policy())
            .given(vec![order_created()])
            .when(update("o1", json!({"status": "cancelled"}), None))
            .then_expect_events(vec![ev(
                EventKind::OrderStatusChanged,
                json!({"status": "cancelled", "previous_status": "pending"}),
                10,
            )]);
        OrderTest::with(policy())
            .given(vec![order_created()])
            .when(update(
                "o1",
                json!({"status": "pending", "note": "n"}),
                None,
            ))
            .then_expect_events(vec![ev(EventKind::Custom, json!({"note": "n"}), 10)]);
        expect_invalid(
            run_order(
                vec![order_created()],
                update("o1", json!({"status": "lost"}), None),
            ),
            "changes.status",
        );
    }

    #[test]
    fn update_payment_and_custom_emit_custom() {
        PaymentTest::with(policy())
            .given(vec![payment_created()])
            .when(update("p1", json!({"status": "completed"}), None))
            .then_expect_events(vec![ev(
                EventKind::Custom,
                json!({"status": "completed"}),
                10,
            )]);
        expect_invalid(
            run_payment(
                vec![payment_created()],
                update("p1", json!({"amount": null}), None),
            ),
            "changes.amount",
        );
        CustomTest::with(policy())
            .given(vec![ev(EventKind::Custom, json!({"a": 1}), 0)])
            .when(update("c1", json!({"a": 2}), None))
            .then_expect_events(vec![ev(EventKind::Custom, json!({"a": 2}), 10)]);
    }

    #[test]
    fn update_refuses_changes_that_change_nothing_or_are_not_objects() {
        for changes in [json!({}), json!({"role": "user"}), json!({"absent": null})] {
            expect_invalid(
                run_user(vec![user_created()], update("u1", changes, None)),
                "changes",
            );
        }
        expect_invalid(
            run_user(vec![user_created()], update("u1", json!("x"), None)),
            "changes",
        );
    }

    #[test]
    fn update_counts_every_event_against_max_aggregate_events() {
        let policy = EventSourcingPolicy {
            validation_rules: ValidationRules {
                max_aggregate_events: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = OrderTest::with(policy)
            .given(vec![order_created()])
            .when(update(
                "o1",
                json!({"status": "shipped", "note": "x"}),
                None,
            ))
            .inspect_result()
            .expect_err("two events do not fit");
        assert!(matches!(err, DomainError::StateConflict(_)), "{err:?}");
    }

    // ------------------------------------------------------------------ apply

    #[test]
    fn apply_folds_state_version_activity_times_and_metadata() {
        let mut state = GenericState::default();
        assert!(!state.is_created());
        let mut created = user_created();
        created.metadata = obj(json!({"source": "signup", "trace": "t1"}));
        state.apply(&created);
        let mut updated = ev(
            EventKind::UserUpdated,
            json!({"changes": {"first_name": "Jane", "role": null}, "previous": {}}),
            5,
        );
        updated.metadata = obj(json!({"trace": "t2", "source": null}));
        state.apply(&updated);
        assert_eq!(
            state.document(AggregateKind::User, "u1"),
            json!({
                "id": "u1", "type": "user", "version": 2, "active": true,
                "state": {"email": "john@example.com", "first_name": "Jane"},
                "metadata": {"trace": "t2"},
                "created_at": "2024-01-01T00:00:00.000000Z",
                "updated_at": "2024-01-01T00:00:05.000000Z",
            })
        );
        state.apply(&ev(EventKind::UserDeleted, json!({"reason": "x"}), 9));
        assert!(!state.is_active());
        assert_eq!(state.version(), 3);
        // The first event's nulls are not state.
        let mut custom = GenericState::default();
        custom.apply(&ev(EventKind::Custom, json!({"a": null, "b": 1}), 0));
        assert_eq!(custom.state(), &obj(json!({"b": 1})));
        // An order's status moves; payments and custom merge.
        let mut order = GenericState::default();
        order.apply(&order_created());
        order.apply(&ev(
            EventKind::OrderStatusChanged,
            json!({"status": "shipped", "previous_status": "pending", "reason": "r"}),
            1,
        ));
        assert_eq!(
            order.state(),
            &obj(json!({"status": "shipped", "total": 10}))
        );
    }

    // ------------------------------------------------------------------ snapshot log

    fn record(version: u64, kind: AggregateKind) -> SnapshotLogCommand {
        SnapshotLogCommand::Record {
            aggregate_type: kind,
            version,
            document: json!({"version": version}),
            at: t(20),
        }
    }

    fn taken(version: u64) -> SnapshotLogEvent {
        SnapshotLogEvent::SnapshotTaken {
            aggregate_type: AggregateKind::User,
            version,
            data: json!({"version": version}),
            at: t(20),
        }
    }

    #[test]
    fn snapshot_log_records_each_snapshot() {
        TestFramework::<SnapshotLog>::with(policy())
            .given(vec![taken(1)])
            .when(record(3, AggregateKind::User))
            .then_expect_events(vec![taken(3)]);
        assert_eq!(taken(1).event_type(), "snapshot_taken");
    }

    #[test]
    fn snapshot_log_refuses_version_zero_a_changed_type_and_more_than_max_snapshots() {
        let err = TestFramework::<SnapshotLog>::with(policy())
            .given_no_previous_events()
            .when(record(0, AggregateKind::User))
            .inspect_result()
            .expect_err("version 0");
        invalid("version")(err);
        let err = TestFramework::<SnapshotLog>::with(policy())
            .given(vec![taken(1)])
            .when(record(2, AggregateKind::Order))
            .inspect_result()
            .expect_err("another type");
        invalid("aggregate_type")(err);
        let one = EventSourcingPolicy {
            max_snapshots: 1,
            ..Default::default()
        };
        let err = TestFramework::<SnapshotLog>::with(one)
            .given(vec![taken(1)])
            .when(record(2, AggregateKind::User))
            .inspect_result()
            .expect_err("full");
        assert!(matches!(err, DomainError::StateConflict(_)), "{err:?}");
    }

    // ------------------------------------------------------------------ projection

    fn recorded(
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        event_type: &str,
        data: Option<Value>,
    ) -> RecordedEvent {
        RecordedEvent {
            position: 100 + sequence,
            context: "event-sourcing",
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            event_type: event_type.to_string(),
            event_version: 1,
            event_id: Uuid::nil(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            actor: None,
            recorded_at: t(0),
            data,
        }
    }

    fn generic_recorded(
        kind: AggregateKind,
        id: &str,
        sequence: u64,
        e: &GenericEvent,
    ) -> RecordedEvent {
        let data = serde_json::to_value(e).expect("serialize");
        recorded(kind.store_type(), id, sequence, &e.event_type(), Some(data))
    }

    /// The read store, reduced to what the projection uses (`Merge` sets top-level fields).
    #[derive(Default)]
    struct Docs(BTreeMap<(String, String), Value>);

    impl Docs {
        fn apply(&mut self, ops: Vec<DocOp>) {
            for op in ops {
                match op {
                    DocOp::Upsert {
                        collection,
                        id,
                        doc,
                    } => {
                        self.0.insert((collection, id), doc);
                    }
                    DocOp::Merge {
                        collection,
                        id,
                        patch,
                    } => {
                        if let Some(Value::Object(doc)) = self.0.get_mut(&(collection, id)) {
                            for (k, v) in obj(patch) {
                                doc.insert(k, v);
                            }
                        }
                    }
                    DocOp::Delete { collection, id } => {
                        self.0.remove(&(collection, id));
                    }
                    other => panic!("unexpected op {other:?}"),
                }
            }
        }

        fn get(&self, collection: &str, id: &str) -> Option<&Value> {
            self.0.get(&(collection.to_string(), id.to_string()))
        }

        fn all(&self, collection: &str) -> Vec<Value> {
            self.0
                .iter()
                .filter(|((c, _), _)| c == collection)
                .map(|(_, doc)| doc.clone())
                .collect()
        }
    }

    #[test]
    fn projection_identity() {
        let p = EventSourcingProjection;
        assert_eq!(p.name(), PROJECTION_NAME);
        assert_eq!(p.name(), "event-sourcing");
        assert_eq!(
            p.collections(),
            &["es_aggregates", "es_aggregate_fields", "es_snapshots"]
        );
        for t in [
            "es-user",
            "es-order",
            "es-payment",
            "es-custom",
            "es-snapshot",
        ] {
            assert!(p.handles(t), "{t}");
        }
        assert!(!p.handles("user") && !p.handles("originator"));
        assert_eq!(field_doc_id("u1", "state", "email"), "u1/state/email");
        assert_eq!(snapshot_doc_id("u1", 2), "u1/0000000002");
    }

    #[test]
    fn projection_creation_writes_the_document_and_one_field_per_key() {
        let mut created = user_created();
        created.metadata = obj(json!({"source": "signup"}));
        let ops = EventSourcingProjection
            .project(&generic_recorded(AggregateKind::User, "u1", 1, &created))
            .expect("project");
        let mut docs = Docs::default();
        docs.apply(ops);
        assert_eq!(
            docs.get(AGGREGATES, "u1"),
            Some(&json!({
                "id": "u1", "type": "user", "version": 1, "active": true,
                "created_at": "2024-01-01T00:00:00.000000Z",
                "updated_at": "2024-01-01T00:00:00.000000Z",
                "last_event_type": "user_created", "position": 101,
            }))
        );
        assert_eq!(
            docs.get(FIELDS, "u1/state/email"),
            Some(
                &json!({"aggregate_id": "u1", "part": "state", "key": "email",
                         "value": "john@example.com"})
            )
        );
        assert_eq!(docs.all(FIELDS).len(), 4);
    }

    #[test]
    fn projection_and_aggregate_agree_on_every_kind() {
        for kind in AggregateKind::ALL {
            let mut events = fixtures::kind_samples(kind);
            events.push(GenericEvent {
                kind: EventKind::Custom,
                data: obj(json!({"extra": {"deep": [1]}, "note": null})),
                metadata: obj(json!({"source": null, "k": "v"})),
                at: t(30),
            });
            let mut state = GenericState::default();
            let mut docs = Docs::default();
            for (i, event) in events.iter().enumerate() {
                state.apply(event);
                let ops = EventSourcingProjection
                    .project(&generic_recorded(kind, "a1", i as u64 + 1, event))
                    .expect("project");
                docs.apply(ops);
                let doc = docs.get(AGGREGATES, "a1").expect("the aggregate document");
                assert_eq!(
                    assemble(doc, &docs.all(FIELDS)),
                    state.document(kind, "a1"),
                    "{kind} after event {i}"
                );
            }
        }
    }

    #[test]
    fn projection_records_snapshots() {
        let event = fixtures::snapshot_sample();
        let data = serde_json::to_value(&event).expect("serialize");
        let ops = EventSourcingProjection
            .project(&recorded(
                SNAPSHOT_LOG,
                "user-123",
                2,
                "snapshot_taken",
                Some(data),
            ))
            .expect("project");
        let SnapshotLogEvent::SnapshotTaken { data, version, .. } = event;
        assert_eq!(
            ops,
            vec![DocOp::Upsert {
                collection: SNAPSHOTS.into(),
                id: "user-123/0000000002".into(),
                doc: json!({
                    "id": "user-123/0000000002", "aggregate_id": "user-123",
                    "aggregate_type": "user", "version": version, "data": data,
                    "taken_at": "2024-01-01T00:00:05.000000Z", "position": 102,
                }),
            }]
        );
    }

    #[test]
    fn projection_tombstones_forgotten_aggregates_and_shredded_creations() {
        let forget = |aggregate_type: &str| {
            EventSourcingProjection
                .project(&recorded(
                    SYSTEM_AGGREGATE,
                    &format!("{aggregate_type}/u1"),
                    1,
                    AGGREGATE_FORGOTTEN,
                    Some(json!({"aggregate_type": aggregate_type, "aggregate_id": "u1"})),
                ))
                .expect("project")
        };
        let where_u1 = |collection: &str| DocOp::TombstoneWhere {
            collection: collection.into(),
            field: "aggregate_id".into(),
            value: json!("u1"),
        };
        assert_eq!(
            forget("es-user"),
            vec![
                DocOp::Upsert {
                    collection: AGGREGATES.into(),
                    id: "u1".into(),
                    doc: json!({"id": "u1", "tombstone": true}),
                },
                where_u1(FIELDS),
                where_u1(SNAPSHOTS),
            ]
        );
        assert_eq!(forget(SNAPSHOT_LOG), vec![where_u1(SNAPSHOTS)]);
        assert!(forget("originator").is_empty());
        let shredded = EventSourcingProjection
            .project(&recorded("es-user", "u1", 1, "user_created", None))
            .expect("project");
        assert_eq!(
            shredded,
            vec![DocOp::Upsert {
                collection: AGGREGATES.into(),
                id: "u1".into(),
                doc: json!({"id": "u1", "tombstone": true}),
            }]
        );
        let later = EventSourcingProjection
            .project(&recorded("es-user", "u1", 2, "custom", None))
            .expect("project");
        assert!(later.is_empty());
    }

    #[test]
    fn projection_refuses_a_payload_it_cannot_read() {
        let err = EventSourcingProjection
            .project(&recorded(
                "es-user",
                "u1",
                1,
                "user_created",
                Some(json!({"nope": 1})),
            ))
            .expect_err("unreadable");
        assert_eq!(err.projection, "event-sourcing");
        assert_eq!(err.event_type, "user_created");
    }

    // ------------------------------------------------------------------ fixtures

    #[test]
    fn fixture_samples_cover_every_event_each_type_takes() {
        let samples = fixtures::samples();
        for kind in AggregateKind::ALL {
            for event in kind.event_types() {
                assert!(
                    samples
                        .iter()
                        .any(|s| s.aggregate_type == kind.store_type()
                            && s.event_type == event.as_str()),
                    "no sample of {kind}/{event}"
                );
            }
        }
        assert!(samples
            .iter()
            .any(|s| s.aggregate_type == SNAPSHOT_LOG && s.event_type == "snapshot_taken"));
        assert_eq!(samples.len(), 4 + 3 + 2 + 1 + 1);
        for sample in &samples {
            fixtures::replay_payload(sample.aggregate_type, sample.payload.clone())
                .unwrap_or_else(|e| panic!("{}/{}: {e}", sample.aggregate_type, sample.event_type));
        }
        assert!(fixtures::replay_payload("es-order", samples[0].payload.clone()).is_err());
        assert!(fixtures::replay_payload("es-user", json!({"type": "custom"})).is_err());
    }

    /// Every sample has its stored-payload fixture under `tests/fixtures/events/`, and the
    /// fixture still replays. `QUINTET_WRITE_FIXTURES=1` writes the missing ones (existing
    /// files are never rewritten: they record what older code stored).
    #[test]
    fn every_sample_has_a_fixture_that_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/events");
        let write = std::env::var("QUINTET_WRITE_FIXTURES").is_ok_and(|v| v == "1");
        let mut missing = Vec::new();
        for sample in fixtures::samples() {
            let path = dir
                .join(sample.aggregate_type)
                .join(format!("{}.v{}.json", sample.event_type, sample.version));
            if !path.exists() {
                if write {
                    std::fs::create_dir_all(path.parent().expect("a directory"))
                        .expect("create the fixture directory");
                    let text = serde_json::to_string_pretty(&sample.payload).expect("json");
                    std::fs::write(&path, text + "\n").expect("write the fixture");
                } else {
                    missing.push(path.display().to_string());
                    continue;
                }
            }
            let text = std::fs::read_to_string(&path).expect("read the fixture");
            let payload: Value = serde_json::from_str(&text).expect("a JSON fixture");
            let payload = kernel::domain::upcast(
                sample.aggregate_type,
                &sample.event_type,
                sample.version.parse().expect("a number"),
                payload,
            )
            .expect("upcast");
            fixtures::replay_payload(sample.aggregate_type, payload.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let position = 1;
            EventSourcingProjection
                .project(&recorded(
                    sample.aggregate_type,
                    "fixture-aggregate",
                    position,
                    &sample.event_type,
                    Some(payload),
                ))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        assert!(
            missing.is_empty(),
            "samples without a fixture (run once with QUINTET_WRITE_FIXTURES=1): {missing:#?}"
        );
    }
}

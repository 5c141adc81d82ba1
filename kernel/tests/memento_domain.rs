//! Given/when/then tests of the memento context's aggregates (caretaker and originator):
//! one test per rule, each event and each error path.

mod memento {
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use cqrs_es::test::TestFramework;
    use cqrs_es::{Aggregate, DomainEvent};
    use kernel::domain::memento::{
        checksum, Caretaker, CaretakerCommand as CC, CaretakerEvent as CE, MementoPolicy,
        Originator, OriginatorCommand as OC, OriginatorEvent as OE, OriginatorKind as K,
        RemovedMemento, CARETAKER, ORIGINATOR,
    };
    use kernel::domain::DomainError;
    use serde_json::{json, Map, Value};

    type CaretakerTest = TestFramework<Caretaker>;
    type OriginatorTest = TestFramework<Originator>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date")
            + Duration::seconds(secs)
    }

    fn policy() -> MementoPolicy {
        MementoPolicy::default()
    }

    fn invalid(field: &str) -> impl Fn(DomainError) {
        let field = field.to_string();
        move |e| match e {
            DomainError::Invalid { field: Some(f), .. } if f == field => {}
            other => panic!("expected Invalid({field}), got {other:?}"),
        }
    }

    // ---------------------------------------------------------------- caretaker helpers

    fn created(name: &str, max: u32, size: u64, age: u64) -> CE {
        CE::CaretakerCreated {
            name: name.into(),
            max_mementos: max,
            max_memento_size: size,
            max_memento_age_secs: age,
            at: t(0),
        }
    }

    fn ct() -> CE {
        created("ct", 10, 1000, 3600)
    }

    fn doc_state(s: &str) -> Value {
        json!({ "content": s })
    }

    fn save(id: &str, originator: &str, state: Value, at: DateTime<Utc>) -> CC {
        CC::SaveMemento {
            memento_id: id.into(),
            originator_id: originator.into(),
            kind: K::Document,
            state,
            description: None,
            metadata: Map::new(),
            at,
        }
    }

    fn saved(id: &str, originator: &str, state: Value, version: u64, at: DateTime<Utc>) -> CE {
        let (size, sum) = checksum(&state);
        CE::MementoCreated {
            memento_id: id.into(),
            originator_id: originator.into(),
            kind: K::Document,
            state,
            description: None,
            metadata: Map::new(),
            size,
            checksum: sum,
            version,
            at,
        }
    }

    fn run_caretaker(given: Vec<CE>, cmd: CC) -> Result<Vec<CE>, DomainError> {
        CaretakerTest::with(policy())
            .given(given)
            .when(cmd)
            .inspect_result()
    }

    // ---------------------------------------------------------------- caretaker: create

    #[test]
    fn caretaker_create_fills_limits_from_policy() {
        CaretakerTest::with(policy())
            .given_no_previous_events()
            .when(CC::CreateCaretaker {
                name: "my-caretaker".into(),
                max_mementos: None,
                max_memento_size: None,
                max_memento_age_secs: None,
                at: t(0),
            })
            .then_expect_events(vec![created("my-caretaker", 10_000, 1_048_576, 86_400)]);
    }

    #[test]
    fn caretaker_create_with_explicit_limits() {
        CaretakerTest::with(policy())
            .given_no_previous_events()
            .when(CC::CreateCaretaker {
                name: "ct".into(),
                max_mementos: Some(10),
                max_memento_size: Some(1000),
                max_memento_age_secs: Some(3600),
                at: t(0),
            })
            .then_expect_events(vec![ct()]);
    }

    #[test]
    fn caretaker_create_rejects_bad_names() {
        for name in ["", "a b", "a/b", "ünï", &"x".repeat(129)] {
            let r = run_caretaker(
                vec![],
                CC::CreateCaretaker {
                    name: name.to_string(),
                    max_mementos: None,
                    max_memento_size: None,
                    max_memento_age_secs: None,
                    at: t(0),
                },
            );
            invalid("name")(r.expect_err("bad name"));
        }
    }

    #[test]
    fn caretaker_create_rejects_zero_or_excessive_limits() {
        let p = policy();
        type LimitCase = (&'static str, Option<u32>, Option<u64>, Option<u64>);
        let cases: Vec<LimitCase> = vec![
            ("max_mementos", Some(0), None, None),
            ("max_mementos", Some(p.max_mementos + 1), None, None),
            ("max_memento_size", None, Some(0), None),
            ("max_memento_size", None, Some(p.max_memento_size + 1), None),
            ("max_memento_age_secs", None, None, Some(0)),
            (
                "max_memento_age_secs",
                None,
                None,
                Some(p.max_memento_age_secs + 1),
            ),
        ];
        for (field, m, s, a) in cases {
            let r = run_caretaker(
                vec![],
                CC::CreateCaretaker {
                    name: "ct".into(),
                    max_mementos: m,
                    max_memento_size: s,
                    max_memento_age_secs: a,
                    at: t(0),
                },
            );
            invalid(field)(r.expect_err(field));
        }
    }

    #[test]
    fn caretaker_create_twice_already_exists() {
        CaretakerTest::with(policy())
            .given(vec![ct()])
            .when(CC::CreateCaretaker {
                name: "ct".into(),
                max_mementos: None,
                max_memento_size: None,
                max_memento_age_secs: None,
                at: t(1),
            })
            .then_expect_error(DomainError::AlreadyExists("caretaker ct".into()));
    }

    #[test]
    fn caretaker_recreated_after_removal_starts_fresh() {
        let given = vec![
            ct(),
            saved("m1", "o1", doc_state("a"), 1, t(1)),
            CE::CaretakerRemoved {
                name: "ct".into(),
                memento_count: 1,
                at: t(2),
            },
            created("ct", 10, 1000, 3600),
        ];
        // Versions and ids start over.
        CaretakerTest::with(policy())
            .given(given)
            .when(save("m1", "o1", doc_state("b"), t(3)))
            .then_expect_events(vec![saved("m1", "o1", doc_state("b"), 1, t(3))]);
    }

    #[test]
    fn caretaker_recreate_after_removal_is_allowed() {
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                CE::CaretakerRemoved {
                    name: "ct".into(),
                    memento_count: 0,
                    at: t(1),
                },
            ])
            .when(CC::CreateCaretaker {
                name: "ct".into(),
                max_mementos: Some(5),
                max_memento_size: None,
                max_memento_age_secs: None,
                at: t(2),
            })
            .then_expect_events(vec![CE::CaretakerCreated {
                name: "ct".into(),
                max_mementos: 5,
                max_memento_size: 1_048_576,
                max_memento_age_secs: 86_400,
                at: t(2),
            }]);
    }

    // ---------------------------------------------------------------- caretaker: save

    #[test]
    fn caretaker_save_memento_emits_size_checksum_version() {
        let state = json!({ "content": "Hello, World!", "metadata": { "author": "John Doe" } });
        let mut metadata = Map::new();
        metadata.insert("env".into(), json!("production"));
        let (size, sum) = checksum(&state);
        assert_eq!(
            size as usize,
            r#"{"content":"Hello, World!","metadata":{"author":"John Doe"}}"#.len()
        );
        CaretakerTest::with(policy())
            .given(vec![ct()])
            .when(CC::SaveMemento {
                memento_id: "memento1".into(),
                originator_id: "originator1".into(),
                kind: K::Document,
                state: state.clone(),
                description: Some("Document memento".into()),
                metadata: metadata.clone(),
                at: t(5),
            })
            .then_expect_events(vec![CE::MementoCreated {
                memento_id: "memento1".into(),
                originator_id: "originator1".into(),
                kind: K::Document,
                state,
                description: Some("Document memento".into()),
                metadata,
                size,
                checksum: sum,
                version: 1,
                at: t(5),
            }]);
    }

    #[test]
    fn caretaker_save_versions_count_per_originator() {
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                saved("m1", "o1", doc_state("a"), 1, t(1)),
                saved("m2", "o2", doc_state("a"), 1, t(2)),
                saved("m3", "o1", doc_state("b"), 2, t(3)),
            ])
            .when(save("m4", "o1", doc_state("c"), t(4)))
            .then_expect_events(vec![saved("m4", "o1", doc_state("c"), 3, t(4))]);
    }

    #[test]
    fn caretaker_save_versions_never_reused_after_delete_or_cleanup() {
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                saved("m1", "o1", doc_state("a"), 1, t(1)),
                saved("m2", "o1", doc_state("b"), 2, t(2)),
                CE::MementoDeleted {
                    memento_id: "m2".into(),
                    originator_id: "o1".into(),
                    kind: K::Document,
                    size: 15,
                    at: t(3),
                },
                CE::CleanupCompleted {
                    removed: vec![RemovedMemento {
                        memento_id: "m1".into(),
                        originator_id: "o1".into(),
                        kind: K::Document,
                        size: 15,
                    }],
                    at: t(4),
                },
            ])
            .when(save("m2", "o1", doc_state("c"), t(5)))
            .then_expect_events(vec![saved("m2", "o1", doc_state("c"), 3, t(5))]);
    }

    #[test]
    fn caretaker_save_needs_a_live_caretaker() {
        CaretakerTest::with(policy())
            .given_no_previous_events()
            .when(save("m1", "o1", doc_state("a"), t(1)))
            .then_expect_error(DomainError::NotFound("caretaker".into()));
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                CE::CaretakerRemoved {
                    name: "ct".into(),
                    memento_count: 0,
                    at: t(1),
                },
            ])
            .when(save("m1", "o1", doc_state("a"), t(2)))
            .then_expect_error(DomainError::NotFound("caretaker ct".into()));
    }

    #[test]
    fn caretaker_save_rejects_bad_memento_id() {
        for id in ["", "has space", "a/b", &"m".repeat(129)] {
            let r = run_caretaker(vec![ct()], save(id, "o1", doc_state("a"), t(1)));
            invalid("id")(r.expect_err("bad id"));
        }
    }

    #[test]
    fn caretaker_save_duplicate_id_already_exists() {
        CaretakerTest::with(policy())
            .given(vec![ct(), saved("m1", "o1", doc_state("a"), 1, t(1))])
            .when(save("m1", "o2", doc_state("b"), t(2)))
            .then_expect_error(DomainError::AlreadyExists("memento m1".into()));
    }

    #[test]
    fn caretaker_save_rejects_empty_originator_id() {
        for o in ["", "   "] {
            let r = run_caretaker(vec![ct()], save("m1", o, doc_state("a"), t(1)));
            invalid("originator_id")(r.expect_err("empty originator"));
        }
    }

    #[test]
    fn caretaker_save_validates_state_per_kind() {
        let bad: Vec<(K, Value)> = vec![
            (K::Document, json!("plain string")),
            (K::Document, json!({ "text": "no content" })),
            (K::Document, json!({ "content": 42 })),
            (K::Database, json!({ "records": "nope" })),
            (K::Database, json!({ "records": [], "table": 1 })),
            (K::Database, json!({ "records": [], "schema": [] })),
            (K::File, json!({ "path": "/x" })),
            (K::File, json!({ "content": "x", "path": false })),
            (K::Configuration, json!([1, 2])),
        ];
        for (kind, state) in bad {
            let r = run_caretaker(
                vec![ct()],
                CC::SaveMemento {
                    memento_id: "m1".into(),
                    originator_id: "o1".into(),
                    kind,
                    state: state.clone(),
                    description: None,
                    metadata: Map::new(),
                    at: t(1),
                },
            );
            match r {
                Err(DomainError::Invalid {
                    field: Some(f),
                    message,
                }) => {
                    assert_eq!(f, "state");
                    assert!(message.contains(kind.as_str()), "{message}");
                }
                other => panic!("{kind} {state}: expected Invalid(state), got {other:?}"),
            }
        }
        let good: Vec<(K, Value)> = vec![
            (K::Document, json!({ "content": "" })),
            (
                K::Database,
                json!({ "records": [{"id": 1}], "table": "users", "schema": "public" }),
            ),
            (K::File, json!({ "content": "k=v", "path": "/etc/x" })),
            (K::Configuration, json!({ "cache": { "ttl": 300 } })),
        ];
        for (kind, state) in good {
            let events = run_caretaker(
                vec![ct()],
                CC::SaveMemento {
                    memento_id: "m1".into(),
                    originator_id: "o1".into(),
                    kind,
                    state,
                    description: None,
                    metadata: Map::new(),
                    at: t(1),
                },
            )
            .expect("valid state");
            assert_eq!(events.len(), 1);
        }
    }

    #[test]
    fn caretaker_save_too_large() {
        // ct() allows 1000 bytes; `{"content":"…"}` adds 14 bytes.
        let ok = doc_state(&"x".repeat(1000 - 14));
        assert_eq!(checksum(&ok).0, 1000);
        assert!(run_caretaker(vec![ct()], save("m1", "o1", ok, t(1))).is_ok());
        let big = doc_state(&"x".repeat(1000 - 13));
        CaretakerTest::with(policy())
            .given(vec![ct()])
            .when(save("m1", "o1", big, t(1)))
            .then_expect_error(DomainError::TooLarge(
                "state is 1001 bytes; the limit is 1000 bytes".into(),
            ));
    }

    #[test]
    fn caretaker_save_when_full_is_a_conflict() {
        CaretakerTest::with(policy())
            .given(vec![
                created("ct", 2, 1000, 3600),
                saved("m1", "o1", doc_state("a"), 1, t(1)),
                saved("m2", "o1", doc_state("b"), 2, t(2)),
            ])
            .when(save("m3", "o1", doc_state("c"), t(3)))
            .then_expect_error(DomainError::StateConflict(
                "caretaker ct is full (2 mementos); run cleanup or delete some".into(),
            ));
    }

    #[test]
    fn caretaker_save_description_and_metadata_limits() {
        let mut cmd = save("m1", "o1", doc_state("a"), t(1));
        if let CC::SaveMemento { description, .. } = &mut cmd {
            *description = Some("d".repeat(1025));
        }
        invalid("description")(run_caretaker(vec![ct()], cmd).expect_err("long description"));

        let mut cmd = save("m1", "o1", doc_state("a"), t(1));
        if let CC::SaveMemento { description, .. } = &mut cmd {
            *description = Some("é".repeat(1024));
        }
        assert!(
            run_caretaker(vec![ct()], cmd).is_ok(),
            "1024 chars are fine"
        );

        let too_many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut cmd = save("m1", "o1", doc_state("a"), t(1));
        if let CC::SaveMemento { metadata, .. } = &mut cmd {
            *metadata = too_many;
        }
        invalid("metadata")(run_caretaker(vec![ct()], cmd).expect_err("65 keys"));

        let enough: Map<String, Value> = (0..64).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut cmd = save("m1", "o1", doc_state("a"), t(1));
        if let CC::SaveMemento { metadata, .. } = &mut cmd {
            *metadata = enough;
        }
        assert!(run_caretaker(vec![ct()], cmd).is_ok(), "64 keys are fine");
    }

    #[test]
    fn caretaker_checksum_is_key_order_independent() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[3,{"q":1,"p":2}]}}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":[3,{"p":2,"q":1}],"y":2},"b":1}"#).expect("json");
        assert_eq!(checksum(&a), checksum(&b));
        assert_eq!(checksum(&a).1.len(), 64);
        assert_ne!(checksum(&a).1, checksum(&json!({"b": 2})).1);
    }

    // ---------------------------------------------------------------- caretaker: delete / restore

    #[test]
    fn caretaker_delete_memento() {
        let state = doc_state("a");
        let size = checksum(&state).0;
        CaretakerTest::with(policy())
            .given(vec![ct(), saved("m1", "o1", state, 1, t(1))])
            .when(CC::DeleteMemento {
                memento_id: "m1".into(),
                at: t(2),
            })
            .then_expect_events(vec![CE::MementoDeleted {
                memento_id: "m1".into(),
                originator_id: "o1".into(),
                kind: K::Document,
                size,
                at: t(2),
            }]);
    }

    #[test]
    fn caretaker_delete_missing_memento_not_found() {
        CaretakerTest::with(policy())
            .given(vec![ct()])
            .when(CC::DeleteMemento {
                memento_id: "nope".into(),
                at: t(2),
            })
            .then_expect_error(DomainError::NotFound("memento nope".into()));
        CaretakerTest::with(policy())
            .given_no_previous_events()
            .when(CC::DeleteMemento {
                memento_id: "m1".into(),
                at: t(2),
            })
            .then_expect_error(DomainError::NotFound("caretaker".into()));
    }

    #[test]
    fn caretaker_deleted_memento_is_gone_from_state() {
        let mut c = Caretaker::default();
        c.apply(ct());
        c.apply(saved("m1", "o1", doc_state("a"), 1, t(1)));
        assert!(c.memento("m1").is_some());
        c.apply(CE::MementoDeleted {
            memento_id: "m1".into(),
            originator_id: "o1".into(),
            kind: K::Document,
            size: 15,
            at: t(2),
        });
        assert!(c.memento("m1").is_none());
        assert_eq!(c.last_version("o1"), 1);
    }

    #[test]
    fn caretaker_mark_restored() {
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                saved("m1", "o1", doc_state("a"), 1, t(1)),
                saved("m2", "o1", doc_state("b"), 2, t(2)),
            ])
            .when(CC::MarkRestored {
                memento_id: "m2".into(),
                originator_id: "o1".into(),
                at: t(3),
            })
            .then_expect_events(vec![CE::MementoRestored {
                memento_id: "m2".into(),
                originator_id: "o1".into(),
                version: 2,
                at: t(3),
            }]);
    }

    #[test]
    fn caretaker_mark_restored_missing_not_found() {
        CaretakerTest::with(policy())
            .given(vec![ct()])
            .when(CC::MarkRestored {
                memento_id: "m9".into(),
                originator_id: "o1".into(),
                at: t(3),
            })
            .then_expect_error(DomainError::NotFound("memento m9".into()));
    }

    #[test]
    fn caretaker_restore_count_in_state() {
        let mut c = Caretaker::default();
        c.apply(ct());
        c.apply(saved("m1", "o1", doc_state("a"), 1, t(1)));
        c.apply(CE::MementoRestored {
            memento_id: "m1".into(),
            originator_id: "o1".into(),
            version: 1,
            at: t(5),
        });
        let m = c.memento("m1").expect("memento");
        assert_eq!(m.restore_count, 1);
        assert_eq!(m.last_restored_at, Some(t(5)));
        assert_eq!(m.state, doc_state("a"));
    }

    // ---------------------------------------------------------------- caretaker: cleanup

    fn removed(id: &str) -> RemovedMemento {
        RemovedMemento {
            memento_id: id.into(),
            originator_id: "o1".into(),
            kind: K::Document,
            size: checksum(&doc_state("a")).0,
        }
    }

    #[test]
    fn caretaker_cleanup_removes_expired_mementos() {
        // Age limit 3600 s: m1 (t=10) and m2 (t=20) are older at t=3625; m3 (t=25) is exactly
        // 3600 s old, which is not older than the limit.
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                saved("m2", "o1", doc_state("a"), 1, t(20)),
                saved("m1", "o1", doc_state("a"), 2, t(10)),
                saved("m3", "o1", doc_state("a"), 3, t(25)),
            ])
            .when(CC::Cleanup { now: t(3625) })
            .then_expect_events(vec![CE::CleanupCompleted {
                removed: vec![removed("m1"), removed("m2")],
                at: t(3625),
            }]);
    }

    #[test]
    fn caretaker_cleanup_with_nothing_to_remove_still_emits() {
        CaretakerTest::with(policy())
            .given(vec![ct(), saved("m1", "o1", doc_state("a"), 1, t(10))])
            .when(CC::Cleanup { now: t(20) })
            .then_expect_events(vec![CE::CleanupCompleted {
                removed: vec![],
                at: t(20),
            }]);
    }

    #[test]
    fn caretaker_cleanup_trims_oldest_when_over_count() {
        // The limit is fixed at creation, so only old state (e.g. an upcast) can exceed it;
        // the rule still holds: expired first, then the oldest survivors.
        let mut given = vec![created("ct", 2, 1000, 3600)];
        given.push(saved("m1", "o1", doc_state("a"), 1, t(0)));
        given.push(saved("m2", "o1", doc_state("a"), 2, t(4000)));
        given.push(saved("m3", "o1", doc_state("a"), 3, t(4001)));
        let mut c = Caretaker::default();
        for e in given.iter().cloned() {
            c.apply(e);
        }
        // m4 on top of a full caretaker (bypassing the rule) to get over the limit.
        c.apply(saved("m4", "o1", doc_state("a"), 4, t(4002)));
        c.apply(saved("m5", "o1", doc_state("a"), 5, t(4002)));
        let events = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(async {
                let sink = cqrs_es::event_sink::EventSink::<Caretaker>::default();
                c.handle(CC::Cleanup { now: t(4100) }, &policy(), &sink)
                    .await
                    .expect("cleanup");
                sink.collect().await
            });
        // m1 is expired; of m2..m5 the two oldest (m2, m3) go, leaving the limit of 2.
        assert_eq!(
            events,
            vec![CE::CleanupCompleted {
                removed: vec![removed("m1"), removed("m2"), removed("m3")],
                at: t(4100),
            }]
        );
        assert_eq!(c.memento_count(), 2);
        assert!(c.memento("m4").is_some() && c.memento("m5").is_some());
    }

    #[test]
    fn caretaker_cleanup_missing_caretaker_not_found() {
        CaretakerTest::with(policy())
            .given_no_previous_events()
            .when(CC::Cleanup { now: t(1) })
            .then_expect_error(DomainError::NotFound("caretaker".into()));
    }

    // ---------------------------------------------------------------- caretaker: remove

    #[test]
    fn caretaker_remove() {
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                saved("m1", "o1", doc_state("a"), 1, t(1)),
                saved("m2", "o2", doc_state("a"), 1, t(2)),
            ])
            .when(CC::RemoveCaretaker { at: t(3) })
            .then_expect_events(vec![CE::CaretakerRemoved {
                name: "ct".into(),
                memento_count: 2,
                at: t(3),
            }]);
    }

    #[test]
    fn caretaker_remove_missing_or_removed_not_found() {
        CaretakerTest::with(policy())
            .given_no_previous_events()
            .when(CC::RemoveCaretaker { at: t(3) })
            .then_expect_error(DomainError::NotFound("caretaker".into()));
        CaretakerTest::with(policy())
            .given(vec![
                ct(),
                CE::CaretakerRemoved {
                    name: "ct".into(),
                    memento_count: 0,
                    at: t(1),
                },
            ])
            .when(CC::RemoveCaretaker { at: t(3) })
            .then_expect_error(DomainError::NotFound("caretaker ct".into()));
    }

    #[test]
    fn caretaker_accessors() {
        let mut c = Caretaker::default();
        assert!(!c.is_live());
        c.apply(ct());
        assert!(c.is_live());
        assert_eq!(c.name(), "ct");
        assert_eq!(c.limits().max_mementos, 10);
        assert_eq!(c.limits().max_memento_size, 1000);
        assert_eq!(c.limits().max_memento_age_secs, 3600);
        c.apply(CE::CaretakerRemoved {
            name: "ct".into(),
            memento_count: 0,
            at: t(1),
        });
        assert!(!c.is_live());
        assert_eq!(Caretaker::TYPE, CARETAKER);
    }

    #[test]
    fn caretaker_event_types_match_serde_tags() {
        let events = vec![
            ct(),
            saved("m1", "o1", doc_state("a"), 1, t(1)),
            CE::MementoDeleted {
                memento_id: "m1".into(),
                originator_id: "o1".into(),
                kind: K::Document,
                size: 1,
                at: t(1),
            },
            CE::MementoRestored {
                memento_id: "m1".into(),
                originator_id: "o1".into(),
                version: 1,
                at: t(1),
            },
            CE::CleanupCompleted {
                removed: vec![removed("m1")],
                at: t(1),
            },
            CE::CaretakerRemoved {
                name: "ct".into(),
                memento_count: 0,
                at: t(1),
            },
        ];
        let names: Vec<String> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(
            names,
            [
                "caretaker_created",
                "memento_created",
                "memento_deleted",
                "memento_restored",
                "cleanup_completed",
                "caretaker_removed"
            ]
        );
        for e in events {
            let v = serde_json::to_value(&e).expect("serialize");
            assert_eq!(v["type"], json!(e.event_type()));
            assert_eq!(e.event_version(), "1");
            let back: CE = serde_json::from_value(v).expect("round trip");
            assert_eq!(back, e);
        }
        let v = serde_json::to_value(saved("m1", "o1", doc_state("a"), 1, t(1))).expect("json");
        assert_eq!(v["kind"], json!("document"));
    }

    // ---------------------------------------------------------------- originator

    fn doc_created(state: Value) -> OE {
        OE::OriginatorCreated {
            id: "doc1".into(),
            kind: K::Document,
            name: "My Document".into(),
            state,
            version: 1,
            at: t(0),
        }
    }

    fn run_originator(given: Vec<OE>, cmd: OC) -> Result<Vec<OE>, DomainError> {
        OriginatorTest::with(policy())
            .given(given)
            .when(cmd)
            .inspect_result()
    }

    fn restore_cmd(state: Value, kind: K, sum: Option<String>, expected: Option<u64>) -> OC {
        let sum = sum.unwrap_or_else(|| checksum(&state).1);
        OC::RestoreFromMemento {
            caretaker: "ct".into(),
            memento_id: "m1".into(),
            memento_version: 1,
            kind,
            state,
            checksum: sum,
            expected_version: expected,
            at: t(9),
        }
    }

    #[test]
    fn originator_create_with_state() {
        OriginatorTest::with(policy())
            .given_no_previous_events()
            .when(OC::CreateOriginator {
                id: "doc1".into(),
                kind: K::Document,
                name: "My Document".into(),
                state: Some(doc_state("Hello, World!")),
                at: t(0),
            })
            .then_expect_events(vec![doc_created(doc_state("Hello, World!"))]);
    }

    #[test]
    fn originator_create_defaults_to_empty_state_per_kind() {
        let cases = [
            (K::Document, json!({"content": ""})),
            (K::Database, json!({"records": []})),
            (K::File, json!({"content": ""})),
            (K::Configuration, json!({})),
        ];
        for (kind, empty) in cases {
            let events = run_originator(
                vec![],
                OC::CreateOriginator {
                    id: "o1".into(),
                    kind,
                    name: "n".into(),
                    state: None,
                    at: t(0),
                },
            )
            .expect("create");
            assert_eq!(
                events,
                vec![OE::OriginatorCreated {
                    id: "o1".into(),
                    kind,
                    name: "n".into(),
                    state: empty,
                    version: 1,
                    at: t(0),
                }]
            );
        }
    }

    #[test]
    fn originator_create_twice_already_exists() {
        OriginatorTest::with(policy())
            .given(vec![doc_created(doc_state(""))])
            .when(OC::CreateOriginator {
                id: "doc1".into(),
                kind: K::Document,
                name: "Again".into(),
                state: None,
                at: t(1),
            })
            .then_expect_error(DomainError::AlreadyExists("originator doc1".into()));
    }

    #[test]
    fn originator_create_validates_id_name_state_size() {
        let create = |id: &str, name: &str, kind: K, state: Option<Value>| OC::CreateOriginator {
            id: id.into(),
            kind,
            name: name.into(),
            state,
            at: t(0),
        };
        invalid("id")(
            run_originator(vec![], create("a b", "n", K::Document, None)).expect_err("id"),
        );
        invalid("id")(run_originator(vec![], create("", "n", K::Document, None)).expect_err("id"));
        invalid("name")(
            run_originator(vec![], create("o1", " ", K::Document, None)).expect_err("name"),
        );
        invalid("name")(
            run_originator(vec![], create("o1", &"n".repeat(257), K::Document, None))
                .expect_err("name"),
        );
        invalid("state")(
            run_originator(
                vec![],
                create("o1", "n", K::Database, Some(json!({"rows": []}))),
            )
            .expect_err("state"),
        );
        let small = MementoPolicy {
            max_memento_size: 20,
            ..MementoPolicy::default()
        };
        OriginatorTest::with(small)
            .given_no_previous_events()
            .when(create(
                "o1",
                "n",
                K::Document,
                Some(doc_state("0123456789")),
            ))
            .then_expect_error(DomainError::TooLarge(
                "state is 24 bytes; the limit is 20 bytes".into(),
            ));
    }

    #[test]
    fn originator_set_state() {
        OriginatorTest::with(policy())
            .given(vec![doc_created(doc_state("a"))])
            .when(OC::SetState {
                state: doc_state("b"),
                expected_version: Some(1),
                at: t(1),
            })
            .then_expect_events(vec![OE::OriginatorStateChanged {
                state: doc_state("b"),
                version: 2,
                at: t(1),
            }]);
        OriginatorTest::with(policy())
            .given(vec![
                doc_created(doc_state("a")),
                OE::OriginatorStateChanged {
                    state: doc_state("b"),
                    version: 2,
                    at: t(1),
                },
            ])
            .when(OC::SetState {
                state: doc_state("c"),
                expected_version: None,
                at: t(2),
            })
            .then_expect_events(vec![OE::OriginatorStateChanged {
                state: doc_state("c"),
                version: 3,
                at: t(2),
            }]);
    }

    #[test]
    fn originator_set_state_not_created() {
        OriginatorTest::with(policy())
            .given_no_previous_events()
            .when(OC::SetState {
                state: doc_state("b"),
                expected_version: None,
                at: t(1),
            })
            .then_expect_error(DomainError::NotFound("originator".into()));
    }

    #[test]
    fn originator_set_state_stale_version() {
        OriginatorTest::with(policy())
            .given(vec![doc_created(doc_state("a"))])
            .when(OC::SetState {
                state: doc_state("b"),
                expected_version: Some(3),
                at: t(1),
            })
            .then_expect_error(DomainError::StateConflict(
                "stale version: expected 3, current 1".into(),
            ));
    }

    #[test]
    fn originator_set_state_validates_shape_and_size() {
        invalid("state")(
            run_originator(
                vec![doc_created(doc_state("a"))],
                OC::SetState {
                    state: json!({"records": []}),
                    expected_version: None,
                    at: t(1),
                },
            )
            .expect_err("shape"),
        );
        let small = MementoPolicy {
            max_memento_size: 20,
            ..MementoPolicy::default()
        };
        let r = OriginatorTest::with(small)
            .given(vec![doc_created(doc_state("a"))])
            .when(OC::SetState {
                state: doc_state("0123456789"),
                expected_version: None,
                at: t(1),
            })
            .inspect_result();
        assert!(matches!(r, Err(DomainError::TooLarge(_))), "{r:?}");
    }

    #[test]
    fn originator_restore_from_memento() {
        let old = doc_state("Hello, World!");
        let sum = checksum(&old).1;
        OriginatorTest::with(policy())
            .given(vec![
                doc_created(old.clone()),
                OE::OriginatorStateChanged {
                    state: doc_state("Hello, Universe!"),
                    version: 2,
                    at: t(1),
                },
            ])
            .when(OC::RestoreFromMemento {
                caretaker: "ct".into(),
                memento_id: "m1".into(),
                memento_version: 1,
                kind: K::Document,
                state: old.clone(),
                checksum: sum,
                expected_version: Some(2),
                at: t(9),
            })
            .then_expect_events(vec![OE::OriginatorRestored {
                caretaker: "ct".into(),
                memento_id: "m1".into(),
                restored_version: 1,
                state: old,
                version: 3,
                at: t(9),
            }]);
    }

    #[test]
    fn originator_restore_not_created() {
        OriginatorTest::with(policy())
            .given_no_previous_events()
            .when(restore_cmd(doc_state("a"), K::Document, None, None))
            .then_expect_error(DomainError::NotFound("originator".into()));
    }

    #[test]
    fn originator_restore_kind_mismatch() {
        let r = run_originator(
            vec![doc_created(doc_state("a"))],
            restore_cmd(json!({"records": []}), K::Database, None, None),
        );
        invalid("type")(r.expect_err("kind mismatch"));
    }

    #[test]
    fn originator_restore_corrupt_checksum() {
        let r = run_originator(
            vec![doc_created(doc_state("a"))],
            restore_cmd(
                doc_state("a"),
                K::Document,
                Some(checksum(&doc_state("b")).1),
                None,
            ),
        );
        match r {
            Err(DomainError::Invalid {
                field: Some(f),
                message,
            }) => {
                assert_eq!(f, "checksum");
                assert!(message.contains("corrupt"), "{message}");
            }
            other => panic!("expected Invalid(checksum), got {other:?}"),
        }
    }

    #[test]
    fn originator_restore_stale_version() {
        OriginatorTest::with(policy())
            .given(vec![doc_created(doc_state("a"))])
            .when(restore_cmd(doc_state("a"), K::Document, None, Some(7)))
            .then_expect_error(DomainError::StateConflict(
                "stale version: expected 7, current 1".into(),
            ));
    }

    #[test]
    fn originator_accessors_follow_events() {
        let mut o = Originator::default();
        assert!(!o.is_created());
        assert_eq!(o.version(), 0);
        assert_eq!(o.kind(), None);
        o.apply(doc_created(doc_state("a")));
        assert!(o.is_created());
        assert_eq!(o.kind(), Some(K::Document));
        assert_eq!(o.name(), "My Document");
        assert_eq!(o.state(), &doc_state("a"));
        assert_eq!(o.version(), 1);
        o.apply(OE::OriginatorRestored {
            caretaker: "ct".into(),
            memento_id: "m1".into(),
            restored_version: 4,
            state: doc_state("z"),
            version: 2,
            at: t(3),
        });
        assert_eq!(o.state(), &doc_state("z"));
        assert_eq!(o.version(), 2);
        assert_eq!(o.restored_from().map(|r| r.version), Some(4));
        o.apply(OE::OriginatorStateChanged {
            state: doc_state("y"),
            version: 3,
            at: t(4),
        });
        assert!(o.restored_from().is_none());
        assert_eq!(o.updated_at(), Some(t(4)));
        assert_eq!(Originator::TYPE, ORIGINATOR);
    }

    #[test]
    fn originator_event_types_match_serde_tags() {
        let events = vec![
            doc_created(doc_state("a")),
            OE::OriginatorStateChanged {
                state: doc_state("b"),
                version: 2,
                at: t(1),
            },
            OE::OriginatorRestored {
                caretaker: "ct".into(),
                memento_id: "m1".into(),
                restored_version: 1,
                state: doc_state("a"),
                version: 3,
                at: t(2),
            },
        ];
        let names: Vec<String> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(
            names,
            [
                "originator_created",
                "originator_state_changed",
                "originator_restored"
            ]
        );
        for e in events {
            let v = serde_json::to_value(&e).expect("serialize");
            assert_eq!(v["type"], json!(e.event_type()));
            assert_eq!(e.event_version(), "1");
            let back: OE = serde_json::from_value(v).expect("round trip");
            assert_eq!(back, e);
        }
    }
}

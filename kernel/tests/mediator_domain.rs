//! Given/when/then tests of the mediator context's aggregates (mediator, registry of
//! names): one test per rule, each event and each error path.

mod mediator {
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use cqrs_es::test::TestFramework;
    use cqrs_es::{Aggregate, DomainEvent};
    use serde_json::{json, Map, Value};

    use kernel::domain::mediator::{
        Mediator, MediatorCommand as MC, MediatorEvent as ME, MediatorRegistry, MessageKind,
        RegistryCommand as RC, RegistryEvent as RE, MAX_MESSAGE_BYTES, MEDIATOR, MEDIATOR_REGISTRY,
    };
    use kernel::domain::{Context, DomainError};

    type MediatorTest = TestFramework<Mediator>;
    type RegistryTest = TestFramework<MediatorRegistry>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date")
            + Duration::seconds(secs)
    }

    fn invalid(field: &str) -> impl Fn(DomainError) {
        let field = field.to_string();
        move |e| match e {
            DomainError::Invalid { field: Some(f), .. } if f == field => {}
            other => panic!("expected Invalid({field}), got {other:?}"),
        }
    }

    fn not_found(e: DomainError) {
        assert!(matches!(e, DomainError::NotFound(_)), "{e:?}");
    }

    fn already_exists(e: DomainError) {
        assert!(matches!(e, DomainError::AlreadyExists(_)), "{e:?}");
    }

    fn conflict_containing(text: &str) -> impl Fn(DomainError) {
        let text = text.to_string();
        move |e| match e {
            DomainError::StateConflict(message) if message.contains(&text) => {}
            other => panic!("expected a StateConflict containing {text:?}, got {other:?}"),
        }
    }

    fn created() -> ME {
        ME::MediatorCreated {
            name: "chat".into(),
            description: Some("Team chat".into()),
            metadata: Map::new(),
            at: t(0),
        }
    }

    fn registered(id: &str) -> ME {
        ME::ColleagueRegistered {
            colleague_id: id.into(),
            name: format!("Colleague {id}"),
            colleague_type: "service".into(),
            at: t(1),
        }
    }

    fn deleted() -> ME {
        ME::MediatorDeleted {
            name: "chat".into(),
            at: t(9),
        }
    }

    /// A mediator with colleagues a, b and c.
    fn with_three() -> Vec<ME> {
        vec![created(), registered("a"), registered("b"), registered("c")]
    }

    fn register(id: &str, name: &str, kind: &str, max: u32) -> MC {
        MC::RegisterColleague {
            colleague_id: id.into(),
            name: name.into(),
            colleague_type: kind.into(),
            max_colleagues: max,
            at: t(2),
        }
    }

    fn send(sender: &str, recipient: &str, kind: MessageKind, message: Value) -> MC {
        MC::SendMessage {
            message_id: "m1".into(),
            sender_id: sender.into(),
            recipient_id: recipient.into(),
            kind,
            message,
            at: t(3),
        }
    }

    fn broadcast(sender: &str, kind: MessageKind, message: Value) -> MC {
        MC::BroadcastMessage {
            message_id: "m2".into(),
            sender_id: sender.into(),
            kind,
            message,
            at: t(4),
        }
    }

    #[test]
    fn mediator_types_and_event_names() {
        assert_eq!(Context::of_aggregate(MEDIATOR), Context::Mediator);
        assert_eq!(Context::of_aggregate(MEDIATOR_REGISTRY), Context::Mediator);
        assert_eq!(<Mediator as Aggregate>::TYPE, "mediator");
        let names: Vec<String> = [
            created(),
            ME::MediatorUpdated {
                description: None,
                metadata: None,
                at: t(0),
            },
            deleted(),
            registered("a"),
            ME::ColleagueUnregistered {
                colleague_id: "a".into(),
                at: t(0),
            },
            ME::MessageSent {
                message_id: "m".into(),
                sender_id: "a".into(),
                recipient_id: "b".into(),
                kind: MessageKind::Message,
                message: json!("x"),
                sent_at: t(0),
            },
            ME::MessageBroadcasted {
                message_id: "m".into(),
                sender_id: "a".into(),
                recipients: vec![],
                kind: MessageKind::Message,
                message: json!("x"),
                sent_at: t(0),
            },
        ]
        .iter()
        .map(DomainEvent::event_type)
        .collect();
        assert_eq!(
            names,
            [
                "mediator_created",
                "mediator_updated",
                "mediator_deleted",
                "colleague_registered",
                "colleague_unregistered",
                "message_sent",
                "message_broadcasted"
            ]
        );
        assert_eq!(created().event_version(), "1");
    }

    #[test]
    fn mediator_message_events_have_the_websocket_shape() {
        let sent = serde_json::to_value(ME::MessageSent {
            message_id: "m".into(),
            sender_id: "a".into(),
            recipient_id: "b".into(),
            kind: MessageKind::Task,
            message: json!({}),
            sent_at: t(0),
        })
        .expect("json");
        assert_eq!(sent["recipient_id"], "b");
        assert_eq!(sent["sender_id"], "a");
        assert_eq!(sent["kind"], "task");
        assert_eq!(sent["message_id"], "m");
        assert!(sent["sent_at"].is_string());
        let broadcast = serde_json::to_value(ME::MessageBroadcasted {
            message_id: "m".into(),
            sender_id: "a".into(),
            recipients: vec!["b".into()],
            kind: MessageKind::Message,
            message: json!("x"),
            sent_at: t(0),
        })
        .expect("json");
        assert_eq!(broadcast["recipients"], json!(["b"]));
    }

    // ---------------------------------------------------------------- lifecycle

    #[test]
    fn mediator_create() {
        MediatorTest::with(())
            .given_no_previous_events()
            .when(MC::CreateMediator {
                name: "chat".into(),
                description: Some("  Team chat ".into()),
                metadata: Map::new(),
                at: t(0),
            })
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn mediator_create_refuses_a_bad_name_a_live_one_and_bad_fields() {
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            MediatorTest::with(())
                .given_no_previous_events()
                .when(MC::CreateMediator {
                    name: bad.to_string(),
                    description: None,
                    metadata: Map::new(),
                    at: t(0),
                })
                .then_expect_error_message(
                    "name must be 1 to 128 characters of letters, digits, '.', '_' or '-'",
                );
        }
        let error = MediatorTest::with(())
            .given(vec![created()])
            .when(MC::CreateMediator {
                name: "chat".into(),
                description: None,
                metadata: Map::new(),
                at: t(1),
            })
            .inspect_result()
            .expect_err("a live mediator cannot be created again");
        already_exists(error);
        let error = MediatorTest::with(())
            .given_no_previous_events()
            .when(MC::CreateMediator {
                name: "chat".into(),
                description: Some("   ".into()),
                metadata: Map::new(),
                at: t(0),
            })
            .inspect_result()
            .expect_err("blank description");
        invalid("description")(error);
        let metadata: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        let error = MediatorTest::with(())
            .given_no_previous_events()
            .when(MC::CreateMediator {
                name: "chat".into(),
                description: None,
                metadata,
                at: t(0),
            })
            .inspect_result()
            .expect_err("too much metadata");
        invalid("metadata")(error);
    }

    #[test]
    fn mediator_created_again_after_delete_starts_empty() {
        MediatorTest::with(())
            .given(vec![created(), registered("a"), deleted()])
            .when(MC::CreateMediator {
                name: "chat".into(),
                description: Some("Team chat".into()),
                metadata: Map::new(),
                at: t(0),
            })
            .then_expect_events(vec![created()]);
        let mut state = Mediator::default();
        for event in [created(), registered("a"), deleted(), created()] {
            state.apply(event);
        }
        assert!(state.is_live());
        assert!(state.colleagues().is_empty());
        assert_eq!(state.version(), 4);
    }

    #[test]
    fn mediator_update() {
        let mut metadata = Map::new();
        metadata.insert("team".into(), json!("core"));
        MediatorTest::with(())
            .given(vec![created()])
            .when(MC::UpdateMediator {
                description: Some("New".into()),
                metadata: Some(metadata.clone()),
                expected_version: Some(1),
                at: t(5),
            })
            .then_expect_events(vec![ME::MediatorUpdated {
                description: Some("New".into()),
                metadata: Some(metadata),
                at: t(5),
            }]);
        let error = MediatorTest::with(())
            .given(vec![created()])
            .when(MC::UpdateMediator {
                description: None,
                metadata: None,
                expected_version: None,
                at: t(5),
            })
            .inspect_result()
            .expect_err("nothing to update");
        assert!(matches!(error, DomainError::Invalid { field: None, .. }));
        let error = MediatorTest::with(())
            .given(vec![created()])
            .when(MC::UpdateMediator {
                description: Some("x".into()),
                metadata: None,
                expected_version: Some(7),
                at: t(5),
            })
            .inspect_result()
            .expect_err("stale");
        conflict_containing("stale version")(error);
        let error = MediatorTest::with(())
            .given_no_previous_events()
            .when(MC::UpdateMediator {
                description: Some("x".into()),
                metadata: None,
                expected_version: None,
                at: t(5),
            })
            .inspect_result()
            .expect_err("unknown");
        not_found(error);
    }

    #[test]
    fn mediator_delete() {
        MediatorTest::with(())
            .given(vec![created()])
            .when(MC::DeleteMediator {
                expected_version: Some(1),
                at: t(9),
            })
            .then_expect_events(vec![deleted()]);
        let error = MediatorTest::with(())
            .given(vec![created()])
            .when(MC::DeleteMediator {
                expected_version: Some(3),
                at: t(9),
            })
            .inspect_result()
            .expect_err("stale");
        conflict_containing("stale version")(error);
    }

    #[test]
    fn mediator_deleted_refuses_everything_but_create() {
        let commands = vec![
            MC::UpdateMediator {
                description: Some("x".into()),
                metadata: None,
                expected_version: None,
                at: t(10),
            },
            MC::DeleteMediator {
                expected_version: None,
                at: t(10),
            },
            register("d", "D", "service", 10),
            MC::UnregisterColleague {
                colleague_id: "a".into(),
                at: t(10),
            },
            send("a", "b", MessageKind::Message, json!("hi")),
            broadcast("a", MessageKind::Message, json!("hi")),
        ];
        for command in commands {
            let mut given = with_three();
            given.push(deleted());
            let error = MediatorTest::with(())
                .given(given)
                .when(command.clone())
                .inspect_result()
                .expect_err("a deleted mediator refuses it");
            assert_eq!(
                error,
                DomainError::NotFound("mediator chat".into()),
                "{command:?}"
            );
        }
    }

    // ---------------------------------------------------------------- colleagues

    #[test]
    fn mediator_register_colleague() {
        MediatorTest::with(())
            .given(vec![created()])
            .when(MC::RegisterColleague {
                colleague_id: "a".into(),
                name: " Colleague a ".into(),
                colleague_type: "service".into(),
                max_colleagues: 10,
                at: t(1),
            })
            .then_expect_events(vec![registered("a")]);
    }

    #[test]
    fn mediator_register_colleague_checks_its_fields() {
        for (command, field) in [
            (register("a b", "A", "service", 10), "id"),
            (register("", "A", "service", 10), "id"),
            (register("a", "  ", "service", 10), "name"),
            (register("a", &"n".repeat(257), "service", 10), "name"),
            (register("a", "A", "Service", 10), "type"),
            (register("a", "A", "", 10), "type"),
            (register("a", "A", &"t".repeat(65), 10), "type"),
        ] {
            let error = MediatorTest::with(())
                .given(vec![created()])
                .when(command)
                .inspect_result()
                .expect_err("a bad field");
            invalid(field)(error);
        }
    }

    #[test]
    fn mediator_register_colleague_twice_or_beyond_the_limit() {
        let error = MediatorTest::with(())
            .given(with_three())
            .when(register("a", "A", "service", 10))
            .inspect_result()
            .expect_err("taken");
        already_exists(error);
        let error = MediatorTest::with(())
            .given(with_three())
            .when(register("d", "D", "service", 3))
            .inspect_result()
            .expect_err("full");
        conflict_containing("max_colleagues")(error);
        // An unregistered colleague frees its place.
        let mut given = with_three();
        given.push(ME::ColleagueUnregistered {
            colleague_id: "a".into(),
            at: t(2),
        });
        MediatorTest::with(())
            .given(given)
            .when(register("d", "D", "service", 3))
            .then_expect_events(vec![ME::ColleagueRegistered {
                colleague_id: "d".into(),
                name: "D".into(),
                colleague_type: "service".into(),
                at: t(2),
            }]);
        let error = MediatorTest::with(())
            .given_no_previous_events()
            .when(register("a", "A", "service", 3))
            .inspect_result()
            .expect_err("no mediator");
        not_found(error);
    }

    #[test]
    fn mediator_unregister_colleague() {
        MediatorTest::with(())
            .given(with_three())
            .when(MC::UnregisterColleague {
                colleague_id: "b".into(),
                at: t(5),
            })
            .then_expect_events(vec![ME::ColleagueUnregistered {
                colleague_id: "b".into(),
                at: t(5),
            }]);
        let error = MediatorTest::with(())
            .given(with_three())
            .when(MC::UnregisterColleague {
                colleague_id: "z".into(),
                at: t(5),
            })
            .inspect_result()
            .expect_err("unknown colleague");
        not_found(error);
    }

    // ---------------------------------------------------------------- messages

    #[test]
    fn mediator_send_message() {
        MediatorTest::with(())
            .given(with_three())
            .when(send("a", "b", MessageKind::Message, json!("Hello")))
            .then_expect_events(vec![ME::MessageSent {
                message_id: "m1".into(),
                sender_id: "a".into(),
                recipient_id: "b".into(),
                kind: MessageKind::Message,
                message: json!("Hello"),
                sent_at: t(3),
            }]);
        // To oneself, as the seed's command and query examples do.
        MediatorTest::with(())
            .given(with_three())
            .when(send("a", "a", MessageKind::Message, json!("note")))
            .then_expect_events(vec![ME::MessageSent {
                message_id: "m1".into(),
                sender_id: "a".into(),
                recipient_id: "a".into(),
                kind: MessageKind::Message,
                message: json!("note"),
                sent_at: t(3),
            }]);
    }

    #[test]
    fn mediator_send_needs_registered_sender_and_recipient() {
        for (command, field) in [
            (
                send("z", "b", MessageKind::Message, json!("x")),
                "sender_id",
            ),
            (
                send("a", "z", MessageKind::Message, json!("x")),
                "recipient_id",
            ),
            (
                send("a b", "b", MessageKind::Message, json!("x")),
                "sender_id",
            ),
            (
                broadcast("z", MessageKind::Message, json!("x")),
                "sender_id",
            ),
        ] {
            let error = MediatorTest::with(())
                .given(with_three())
                .when(command)
                .inspect_result()
                .expect_err("not registered");
            invalid(field)(error);
        }
        let error = MediatorTest::with(())
            .given_no_previous_events()
            .when(send("a", "b", MessageKind::Message, json!("x")))
            .inspect_result()
            .expect_err("no mediator");
        not_found(error);
    }

    #[test]
    fn mediator_send_checks_the_payload_of_every_kind() {
        use MessageKind as K;
        let cases = [
            (K::Message, json!(""), "message"),
            (K::Event, json!({"type": "x"}), "message.data"),
            (K::Command, json!({"type": 1, "data": {}}), "message.type"),
            (K::Query, json!({"type": "q", "data": "x"}), "message.data"),
            (
                K::Notification,
                json!({"type": "email", "recipient_id": "u1"}),
                "message.content",
            ),
            (
                K::Workflow,
                json!({"name": "w", "steps": [{"name": "a", "type": "t"}, {"name": "b"}]}),
                "message.steps[1].type",
            ),
            (
                K::Service,
                json!({"name": "s", "type": "t"}),
                "message.status",
            ),
            (
                K::Resource,
                json!({"name": "r", "type": "t", "capacity": -1, "used": 0}),
                "message.capacity",
            ),
            (
                K::Task,
                json!({"name": "t", "type": "t", "priority": "high"}),
                "message.priority",
            ),
            (
                K::Job,
                json!({"name": "j", "type": "t", "schedule": "every day"}),
                "message.schedule",
            ),
        ];
        for (kind, message, field) in cases {
            let error = MediatorTest::with(())
                .given(with_three())
                .when(send("a", "b", kind, message.clone()))
                .inspect_result()
                .expect_err("a bad payload");
            invalid(field)(error);
            let error = MediatorTest::with(())
                .given(with_three())
                .when(broadcast("a", kind, message))
                .inspect_result()
                .expect_err("a bad payload");
            invalid(field)(error);
        }
        let error = MediatorTest::with(())
            .given(with_three())
            .when(send(
                "a",
                "b",
                K::Message,
                json!("x".repeat(MAX_MESSAGE_BYTES)),
            ))
            .inspect_result()
            .expect_err("too large");
        assert!(matches!(error, DomainError::TooLarge(_)), "{error:?}");
    }

    #[test]
    fn mediator_send_accepts_the_seeds_examples() {
        use MessageKind as K;
        for (kind, message) in [
            (K::Message, json!("Hello from colleague 1")),
            (
                K::Event,
                json!({"type": "user_created", "data": {"user_id": "123"}, "source": "user_service"}),
            ),
            (
                K::Command,
                json!({"type": "create_user", "data": {"name": "John Doe"}}),
            ),
            (
                K::Query,
                json!({"type": "get_user", "data": {"user_id": "123"}}),
            ),
            (
                K::Notification,
                json!({"type": "email", "content": "Welcome to our service!", "recipient_id": "user123"}),
            ),
            (
                K::Workflow,
                json!({"name": "user_registration", "steps": [
                    {"name": "validate_input", "type": "validation"},
                    {"name": "create_user", "type": "creation"},
                    {"name": "send_welcome_email", "type": "notification"}
                ]}),
            ),
            (
                K::Service,
                json!({"name": "user_service", "type": "microservice", "status": "running"}),
            ),
            (
                K::Resource,
                json!({"name": "database_connection", "type": "connection", "capacity": 100, "used": 50}),
            ),
            (
                K::Task,
                json!({"name": "process_payment", "type": "computation", "priority": 1}),
            ),
            (
                K::Job,
                json!({"name": "daily_report", "type": "scheduled", "schedule": "0 0 * * *"}),
            ),
        ] {
            MediatorTest::with(())
                .given(with_three())
                .when(send("a", "b", kind, message.clone()))
                .then_expect_events(vec![ME::MessageSent {
                    message_id: "m1".into(),
                    sender_id: "a".into(),
                    recipient_id: "b".into(),
                    kind,
                    message,
                    sent_at: t(3),
                }]);
        }
    }

    #[test]
    fn mediator_broadcast_reaches_everyone_but_the_sender() {
        MediatorTest::with(())
            .given(with_three())
            .when(broadcast("b", MessageKind::Message, json!("all hands")))
            .then_expect_events(vec![ME::MessageBroadcasted {
                message_id: "m2".into(),
                sender_id: "b".into(),
                recipients: vec!["a".into(), "c".into()],
                kind: MessageKind::Message,
                message: json!("all hands"),
                sent_at: t(4),
            }]);
        // Alone: a broadcast with no recipients.
        MediatorTest::with(())
            .given(vec![created(), registered("a")])
            .when(broadcast("a", MessageKind::Message, json!("anyone?")))
            .then_expect_events(vec![ME::MessageBroadcasted {
                message_id: "m2".into(),
                sender_id: "a".into(),
                recipients: vec![],
                kind: MessageKind::Message,
                message: json!("anyone?"),
                sent_at: t(4),
            }]);
    }

    #[test]
    fn mediator_state_counts_messages_and_colleagues() {
        let mut state = Mediator::default();
        for event in with_three() {
            state.apply(event);
        }
        state.apply(ME::ColleagueUnregistered {
            colleague_id: "b".into(),
            at: t(5),
        });
        state.apply(ME::MessageSent {
            message_id: "m".into(),
            sender_id: "a".into(),
            recipient_id: "c".into(),
            kind: MessageKind::Message,
            message: json!("x"),
            sent_at: t(6),
        });
        assert_eq!(
            state.colleagues().keys().cloned().collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(state.message_count(), 1);
        assert_eq!(state.version(), 6);
        assert_eq!(state.name(), "chat");
    }

    // ---------------------------------------------------------------- registry

    #[test]
    fn mediator_registry_claims_up_to_the_limit() {
        let claimed = |name: &str| RE::MediatorNameClaimed {
            name: name.into(),
            at: t(0),
        };
        RegistryTest::with(())
            .given(vec![claimed("a")])
            .when(RC::ClaimName {
                name: "b".into(),
                max_mediators: 2,
                at: t(0),
            })
            .then_expect_events(vec![claimed("b")]);
        let error = RegistryTest::with(())
            .given(vec![claimed("a"), claimed("b")])
            .when(RC::ClaimName {
                name: "c".into(),
                max_mediators: 2,
                at: t(0),
            })
            .inspect_result()
            .expect_err("full");
        conflict_containing("max_mediators")(error);
        let error = RegistryTest::with(())
            .given(vec![claimed("a")])
            .when(RC::ClaimName {
                name: "a".into(),
                max_mediators: 2,
                at: t(0),
            })
            .inspect_result()
            .expect_err("taken");
        already_exists(error);
        // A released name frees its place.
        RegistryTest::with(())
            .given(vec![
                claimed("a"),
                claimed("b"),
                RE::MediatorNameReleased {
                    name: "a".into(),
                    at: t(1),
                },
            ])
            .when(RC::ClaimName {
                name: "c".into(),
                max_mediators: 2,
                at: t(0),
            })
            .then_expect_events(vec![claimed("c")]);
    }

    #[test]
    fn mediator_registry_release() {
        RegistryTest::with(())
            .given(vec![RE::MediatorNameClaimed {
                name: "a".into(),
                at: t(0),
            }])
            .when(RC::ReleaseName {
                name: "a".into(),
                at: t(1),
            })
            .then_expect_events(vec![RE::MediatorNameReleased {
                name: "a".into(),
                at: t(1),
            }]);
        RegistryTest::with(())
            .given_no_previous_events()
            .when(RC::ReleaseName {
                name: "a".into(),
                at: t(1),
            })
            .then_expect_events(vec![]);
        let mut registry = MediatorRegistry::default();
        registry.apply(RE::MediatorNameClaimed {
            name: "a".into(),
            at: t(0),
        });
        assert!(registry.names().contains("a"));
    }
}

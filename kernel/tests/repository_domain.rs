//! Given/when/then tests of the repository context's aggregates (user, payment, order,
//! product): one test per rule, each event and each error path.

mod repository {
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use cqrs_es::test::TestFramework;
    use cqrs_es::{Aggregate, DomainEvent};
    use kernel::domain::repository::order::validate_items;
    use kernel::domain::repository::user::email_claims;
    use kernel::domain::repository::{
        nest_field, normalize_email, EmailClaims, Order, OrderCommand as OC, OrderEvent as OE,
        OrderLine, OrderStatus as OS, Payment, PaymentCommand as PC, PaymentEvent as PE,
        PaymentStatus as PS, PricedItem, Product, ProductCommand as RC, ProductEvent as RE, User,
        UserCommand as UC, UserEvent as UE, ORDER, PAYMENT, PRODUCT, USER,
    };
    use kernel::domain::{Context, DomainError};

    type UserTest = TestFramework<User>;
    type PaymentTest = TestFramework<Payment>;
    type OrderTest = TestFramework<Order>;
    type ProductTest = TestFramework<Product>;

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

    fn conflict_containing(text: &str) -> impl Fn(DomainError) {
        let text = text.to_string();
        move |e| match e {
            DomainError::StateConflict(message) if message.contains(&text) => {}
            other => panic!("expected a StateConflict containing {text:?}, got {other:?}"),
        }
    }

    fn unnamed_invalid(e: DomainError) {
        match e {
            DomainError::Invalid { field: None, .. } => {}
            other => panic!("expected an Invalid without a field, got {other:?}"),
        }
    }

    #[test]
    fn repository_types_and_event_names() {
        for t in [USER, PAYMENT, ORDER, PRODUCT] {
            assert_eq!(Context::of_aggregate(t), Context::Repository, "{t}");
        }
        assert_eq!(<User as Aggregate>::TYPE, "user");
        assert_eq!(<Payment as Aggregate>::TYPE, "payment");
        assert_eq!(<Order as Aggregate>::TYPE, "order");
        assert_eq!(<Product as Aggregate>::TYPE, "product");
        assert_eq!(user_created().event_type(), "user_created");
        assert_eq!(user_created().event_version(), "1");
        assert_eq!(payment_created().event_type(), "payment_created");
        assert_eq!(order_created().event_type(), "order_created");
        assert_eq!(product_created(5).event_type(), "product_created");
        assert_eq!(
            RE::ProductStockReserved {
                order_id: "o".into(),
                quantity: 1,
                stock: 1,
                at: t(0)
            }
            .event_type(),
            "product_stock_reserved"
        );
    }

    // ---------------------------------------------------------------- user

    fn user_created() -> UE {
        UE::UserCreated {
            id: "u1".into(),
            email: "Ada@Example.com".into(),
            name: "Ada".into(),
            at: t(0),
        }
    }

    fn create_user(email: &str, name: &str) -> UC {
        UC::CreateUser {
            id: "u1".into(),
            email: email.into(),
            name: name.into(),
            at: t(0),
        }
    }

    fn update_user(email: Option<&str>, name: Option<&str>, expected: Option<u64>) -> UC {
        UC::UpdateUser {
            email: email.map(Into::into),
            name: name.map(Into::into),
            expected_version: expected,
            at: t(1),
        }
    }

    #[test]
    fn user_create_trims_and_keeps_case() {
        UserTest::with(())
            .given_no_previous_events()
            .when(create_user("  Ada@Example.com ", " Ada "))
            .then_expect_events(vec![user_created()]);
    }

    #[test]
    fn user_create_rejects_bad_input() {
        for (email, name, field) in [
            ("not-an-email", "Ada", "email"),
            ("", "Ada", "email"),
            ("a@b", "Ada", "email"),
            ("ada@example.com", "   ", "name"),
            ("ada@example.com", &"x".repeat(257), "name"),
        ] {
            let r = UserTest::with(())
                .given_no_previous_events()
                .when(create_user(email, name))
                .inspect_result();
            invalid(field)(r.expect_err(field));
        }
        let r = UserTest::with(())
            .given_no_previous_events()
            .when(UC::CreateUser {
                id: "a b".into(),
                email: "a@b.co".into(),
                name: "A".into(),
                at: t(0),
            })
            .inspect_result();
        invalid("id")(r.expect_err("bad id"));
    }

    #[test]
    fn user_create_twice_already_exists() {
        UserTest::with(())
            .given(vec![user_created()])
            .when(create_user("other@example.com", "Other"))
            .then_expect_error(DomainError::AlreadyExists("user u1".into()));
    }

    #[test]
    fn user_update_changes_given_fields_and_remembers_old_email() {
        UserTest::with(())
            .given(vec![user_created()])
            .when(update_user(Some("ada@new.org"), None, Some(1)))
            .then_expect_events(vec![UE::UserUpdated {
                email: Some("ada@new.org".into()),
                name: None,
                previous_email: Some("Ada@Example.com".into()),
                at: t(1),
            }]);
        UserTest::with(())
            .given(vec![user_created()])
            .when(update_user(None, Some("Ada L."), None))
            .then_expect_events(vec![UE::UserUpdated {
                email: None,
                name: Some("Ada L.".into()),
                previous_email: None,
                at: t(1),
            }]);
    }

    #[test]
    fn user_update_rules() {
        let run = |given: Vec<UE>, cmd: UC| {
            UserTest::with(())
                .given(given)
                .when(cmd)
                .inspect_result()
                .expect_err("refused")
        };
        unnamed_invalid(run(vec![user_created()], update_user(None, None, None)));
        invalid("email")(run(
            vec![user_created()],
            update_user(Some("nope"), None, None),
        ));
        conflict_containing("stale version")(run(
            vec![user_created()],
            update_user(None, Some("B"), Some(3)),
        ));
        assert_eq!(
            run(vec![], update_user(None, Some("B"), None)),
            DomainError::NotFound("user".into())
        );
        let deleted = UE::UserDeleted {
            email: "Ada@Example.com".into(),
            at: t(2),
        };
        assert_eq!(
            run(
                vec![user_created(), deleted],
                update_user(None, Some("B"), None)
            ),
            DomainError::NotFound("user u1".into())
        );
    }

    #[test]
    fn user_delete_then_gone() {
        let deleted = UE::UserDeleted {
            email: "Ada@Example.com".into(),
            at: t(2),
        };
        UserTest::with(())
            .given(vec![user_created()])
            .when(UC::DeleteUser {
                expected_version: Some(1),
                at: t(2),
            })
            .then_expect_events(vec![deleted.clone()]);
        UserTest::with(())
            .given(vec![user_created(), deleted.clone()])
            .when(UC::DeleteUser {
                expected_version: None,
                at: t(3),
            })
            .then_expect_error(DomainError::NotFound("user u1".into()));
        // A deleted user's id is not reused.
        UserTest::with(())
            .given(vec![user_created(), deleted])
            .when(create_user("x@y.zz", "X"))
            .then_expect_error(DomainError::AlreadyExists("user u1".into()));
    }

    #[test]
    fn user_state_follows_events() {
        let mut user = User::default();
        assert!(!user.is_live());
        user.apply(user_created());
        user.apply(UE::UserUpdated {
            email: Some("ada@new.org".into()),
            name: Some("Ada L.".into()),
            previous_email: Some("Ada@Example.com".into()),
            at: t(1),
        });
        assert!(user.is_live());
        assert_eq!(
            (user.email(), user.name(), user.version()),
            ("ada@new.org", "Ada L.", 2)
        );
        user.apply(UE::UserDeleted {
            email: "ada@new.org".into(),
            at: t(2),
        });
        assert!(!user.is_live());
    }

    #[test]
    fn user_email_claims() {
        assert_eq!(
            email_claims(&user_created()),
            EmailClaims {
                reserve: Some("ada@example.com".into()),
                release: None
            }
        );
        let changed = UE::UserUpdated {
            email: Some("ada@new.org".into()),
            name: None,
            previous_email: Some("Ada@Example.com".into()),
            at: t(1),
        };
        assert_eq!(
            email_claims(&changed),
            EmailClaims {
                reserve: Some("ada@new.org".into()),
                release: Some("ada@example.com".into())
            }
        );
        // Only the case changed: the reservation stays as it is.
        let recased = UE::UserUpdated {
            email: Some("ADA@example.com".into()),
            name: None,
            previous_email: Some("Ada@Example.com".into()),
            at: t(1),
        };
        assert_eq!(email_claims(&recased), EmailClaims::default());
        let renamed = UE::UserUpdated {
            email: None,
            name: Some("B".into()),
            previous_email: None,
            at: t(1),
        };
        assert_eq!(email_claims(&renamed), EmailClaims::default());
        assert_eq!(
            email_claims(&UE::UserDeleted {
                email: "Ada@Example.com".into(),
                at: t(2)
            }),
            EmailClaims {
                reserve: None,
                release: Some("ada@example.com".into())
            }
        );
        assert_eq!(normalize_email(" X@Y.Z "), "x@y.z");
    }

    // ---------------------------------------------------------------- payment

    fn payment_created() -> PE {
        PE::PaymentCreated {
            id: "pay1".into(),
            user_id: "u1".into(),
            amount: 100.5,
            currency: "USD".into(),
            gateway: "stripe".into(),
            status: PS::Pending,
            at: t(0),
        }
    }

    fn create_payment(amount: f64, currency: &str, gateway: &str) -> PC {
        PC::CreatePayment {
            id: "pay1".into(),
            user_id: "u1".into(),
            amount,
            currency: currency.into(),
            gateway: gateway.into(),
            at: t(0),
        }
    }

    fn set_status(status: PS) -> PC {
        PC::UpdatePayment {
            status: Some(status),
            amount: None,
            currency: None,
            gateway: None,
            expected_version: None,
            at: t(1),
        }
    }

    fn moved(from: PS, to: PS) -> PE {
        PE::PaymentUpdated {
            status: to,
            previous_status: from,
            amount: None,
            currency: None,
            gateway: None,
            at: t(1),
        }
    }

    /// The events that bring a payment to `status` along legal transitions.
    fn payment_at(status: PS) -> Vec<PE> {
        let path: &[PS] = match status {
            PS::Pending => &[],
            PS::Processing => &[PS::Processing],
            PS::Completed => &[PS::Processing, PS::Completed],
            PS::Failed => &[PS::Processing, PS::Failed],
            PS::Refunded => &[PS::Processing, PS::Completed, PS::Refunded],
            PS::Cancelled => &[PS::Cancelled],
        };
        let mut events = vec![payment_created()];
        let mut from = PS::Pending;
        for to in path {
            events.push(moved(from, *to));
            from = *to;
        }
        events
    }

    #[test]
    fn payment_create_is_pending() {
        PaymentTest::with(())
            .given_no_previous_events()
            .when(create_payment(100.5, "USD", "stripe"))
            .then_expect_events(vec![payment_created()]);
    }

    #[test]
    fn payment_create_rejects_bad_amounts_currencies_and_gateways() {
        for (amount, currency, gateway, field) in [
            (0.0, "USD", "stripe", "amount"),
            (-5.0, "USD", "stripe", "amount"),
            (1.005, "USD", "stripe", "amount"),
            (f64::NAN, "USD", "stripe", "amount"),
            (1e10, "USD", "stripe", "amount"),
            (1.0, "usd", "stripe", "currency"),
            (1.0, "US", "stripe", "currency"),
            (1.0, "USD", "", "gateway"),
            (1.0, "USD", "str ipe", "gateway"),
        ] {
            let r = PaymentTest::with(())
                .given_no_previous_events()
                .when(create_payment(amount, currency, gateway))
                .inspect_result();
            invalid(field)(r.expect_err(field));
        }
        PaymentTest::with(())
            .given(vec![payment_created()])
            .when(create_payment(1.0, "USD", "stripe"))
            .then_expect_error(DomainError::AlreadyExists("payment pay1".into()));
    }

    #[test]
    fn payment_every_legal_transition() {
        for from in PS::ALL {
            for to in from.next() {
                PaymentTest::with(())
                    .given(payment_at(from))
                    .when(set_status(*to))
                    .then_expect_events(vec![moved(from, *to)]);
            }
        }
    }

    #[test]
    fn payment_every_illegal_transition_is_a_conflict_with_the_reason() {
        for from in PS::ALL {
            for to in PS::ALL {
                if to == from || from.can_move_to(to) {
                    continue;
                }
                let err = PaymentTest::with(())
                    .given(payment_at(from))
                    .when(set_status(to))
                    .inspect_result()
                    .expect_err("illegal");
                conflict_containing(&format!("cannot go from {from} to {to}"))(err);
            }
        }
        let err = PaymentTest::with(())
            .given(payment_at(PS::Refunded))
            .when(set_status(PS::Pending))
            .inspect_result()
            .expect_err("final");
        conflict_containing("refunded is final")(err);
    }

    #[test]
    fn payment_same_status_with_details_while_pending() {
        PaymentTest::with(())
            .given(vec![payment_created()])
            .when(PC::UpdatePayment {
                status: Some(PS::Pending),
                amount: Some(20.0),
                currency: Some("EUR".into()),
                gateway: Some("adyen".into()),
                expected_version: Some(1),
                at: t(1),
            })
            .then_expect_events(vec![PE::PaymentUpdated {
                status: PS::Pending,
                previous_status: PS::Pending,
                amount: Some(20.0),
                currency: Some("EUR".into()),
                gateway: Some("adyen".into()),
                at: t(1),
            }]);
    }

    #[test]
    fn payment_update_rules() {
        let run = |given: Vec<PE>, cmd: PC| {
            PaymentTest::with(())
                .given(given)
                .when(cmd)
                .inspect_result()
                .expect_err("refused")
        };
        let update = |amount: Option<f64>, expected: Option<u64>| PC::UpdatePayment {
            status: None,
            amount,
            currency: None,
            gateway: None,
            expected_version: expected,
            at: t(1),
        };
        unnamed_invalid(run(vec![payment_created()], update(None, None)));
        invalid("amount")(run(vec![payment_created()], update(Some(-1.0), None)));
        conflict_containing("stale version")(run(
            vec![payment_created()],
            update(Some(2.0), Some(2)),
        ));
        conflict_containing("only while pending")(run(
            payment_at(PS::Processing),
            update(Some(2.0), None),
        ));
        assert_eq!(
            run(vec![], update(Some(2.0), None)),
            DomainError::NotFound("payment".into())
        );
    }

    #[test]
    fn payment_delete_rules() {
        let delete = PC::DeletePayment {
            expected_version: None,
            at: t(5),
        };
        PaymentTest::with(())
            .given(payment_at(PS::Completed))
            .when(delete.clone())
            .then_expect_events(vec![PE::PaymentDeleted {
                user_id: "u1".into(),
                status: PS::Completed,
                at: t(5),
            }]);
        let err = PaymentTest::with(())
            .given(payment_at(PS::Processing))
            .when(delete.clone())
            .inspect_result()
            .expect_err("processing");
        conflict_containing("is processing")(err);
        let mut deleted = payment_at(PS::Pending);
        deleted.push(PE::PaymentDeleted {
            user_id: "u1".into(),
            status: PS::Pending,
            at: t(5),
        });
        PaymentTest::with(())
            .given(deleted)
            .when(delete)
            .then_expect_error(DomainError::NotFound("payment pay1".into()));
    }

    // ---------------------------------------------------------------- order

    fn line(product_id: &str, quantity: u64, unit_price: f64) -> OrderLine {
        OrderLine {
            product_id: product_id.into(),
            quantity,
            unit_price,
        }
    }

    fn priced(product_id: &str, quantity: i64, unit_price: f64) -> PricedItem {
        PricedItem {
            product_id: product_id.into(),
            quantity,
            unit_price,
        }
    }

    fn place(items: Vec<PricedItem>) -> OC {
        OC::PlaceOrder {
            id: "o1".into(),
            user_id: "u1".into(),
            currency: "USD".into(),
            items,
            at: t(0),
        }
    }

    fn order_created() -> OE {
        OE::OrderCreated {
            id: "o1".into(),
            user_id: "u1".into(),
            items: vec![line("p1", 3, 0.1), line("p2", 1, 19.99)],
            currency: "USD".into(),
            total_amount: 20.29,
            status: OS::Pending,
            at: t(0),
        }
    }

    fn change(status: OS) -> OC {
        OC::ChangeStatus {
            status,
            expected_version: None,
            at: t(1),
        }
    }

    fn order_at(status: OS) -> Vec<OE> {
        let path: &[OS] = match status {
            OS::Pending => &[],
            OS::Confirmed => &[OS::Confirmed],
            OS::Shipped => &[OS::Confirmed, OS::Shipped],
            OS::Delivered => &[OS::Confirmed, OS::Shipped, OS::Delivered],
            OS::Cancelled => &[OS::Cancelled],
        };
        let mut events = vec![order_created()];
        let mut from = OS::Pending;
        for to in path {
            events.push(OE::OrderUpdated {
                status: *to,
                previous_status: from,
                at: t(1),
            });
            from = *to;
        }
        events
    }

    #[test]
    fn order_place_computes_the_total_in_cents() {
        // 3 × 0.10 + 19.99 is 20.29 exactly, not 20.290000000000003.
        OrderTest::with(())
            .given_no_previous_events()
            .when(place(vec![priced("p1", 3, 0.1), priced("p2", 1, 19.99)]))
            .then_expect_events(vec![order_created()]);
    }

    #[test]
    fn order_place_rejects_bad_items_naming_them() {
        let cases: Vec<(Vec<PricedItem>, &str)> = vec![
            (vec![], "items"),
            (vec![priced("p1", 0, 1.0)], "items[0].quantity"),
            (
                vec![priced("p1", 1, 1.0), priced("p2", -2, 1.0)],
                "items[1].quantity",
            ),
            (vec![priced("p1", 10_001, 1.0)], "items[0].quantity"),
            (vec![priced("a b", 1, 1.0)], "items[0].product_id"),
            (
                vec![priced("p1", 1, 1.0), priced("p1", 2, 1.0)],
                "items[1].product_id",
            ),
            (vec![priced("p1", 1, -1.0)], "items[0].unit_price"),
            (
                (0..101).map(|i| priced(&format!("p{i}"), 1, 1.0)).collect(),
                "items",
            ),
            (vec![priced("p1", 10_000, 1_000_000_000.0)], "items"),
        ];
        for (items, field) in cases {
            let r = OrderTest::with(())
                .given_no_previous_events()
                .when(place(items))
                .inspect_result();
            invalid(field)(r.expect_err(field));
        }
        let r = OrderTest::with(())
            .given_no_previous_events()
            .when(OC::PlaceOrder {
                id: "o1".into(),
                user_id: "u1".into(),
                currency: "dollars".into(),
                items: vec![priced("p1", 1, 1.0)],
                at: t(0),
            })
            .inspect_result();
        invalid("currency")(r.expect_err("currency"));
        OrderTest::with(())
            .given(vec![order_created()])
            .when(place(vec![priced("p1", 1, 1.0)]))
            .then_expect_error(DomainError::AlreadyExists("order o1".into()));
    }

    #[test]
    fn order_items_are_checked_before_loading() {
        assert!(validate_items([("p1", 1i64), ("p2", 2)].into_iter()).is_ok());
        invalid("items[1].product_id")(
            validate_items([("p1", 1i64), ("p1", 2)].into_iter()).expect_err("duplicate"),
        );
    }

    #[test]
    fn order_every_legal_transition() {
        for from in OS::ALL {
            for to in from.next() {
                OrderTest::with(())
                    .given(order_at(from))
                    .when(change(*to))
                    .then_expect_events(vec![OE::OrderUpdated {
                        status: *to,
                        previous_status: from,
                        at: t(1),
                    }]);
            }
        }
    }

    #[test]
    fn order_every_illegal_transition_is_a_conflict_with_the_reason() {
        for from in OS::ALL {
            for to in OS::ALL {
                if from.can_move_to(to) {
                    continue;
                }
                let err = OrderTest::with(())
                    .given(order_at(from))
                    .when(change(to))
                    .inspect_result()
                    .expect_err("illegal");
                conflict_containing(&format!("cannot go from {from} to {to}"))(err);
            }
        }
    }

    #[test]
    fn order_holds_stock_only_while_pending_or_confirmed() {
        for status in OS::ALL {
            let mut order = Order::default();
            for event in order_at(status) {
                order.apply(event);
            }
            assert_eq!(
                order.holds_stock(),
                matches!(status, OS::Pending | OS::Confirmed),
                "{status}"
            );
        }
        let mut order = Order::default();
        for event in order_at(OS::Pending) {
            order.apply(event);
        }
        order.apply(OE::OrderDeleted {
            user_id: "u1".into(),
            status: OS::Pending,
            at: t(2),
        });
        assert!(!order.holds_stock());
    }

    #[test]
    fn order_gives_stock_back_only_when_cancelled_or_deleted_while_holding_it() {
        let updated = |from: OS, to: OS| OE::OrderUpdated {
            status: to,
            previous_status: from,
            at: t(1),
        };
        let deleted = |status: OS| OE::OrderDeleted {
            user_id: "u1".into(),
            status,
            at: t(2),
        };
        for status in OS::ALL {
            let mut order = Order::default();
            for event in order_at(status) {
                order.apply(event);
            }
            let holds = matches!(status, OS::Pending | OS::Confirmed);
            assert_eq!(
                order.releases_stock(&updated(status, OS::Cancelled)),
                holds,
                "cancel from {status}"
            );
            assert_eq!(
                order.releases_stock(&deleted(status)),
                holds,
                "delete from {status}"
            );
            for to in [OS::Confirmed, OS::Shipped, OS::Delivered] {
                assert!(
                    !order.releases_stock(&updated(status, to)),
                    "{status} → {to}"
                );
            }
        }
    }

    #[test]
    fn order_stale_version_and_delete() {
        let err = OrderTest::with(())
            .given(vec![order_created()])
            .when(OC::ChangeStatus {
                status: OS::Confirmed,
                expected_version: Some(7),
                at: t(1),
            })
            .inspect_result()
            .expect_err("stale");
        conflict_containing("stale version")(err);
        OrderTest::with(())
            .given(order_at(OS::Shipped))
            .when(OC::DeleteOrder {
                expected_version: Some(3),
                at: t(2),
            })
            .then_expect_events(vec![OE::OrderDeleted {
                user_id: "u1".into(),
                status: OS::Shipped,
                at: t(2),
            }]);
        OrderTest::with(())
            .given_no_previous_events()
            .when(change(OS::Confirmed))
            .then_expect_error(DomainError::NotFound("order".into()));
    }

    // ---------------------------------------------------------------- product

    fn product_created(stock: u64) -> RE {
        RE::ProductCreated {
            id: "p1".into(),
            name: "Lamp".into(),
            category: "home".into(),
            price: 25.5,
            stock,
            at: t(0),
        }
    }

    fn create_product(price: f64, stock: i64) -> RC {
        RC::CreateProduct {
            id: "p1".into(),
            name: " Lamp ".into(),
            category: "home".into(),
            price,
            stock,
            at: t(0),
        }
    }

    fn reserve(quantity: i64) -> RC {
        RC::ReserveStock {
            order_id: "o1".into(),
            quantity,
            at: t(1),
        }
    }

    #[test]
    fn product_create_and_its_rules() {
        ProductTest::with(())
            .given_no_previous_events()
            .when(create_product(25.5, 10))
            .then_expect_events(vec![product_created(10)]);
        // A free product with no stock is fine.
        assert!(ProductTest::with(())
            .given_no_previous_events()
            .when(create_product(0.0, 0))
            .inspect_result()
            .is_ok());
        for (price, stock, field) in [
            (-0.01, 1, "price"),
            (1.001, 1, "price"),
            (1.0, -1, "stock"),
            (1.0, 1_000_000_001, "stock"),
        ] {
            let r = ProductTest::with(())
                .given_no_previous_events()
                .when(create_product(price, stock))
                .inspect_result();
            invalid(field)(r.expect_err(field));
        }
        ProductTest::with(())
            .given(vec![product_created(1)])
            .when(create_product(1.0, 1))
            .then_expect_error(DomainError::AlreadyExists("product p1".into()));
    }

    #[test]
    fn product_update_rules() {
        ProductTest::with(())
            .given(vec![product_created(10)])
            .when(RC::UpdateProduct {
                name: None,
                category: Some("garden".into()),
                price: Some(30.0),
                stock: Some(4),
                expected_version: Some(1),
                at: t(1),
            })
            .then_expect_events(vec![RE::ProductUpdated {
                name: None,
                category: Some("garden".into()),
                price: Some(30.0),
                stock: Some(4),
                at: t(1),
            }]);
        let run = |cmd: RC| {
            ProductTest::with(())
                .given(vec![product_created(10)])
                .when(cmd)
                .inspect_result()
                .expect_err("refused")
        };
        let update = |stock: Option<i64>, expected: Option<u64>| RC::UpdateProduct {
            name: None,
            category: None,
            price: None,
            stock,
            expected_version: expected,
            at: t(1),
        };
        unnamed_invalid(run(update(None, None)));
        invalid("stock")(run(update(Some(-3), None)));
        conflict_containing("stale version")(run(update(Some(3), Some(2))));
    }

    #[test]
    fn product_reserve_takes_stock_never_below_zero() {
        ProductTest::with(())
            .given(vec![product_created(5)])
            .when(reserve(5))
            .then_expect_events(vec![RE::ProductStockReserved {
                order_id: "o1".into(),
                quantity: 5,
                stock: 0,
                at: t(1),
            }]);
        let short = ProductTest::with(())
            .given(vec![product_created(5)])
            .when(reserve(6))
            .inspect_result()
            .expect_err("short");
        invalid("quantity")(short.clone());
        // Reported under the order's item by the write side.
        invalid("items[2].quantity")(nest_field(short, "items[2]"));
        invalid("quantity")(
            ProductTest::with(())
                .given(vec![product_created(5)])
                .when(reserve(0))
                .inspect_result()
                .expect_err("zero"),
        );
        ProductTest::with(())
            .given_no_previous_events()
            .when(reserve(1))
            .then_expect_error(DomainError::NotFound("product".into()));
        ProductTest::with(())
            .given(vec![product_created(5), RE::ProductDeleted { at: t(1) }])
            .when(reserve(1))
            .then_expect_error(DomainError::NotFound("product p1".into()));
    }

    #[test]
    fn product_release_gives_back_and_a_deleted_product_decides_nothing() {
        let release = RC::ReleaseStock {
            order_id: "o1".into(),
            quantity: 3,
            at: t(2),
        };
        ProductTest::with(())
            .given(vec![
                product_created(5),
                RE::ProductStockReserved {
                    order_id: "o1".into(),
                    quantity: 3,
                    stock: 2,
                    at: t(1),
                },
            ])
            .when(release.clone())
            .then_expect_events(vec![RE::ProductStockReleased {
                order_id: "o1".into(),
                quantity: 3,
                stock: 5,
                at: t(2),
            }]);
        ProductTest::with(())
            .given(vec![product_created(5), RE::ProductDeleted { at: t(1) }])
            .when(release)
            .then_expect_events(vec![]);
    }

    #[test]
    fn product_delete_then_gone() {
        ProductTest::with(())
            .given(vec![product_created(5)])
            .when(RC::DeleteProduct {
                expected_version: Some(1),
                at: t(1),
            })
            .then_expect_events(vec![RE::ProductDeleted { at: t(1) }]);
        ProductTest::with(())
            .given(vec![product_created(5), RE::ProductDeleted { at: t(1) }])
            .when(RC::DeleteProduct {
                expected_version: None,
                at: t(2),
            })
            .then_expect_error(DomainError::NotFound("product p1".into()));
        let mut product = Product::default();
        product.apply(product_created(5));
        product.apply(RE::ProductStockReserved {
            order_id: "o1".into(),
            quantity: 2,
            stock: 3,
            at: t(1),
        });
        assert_eq!((product.stock(), product.version()), (3, 2));
        assert!(product.is_live());
    }
}

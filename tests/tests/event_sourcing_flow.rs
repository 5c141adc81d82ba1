//! The event-sourcing walk-through, end to end on both backends: generic aggregates of the
//! four types, published events, the event log with its filters and paging, time travel
//! by version and by time, the snapshot round trip, stats and info.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use kernel::domain::event_sourcing::UserAggregate;
use quintet_tests::{both_backends, Reply, TestApp};

fn field<'a>(reply: &'a Reply, name: &str) -> Vec<&'a Value> {
    reply.items().iter().map(|item| &item[name]).collect()
}

async fn readme_walkthrough(app: TestApp) {
    // Create a user aggregate (the seed's example).
    let initial = json!({
        "email": "john@example.com", "first_name": "John", "last_name": "Doe", "role": "user",
    });
    let created = app
        .post(
            "/aggregates",
            json!({ "type": "user", "id": "user-123", "initial_state": initial }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    let p_created = created.position();
    assert_eq!(created.body["aggregate_type"], "user");
    assert_eq!(created.body["aggregate_id"], "user-123");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["events"], json!(["user_created"]));

    // Publish an event on it, with optimistic concurrency.
    let published = app
        .post(
            "/events/publish",
            json!({
                "type": "user_updated", "aggregate_id": "user-123", "aggregate_type": "user",
                "expected_version": 1,
                "data": { "changes": { "first_name": "Johnny" } },
                "metadata": { "source": "user-service", "correlation_id": "corr-123" },
            }),
        )
        .await
        .expect_status(StatusCode::OK);
    assert!(published.position() > p_created);
    assert_eq!(published.body["version"], 2);
    assert_eq!(published.body["events"], json!(["user_updated"]));

    // Save changes through PUT: the changed fields become one user_updated.
    let put = app
        .put(
            "/aggregates/user-123",
            json!({ "changes": { "role": "admin", "last_name": "Doe" }, "expected_version": 2 }),
        )
        .await
        .expect_status(StatusCode::OK);
    let p_put = put.position();
    assert_eq!(put.body["version"], 3);
    assert_eq!(put.body["events"], json!(["user_updated"]));

    // The current state, from the projection, read-your-writes.
    let current = app
        .get_at("/aggregates/user-123", p_put)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(current.body["id"], "user-123");
    assert_eq!(current.body["type"], "user");
    assert_eq!(current.body["version"], 3);
    assert_eq!(current.body["current_version"], 3);
    assert_eq!(current.body["active"], true);
    assert_eq!(
        current.body["state"],
        json!({
            "email": "john@example.com", "first_name": "Johnny", "last_name": "Doe",
            "role": "admin",
        })
    );
    assert_eq!(
        current.body["metadata"],
        json!({ "source": "user-service", "correlation_id": "corr-123" })
    );

    // Time travel by version: folded from the event store, the same shape.
    let v1 = app
        .get("/aggregates/user-123?version=1")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(v1.body["version"], 1);
    assert_eq!(v1.body["current_version"], 3);
    assert_eq!(v1.body["state"], initial);
    let v3 = app
        .get("/aggregates/user-123?version=3")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(v3.body, current.body, "the fold equals the projection");

    // The aggregate's events, with their envelope.
    let events = app
        .get("/events/aggregate/user-123")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(events.body["total"], 3);
    assert_eq!(
        field(&events, "type"),
        vec!["user_created", "user_updated", "user_updated"]
    );
    assert_eq!(field(&events, "version"), vec![1, 2, 3]);
    let update = &events.items()[2];
    assert_eq!(update["aggregate_type"], "user");
    assert_eq!(update["aggregate_id"], "user-123");
    assert_eq!(update["position"], p_put);
    assert_eq!(
        update["data"],
        json!({ "changes": { "role": "admin" }, "previous": { "role": "user" } })
    );
    assert_eq!(update["actor"], "e2e-writer");
    assert!(update["correlation_id"].is_string(), "{}", events.text);
    assert!(update["id"].is_string() && update["timestamp"].is_string());
    assert_eq!(
        events.items()[1]["data"]["previous"],
        json!({ "first_name": "John" })
    );
    assert_eq!(events.items()[1]["metadata"]["correlation_id"], "corr-123");

    // An order: created pending; a status change and another field are two events.
    app.post(
        "/aggregates",
        json!({ "type": "order", "id": "order-1", "initial_state": { "total": 42.5 } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let shipped = app
        .put(
            "/aggregates/order-1",
            json!({ "changes": { "status": "shipped", "tracking": "T-1" } }),
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        shipped.body["events"],
        json!(["order_status_changed", "custom"])
    );
    assert_eq!(shipped.body["version"], 3);
    let order = app
        .get_at("/aggregates/order-1", shipped.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        order.body["state"],
        json!({ "total": 42.5, "status": "shipped", "tracking": "T-1" })
    );
    let published = app
        .post(
            "/events/publish",
            json!({
                "type": "order_status_changed", "aggregate_id": "order-1",
                "aggregate_type": "order", "version": 4, "data": { "status": "delivered" },
            }),
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(published.body["version"], 4);

    // A payment created by publishing its creation event (the seed's `version: 1`).
    let payment = app
        .post(
            "/events/publish",
            json!({
                "type": "payment_processed", "aggregate_id": "pay-1", "aggregate_type": "payment",
                "version": 1, "data": { "amount": 42.5, "currency": "EUR", "status": "completed" },
            }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(payment.body["aggregate_type"], "payment");
    assert_eq!(payment.body["version"], 1);

    // A custom aggregate; a custom event fits it (and every other type).
    app.post(
        "/aggregates",
        json!({ "type": "custom", "id": "thing-1", "initial_state": { "a": 1 } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let last = app
        .post(
            "/events/publish",
            json!({
                "type": "custom", "aggregate_id": "user-123", "aggregate_type": "user",
                "data": { "note": "hello" },
            }),
        )
        .await
        .expect_status(StatusCode::OK)
        .position();

    // The event log: all, by type, by aggregate type, paged.
    let all = app.get("/events").await.expect_status(StatusCode::OK);
    assert_eq!(all.body["total"], 10, "{}", all.text);
    let positions: Vec<u64> = field(&all, "position")
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(*positions.last().expect("events"), last);
    let by_type = app
        .get("/events/type/user_updated")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(by_type.body["total"], 2);
    let custom = app
        .get("/events/type/custom")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        field(&custom, "aggregate_type"),
        vec!["order", "custom", "user"]
    );
    let orders = app
        .get("/events/aggregate-type/order")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        field(&orders, "type"),
        vec![
            "order_created",
            "order_status_changed",
            "custom",
            "order_status_changed"
        ]
    );
    let first = app
        .get("/events?limit=4")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(first.items().len(), 4);
    assert_eq!(first.body["next"], 4);
    assert_eq!(first.body["next_after_position"], positions[3]);
    let second = app
        .get("/events?limit=4&offset=4")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(field(&second, "position")[0], positions[4]);
    let cursor = app
        .get(&format!("/events?limit=4&after_position={}", positions[3]))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(field(&cursor, "position"), field(&second, "position"));
    assert_eq!(cursor.body["total"], 6, "the total counts after the cursor");
    let tail = app
        .get("/events?limit=4&offset=8")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(tail.items().len(), 2);
    assert!(tail.body.get("next").is_none(), "{}", tail.text);
    assert!(
        tail.body.get("next_after_position").is_none(),
        "{}",
        tail.text
    );

    // Time bounds: `from` at an event's timestamp includes it, `to` excludes it.
    let ts = |i: usize| {
        all.items()[i]["timestamp"]
            .as_str()
            .expect("a timestamp")
            .to_string()
    };
    let bounded = app
        .get(&format!("/events?from={}&to={}", ts(1), ts(3)))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        field(&bounded, "position"),
        vec![&json!(positions[1]), &json!(positions[2])]
    );

    // Stats and info.
    let stats = app
        .get_at("/stats", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["events"], 10, "{}", stats.text);
    assert_eq!(stats.body["aggregates"], 4);
    assert_eq!(stats.body["event_types"], 6);
    assert_eq!(
        stats.body["aggregates_by_type"],
        json!({ "user": 1, "order": 1, "payment": 1, "custom": 1 })
    );
    assert_eq!(stats.body["active_aggregates"], 4);
    assert_eq!(stats.body["events_by_type"]["user_updated"], 2);
    assert_eq!(stats.body["events_by_type"]["user_deleted"], 0);
    assert_eq!(stats.body["snapshots"], 0);
    let info = app.get("/info").await.expect_status(StatusCode::OK);
    assert_eq!(info.body["name"], "Event Sourcing Service");
    assert_eq!(info.body["version"], "1.0.0");
    assert_eq!(
        info.body["supported_aggregate_types"],
        json!(["user", "order", "payment", "custom"])
    );
    assert_eq!(
        info.body["supported_event_types"].as_array().map(Vec::len),
        Some(7)
    );
    assert_eq!(
        info.body["validation_rules"],
        json!({ "max_event_data_size": 1_048_576, "max_aggregate_events": 10_000 })
    );
}
both_backends!(readme_walkthrough);

async fn time_travel_by_time(app: TestApp) {
    app.post(
        "/aggregates",
        json!({ "type": "custom", "id": "c1", "initial_state": { "step": 1 } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    for step in 2..=3 {
        app.put("/aggregates/c1", json!({ "changes": { "step": step } }))
            .await
            .expect_status(StatusCode::OK);
    }
    let events = app
        .get("/events/aggregate/c1")
        .await
        .expect_status(StatusCode::OK);
    let stamps: Vec<String> = field(&events, "timestamp")
        .iter()
        .map(|t| t.as_str().expect("a timestamp").to_string())
        .collect();
    for (i, stamp) in stamps.iter().enumerate() {
        let at = app
            .get(&format!("/aggregates/c1?at={stamp}"))
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(at.body["version"], i as u64 + 1, "{stamp}: {}", at.text);
        assert_eq!(at.body["state"]["step"], i as u64 + 1);
        assert_eq!(at.body["current_version"], 3);
    }
    // Before the first event: it did not exist yet. Long after: the current state.
    app.get("/aggregates/c1?at=2000-01-01T00:00:00Z")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let future = app
        .get("/aggregates/c1?at=2999-01-01T00:00:00Z")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(future.body["version"], 3);
    // A timestamp with an offset, URL-encoded.
    let offset = app
        .get("/aggregates/c1?at=2999-01-01T02:00:00%2B02:00")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(offset.body["version"], 3);
}
both_backends!(time_travel_by_time);

async fn snapshot_round_trip(app: TestApp) {
    app.post(
        "/aggregates",
        json!({ "type": "user", "id": "u1", "initial_state": { "email": "a@b.co", "n": 1 } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let p = app
        .put("/aggregates/u1", json!({ "changes": { "n": 2 } }))
        .await
        .expect_status(StatusCode::OK)
        .position();

    // No snapshot yet.
    app.get_at("/snapshots/u1/latest", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let none = app
        .get_at("/snapshots/u1", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(none.body["total"], 0);

    // Force one at the current version.
    let taken = app
        .post("/snapshots", json!({ "aggregate_id": "u1" }))
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(taken.body["aggregate_type"], "user");
    assert_eq!(taken.body["aggregate_id"], "u1");
    assert_eq!(taken.body["version"], 2);
    assert_eq!(taken.body["events"], json!(["snapshot_taken"]));
    let p_taken = taken.position();

    // The snapshot store holds the current state, and loads use it.
    let (state, sequence, _) = app
        .engine
        .read_snapshot::<UserAggregate>("u1")
        .await
        .expect("a snapshot in the store");
    assert_eq!(sequence, 2);
    assert_eq!(state.state().state()["n"], 2);
    let loaded = app.engine.load::<UserAggregate>("u1").await.expect("load");
    assert!(loaded.from_snapshot);

    let latest = app
        .get_at("/snapshots/u1/latest", p_taken)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(latest.body["aggregate_id"], "u1");
    assert_eq!(latest.body["aggregate_type"], "user");
    assert_eq!(latest.body["version"], 2);
    assert_eq!(latest.body["position"], p_taken);
    let current = app
        .get_at("/aggregates/u1", p_taken)
        .await
        .expect_status(StatusCode::OK);
    let mut expected = current.body.clone();
    expected
        .as_object_mut()
        .expect("an object")
        .remove("current_version");
    assert_eq!(
        latest.body["data"], expected,
        "the snapshot holds the document"
    );

    // An earlier version, rebuilt from the events; the list is newest first.
    let older = app
        .post("/snapshots", json!({ "aggregate_id": "u1", "version": 1 }))
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(older.body["version"], 1);
    let list = app
        .get_at("/snapshots/u1", older.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(list.body["total"], 2);
    assert_eq!(field(&list, "version"), vec![1, 2]);
    assert_eq!(
        list.items()[0]["data"]["state"],
        json!({ "email": "a@b.co", "n": 1 })
    );
    let latest = app
        .get_at("/snapshots/u1/latest", older.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(latest.body["version"], 1, "latest is the newest taken");

    // Snapshots count in the stats; their log stays out of the event routes.
    let stats = app
        .get_at("/stats", older.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["snapshots"], 2);
    assert_eq!(stats.body["snapshots_by_type"]["user"], 2);
    assert_eq!(stats.body["events"], 2);
    let all = app.get("/events").await.expect_status(StatusCode::OK);
    assert_eq!(all.body["total"], 2);

    // Later events still apply on top of the snapshot.
    let p = app
        .write(Method::PUT, "/aggregates/u1")
        .header("If-Match", "\"2\"")
        .json(&json!({ "changes": { "n": 3 } }));
    let p = Reply::of(p).await.expect_status(StatusCode::OK).position();
    let now = app
        .get_at("/aggregates/u1", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(now.body["state"]["n"], 3);
    assert_eq!(now.body["version"], 3);
}
both_backends!(snapshot_round_trip);

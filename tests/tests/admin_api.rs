//! The projection admin API on read-api: status with lag, pause and resume honoured by the
//! in-process runners, a blue/green rebuild under writes with progress to poll, parked events
//! with retry, roles, and 404 problems for unknown projections and parked ids.

use std::time::{Duration, Instant};

use kernel::codec::{key_id, Aad};
use kernel::envelope::{AppendBatch, NewEvent, StreamAppend};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;
use web::Role;

use quintet_tests::{both_backends, Reply, Side, TestApp, WAIT};

async fn admin(app: &TestApp, path: &str) -> Reply {
    Reply::of(
        app.anonymous(Method::POST, Side::Read, path)
            .bearer_auth(app.token(Role::Admin)),
    )
    .await
}

async fn status(app: &TestApp) -> Value {
    app.get("/projections/memento")
        .await
        .expect_status(StatusCode::OK)
        .body
}

/// Polls the memento projection's status until `check` holds.
async fn status_until(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status(app).await;
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn caught_up(status: &Value) -> bool {
    status["lag_events"] == 0 && status["position"] == status["head"]
}

/// Appends two caretaker events whose (readable) payloads the projection cannot parse.
async fn append_poison(app: &TestApp, id: &str) -> Vec<String> {
    let mut event_ids = Vec::new();
    for sequence in 1..=2u64 {
        let event_id = Uuid::now_v7();
        let aad = Aad {
            aggregate_id: id,
            sequence,
            event_id,
        };
        let payload = app
            .engine
            .codec()
            .encode(
                &key_id("caretaker", id),
                &aad,
                br#"{"not_a_caretaker_event": true}"#,
            )
            .await
            .expect("encode");
        app.engine
            .store()
            .append(AppendBatch {
                streams: vec![StreamAppend {
                    aggregate_type: "caretaker".into(),
                    aggregate_id: id.into(),
                    expected_sequence: sequence - 1,
                    events: vec![NewEvent {
                        event_id,
                        event_type: "caretaker_created".into(),
                        event_version: 1,
                        payload,
                    }],
                }],
                correlation_id: Uuid::now_v7(),
                causation_id: None,
                actor: Some("e2e".into()),
                recorded_at: chrono::Utc::now(),
                idempotency: None,
                reservations: vec![],
                releases: vec![],
                new_keys: vec![],
            })
            .await
            .expect("append a poison event");
        event_ids.push(event_id.to_string());
    }
    event_ids
}

async fn projection_admin(app: TestApp) {
    // Roles: reading needs a token, changing needs admin; unknown names are 404 problems.
    Reply::of(app.anonymous(Method::GET, Side::Read, "/projections"))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);
    for role in [Role::Reader, Role::Writer] {
        Reply::of(
            app.anonymous(Method::POST, Side::Read, "/projections/memento/pause")
                .bearer_auth(app.token(role)),
        )
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    }
    app.get("/projections/nope")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    admin(&app, "/projections/nope/pause")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    admin(&app, "/projections/nope/rebuild")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get("/projections/nope/parked")
        .await
        .expect_problem(StatusCode::NOT_FOUND);

    // Status: caught up after a write, nothing parked.
    let written = app.create_caretaker("admin-a").await;
    let list = app
        .get("/projections")
        .await
        .expect_status(StatusCode::OK)
        .body;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["name"].as_str())
        .collect();
    assert_eq!(list["total"].as_u64(), Some(names.len() as u64));
    for name in projectors::all().iter().map(|p| p.name()) {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let first = status_until(&app, "memento catches up", |s| {
        caught_up(s) && s["position"].as_u64() >= Some(written)
    })
    .await;
    assert_eq!(first["state"], "running");
    assert_eq!(first["generation"], 0);
    assert_eq!(first["parked"], 0);
    assert_eq!(first["lag_seconds"], 0.0);
    assert!(first["events_per_second"].as_f64().is_some());

    // Pause: the runner stops applying (it re-reads the flag every 250 ms) and lag shows.
    let paused = admin(&app, "/projections/memento/pause")
        .await
        .expect_status(StatusCode::OK)
        .body;
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["paused"], true);
    let mut n = 0;
    let stalled = loop {
        n += 1;
        app.create_caretaker(&format!("admin-p{n}")).await;
        // Give the runner time to see the flag before judging it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = status(&app).await;
        if now["lag_events"].as_u64() > Some(0) {
            break now;
        }
        assert!(n < 20, "the projection never paused: {now}");
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = status(&app).await;
    assert_eq!(
        still["position"], stalled["position"],
        "a paused projection applies nothing"
    );
    assert!(still["lag_seconds"].as_f64() > Some(0.0), "{still}");
    assert_eq!(still["state"], "paused");

    // Resume: it catches up.
    let resumed = admin(&app, "/projections/memento/resume")
        .await
        .expect_status(StatusCode::OK)
        .body;
    assert_eq!(resumed["paused"], false);
    status_until(&app, "memento catches up after resume", caught_up).await;

    // Rebuild blue/green while writes continue; the live copy keeps serving.
    let before = app
        .get("/mementos/caretakers?limit=1000")
        .await
        .expect_status(StatusCode::OK)
        .body["total"]
        .as_u64()
        .expect("total");
    let started = admin(&app, "/projections/memento/rebuild")
        .await
        .expect_status(StatusCode::ACCEPTED);
    assert_eq!(started.body["state"], "rebuilding");
    assert_eq!(started.body["generation"], 1);
    assert_eq!(
        started.header("location"),
        Some("/api/v1/projections/memento")
    );
    let mut last = 0;
    for i in 0..5 {
        last = app.create_caretaker(&format!("admin-r{i}")).await;
        app.get("/mementos/caretakers/admin-a")
            .await
            .expect_status(StatusCode::OK);
    }
    let done = status_until(&app, "the rebuild is swapped in", |s| {
        s["rebuild"]["state"] == "done" && s["generation"] == 1
    })
    .await;
    assert_eq!(done["rebuild"]["generation"], 1);
    assert!(done["rebuild"]["events"].as_u64() >= Some(before), "{done}");
    assert!(done["rebuild"]["error"].is_null());
    let after = app
        .get_at("/mementos/caretakers?limit=1000", last)
        .await
        .expect_status(StatusCode::OK)
        .body;
    assert_eq!(after["total"].as_u64(), Some(before + 5), "{after}");
    status_until(&app, "caught up on generation 1", |s| {
        caught_up(s) && s["state"] == "running"
    })
    .await;

    // Parked events: a caretaker whose events the projection cannot parse parks, in order;
    // the other aggregates keep flowing.
    let empty = app
        .get("/projections/memento/parked")
        .await
        .expect_status(StatusCode::OK)
        .body;
    assert_eq!(
        (empty["total"].clone(), empty["next"].clone()),
        (0.into(), Value::Null)
    );
    let poison = append_poison(&app, "admin-poison").await;
    let after_poison = app.create_caretaker("admin-after-poison").await;
    app.get_at("/mementos/caretakers/admin-after-poison", after_poison)
        .await
        .expect_status(StatusCode::OK);
    let parked_status = status_until(&app, "two events parked", |s| s["parked"] == 2).await;
    assert!(
        caught_up(&parked_status),
        "parking does not stop the checkpoint"
    );
    let page = app
        .get("/projections/memento/parked?limit=1")
        .await
        .expect_status(StatusCode::OK)
        .body;
    assert_eq!(page["total"], 2);
    assert_eq!(page["next"], 1);
    assert_eq!(page["items"][0]["id"], poison[0]);
    assert_eq!(page["items"][0]["sequence"], 1);
    assert_eq!(page["items"][0]["aggregate_key"], "caretaker/admin-poison");
    assert!(
        page["items"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot apply caretaker_created")),
        "{page}"
    );
    assert_eq!(page["items"][0]["event"]["event_type"], "caretaker_created");
    let second = app
        .get("/projections/memento/parked?limit=1&offset=1")
        .await
        .expect_status(StatusCode::OK)
        .body;
    assert_eq!(second["items"][0]["id"], poison[1]);
    assert!(second["items"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("held back")));

    // Retrying does not help while the projection still cannot parse them: both stay.
    let retried = admin(
        &app,
        &format!("/projections/memento/parked/{}/retry", poison[1]),
    )
    .await
    .expect_status(StatusCode::OK)
    .body;
    assert_eq!(retried["aggregate_key"], "caretaker/admin-poison");
    assert_eq!(
        (retried["applied"].clone(), retried["still_parked"].clone()),
        (0.into(), 2.into())
    );
    Reply::of(
        app.anonymous(
            Method::POST,
            Side::Read,
            &format!("/projections/memento/parked/{}/retry", poison[0]),
        )
        .bearer_auth(app.token(Role::Reader)),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    admin(
        &app,
        &format!("/projections/memento/parked/{}/retry", Uuid::new_v4()),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
}

both_backends!(projection_admin);

/// While a projection is paused, a read that asks for a newer position cannot be honoured:
/// 503 with Retry-After, never stale data; after resume the same read succeeds.
async fn paused_projection_makes_min_position_reads_503(app: TestApp) {
    admin(&app, "/projections/memento/pause")
        .await
        .expect_status(StatusCode::OK);
    let mut attempts = 0;
    let (position, unavailable) = loop {
        attempts += 1;
        let position = app.create_caretaker(&format!("paused-{attempts}")).await;
        let reply = app.get_at("/mementos/caretakers", position).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            break (position, reply);
        }
        // The runner re-reads the pause flag every 250 ms; until then it still applies.
        assert!(attempts < 40, "the projection never paused: {}", reply.text);
    };
    let unavailable = unavailable.expect_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        unavailable.header("retry-after").is_some(),
        "{:?}",
        unavailable.headers
    );
    admin(&app, "/projections/memento/resume")
        .await
        .expect_status(StatusCode::OK);
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = app.get_at("/mementos/caretakers", position).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {}", reply.text);
    }
}
both_backends!(
    paused_projection_makes_min_position_reads_503,
    with = |s: &mut kernel::config::Settings| {
        s.read.min_position_wait = Duration::from_millis(300);
    }
);

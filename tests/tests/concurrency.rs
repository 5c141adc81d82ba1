//! Guarantee 1: concurrent commands on one aggregate produce contiguous sequences; losers
//! get 409 (or a transparent retry), never a 5xx.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::json;

use quintet_tests::{both_backends, Reply, TestApp};

const WRITERS: usize = 16;

/// Runs `requests` at once and returns the replies, checking none is a 5xx.
async fn all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<Reply> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| tokio::spawn(Reply::of(request)))
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        let reply = task.await.expect("task");
        assert!(
            reply.status.is_success() || reply.status == StatusCode::CONFLICT,
            "only 2xx or 409 under contention, got {}: {}",
            reply.status,
            reply.text
        );
        if reply.status == StatusCode::CONFLICT {
            quintet_tests::assert_problem_shape(&reply);
        }
        replies.push(reply);
    }
    replies
}

/// The sequences of an aggregate's events, straight from the store.
async fn sequences(app: &TestApp, aggregate_type: &str, aggregate_id: &str) -> Vec<u64> {
    app.events_after(0)
        .await
        .into_iter()
        .filter(|e| e.aggregate_type == aggregate_type && e.aggregate_id == aggregate_id)
        .map(|e| e.sequence)
        .collect()
}

async fn concurrent_changes_are_contiguous(app: TestApp) {
    app.create_document("d1", "start").await;
    let requests = (0..WRITERS)
        .map(|i| {
            app.write(Method::PUT, "/originators/d1/state")
                .json(&json!({ "state": { "content": format!("writer {i}") } }))
        })
        .collect();
    let replies = all_at_once(requests).await;
    let won: Vec<&Reply> = replies.iter().filter(|r| r.status.is_success()).collect();
    assert!(!won.is_empty(), "at least one writer wins");
    let n = 1 + won.len() as u64;

    // Each winner got its own version, together exactly 2..=N.
    let versions: BTreeSet<u64> = won
        .iter()
        .map(|r| r.body["version"].as_u64().expect("version"))
        .collect();
    assert_eq!(versions, (2..=n).collect::<BTreeSet<_>>());
    let positions: BTreeSet<u64> = won.iter().map(|r| r.position()).collect();
    assert_eq!(positions.len(), won.len(), "positions are unique");

    // The store has sequences 1..=N, no gap, no duplicate.
    assert_eq!(
        sequences(&app, "originator", "d1").await,
        (1..=n).collect::<Vec<_>>()
    );

    // The read model agrees.
    let last = *positions.last().expect("a position");
    let history = app
        .get_at("/originators/d1/history?limit=100", last)
        .await
        .expect_status(StatusCode::OK);
    let seen: Vec<u64> = history.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["version"].as_u64())
        .collect();
    assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "{}", history.text);
    let doc = app
        .get_at("/originators/d1", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["version"], n);
}
both_backends!(concurrent_changes_are_contiguous);

async fn stale_expected_version_is_409(app: TestApp) {
    app.create_document("d1", "v1").await;
    app.put(
        "/originators/d1/state",
        json!({ "state": { "content": "v2" }, "expected_version": 1 }),
    )
    .await
    .expect_status(StatusCode::OK);
    let head = app.head_position().await;
    let reply = app
        .put(
            "/originators/d1/state",
            json!({ "state": { "content": "v3" }, "expected_version": 1 }),
        )
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(reply.text.contains("version"), "{}", reply.text);
    app.put(
        "/originators/d1/state",
        json!({ "state": { "content": "v3" }, "expected_version": 9 }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    assert_eq!(app.head_position().await, head);
}
both_backends!(stale_expected_version_is_409);

/// With the same expected_version, exactly one of the racers wins: a version check is never
/// retried into success.
async fn concurrent_expected_version_has_one_winner(app: TestApp) {
    app.create_document("d1", "v1").await;
    let requests = (0..WRITERS / 2)
        .map(|i| {
            app.write(Method::PUT, "/originators/d1/state")
                .json(&json!({ "state": { "content": format!("w{i}") }, "expected_version": 1 }))
        })
        .collect();
    let replies = all_at_once(requests).await;
    let won = replies.iter().filter(|r| r.status.is_success()).count();
    assert_eq!(won, 1, "exactly one winner");
    assert_eq!(sequences(&app, "originator", "d1").await, vec![1, 2]);
}
both_backends!(concurrent_expected_version_has_one_winner);

/// Captures touch a caretaker from many requests at once: memento versions stay contiguous
/// and the counters match.
async fn concurrent_captures_into_one_caretaker(app: TestApp) {
    app.create_caretaker("c1").await;
    app.create_document("d1", "hello").await;
    let requests = (0..WRITERS / 2)
        .map(|i| {
            app.write(Method::POST, "/originators/d1/mementos")
                .json(&json!({ "caretaker": "c1", "memento_id": format!("m{i}") }))
        })
        .collect();
    let replies = all_at_once(requests).await;
    let won: Vec<&Reply> = replies.iter().filter(|r| r.status.is_success()).collect();
    assert!(!won.is_empty());
    let last = won.iter().map(|r| r.position()).max().expect("a position");
    let n = won.len() as u64;
    assert_eq!(
        sequences(&app, "caretaker", "c1").await,
        (1..=n + 1).collect::<Vec<_>>()
    );
    let list = app
        .get_at("/mementos/caretakers/c1/mementos?originator_id=d1", last)
        .await
        .expect_status(StatusCode::OK);
    let versions: BTreeSet<u64> = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["version"].as_u64())
        .collect();
    assert_eq!(versions, (1..=n).collect::<BTreeSet<_>>(), "{}", list.text);
    let stats = app
        .get_at("/mementos/caretakers/c1/stats", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["memento_count"], json!(n));
    assert_eq!(stats.body["by_type"]["document"], json!(n));
}
both_backends!(concurrent_captures_into_one_caretaker);

/// Different aggregates never block each other: all succeed with distinct positions.
async fn concurrent_creates_all_succeed(app: TestApp) {
    let requests = (0..WRITERS)
        .map(|i| {
            app.write(Method::POST, "/mementos/caretakers")
                .json(&json!({ "name": format!("c{i}") }))
        })
        .collect();
    let replies = all_at_once(requests).await;
    let positions: BTreeSet<u64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            r.position()
        })
        .collect();
    assert_eq!(positions.len(), WRITERS);
    let last = *positions.last().expect("a position");
    let page = app
        .get_at("/mementos/caretakers?limit=100", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(page.body["total"], json!(WRITERS), "{}", page.text);
    let names: Vec<&str> = page.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.windows(2).all(|w| w[0] <= w[1]),
        "sorted by name: {names:?}"
    );
}
both_backends!(concurrent_creates_all_succeed);

/// Read-your-writes right after a contended burst, with the default `min_position_wait`
/// (2s). On MariaDB, every rolled-back insert leaves an auto-increment gap, and the feed
/// clears the gaps one at a time (each needs its own gap_min_wait + INNODB_TRX check), so the
/// projection needs ~3-4s to pass 16 contended writes and the read answers 503.
async fn contended_burst_is_readable_within_the_default_wait(app: TestApp) {
    app.create_document("d1", "start").await;
    let requests = (0..WRITERS)
        .map(|i| {
            app.write(Method::PUT, "/originators/d1/state")
                .json(&json!({ "state": { "content": format!("writer {i}") } }))
        })
        .collect();
    let replies = all_at_once(requests).await;
    let last = replies
        .iter()
        .filter(|r| r.status.is_success())
        .map(Reply::position)
        .max()
        .expect("a winner");
    app.get_at("/originators/d1", last)
        .await
        .expect_status(StatusCode::OK);
}
mod contended_burst_is_readable_within_the_default_wait {
    fn default_wait(s: &mut kernel::config::Settings) {
        s.read.min_position_wait = std::time::Duration::from_secs(2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let app =
            quintet_tests::spawn_app_with(quintet_tests::Backend::Embedded, default_wait).await;
        quintet_tests::run_scenario(super::contended_burst_is_readable_within_the_default_wait(
            app,
        ))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb() {
        let app =
            quintet_tests::spawn_app_with(quintet_tests::Backend::MariaDb, default_wait).await;
        quintet_tests::run_scenario(super::contended_burst_is_readable_within_the_default_wait(
            app,
        ))
        .await;
    }
}

//! The README walk-through, end to end: caretaker, originator, capture, change, restore
//! (undo), then every read route, with read-your-writes through `min_position`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use quintet_tests::{both_backends, canonical_sha256, TestApp};

async fn readme_walkthrough(app: TestApp) {
    // Create a caretaker.
    let created = app
        .post("/mementos/caretakers", json!({ "name": "docs" }))
        .await
        .expect_status(StatusCode::CREATED);
    let p_caretaker = created.position();
    assert_eq!(created.body["aggregate_type"], "caretaker");
    assert_eq!(created.body["aggregate_id"], "docs");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["events"], json!(["caretaker_created"]));

    // Create an originator.
    let hello = json!({ "content": "Hello, World!" });
    let universe = json!({ "content": "Hello, Universe!" });
    let originator = app
        .post(
            "/originators",
            json!({ "id": "doc1", "type": "document", "name": "My Document", "state": hello }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    let p_originator = originator.position();
    assert!(p_originator > p_caretaker);
    assert_eq!(originator.body["version"], 1);
    assert_eq!(originator.body["events"], json!(["originator_created"]));

    // Capture a memento of its state into the caretaker.
    let captured = app
        .post(
            "/originators/doc1/mementos",
            json!({ "caretaker": "docs", "memento_id": "m1", "description": "first draft" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    let p_capture = captured.position();
    assert!(p_capture > p_originator);
    assert_eq!(captured.body["aggregate_type"], "caretaker");
    assert_eq!(captured.body["events"], json!(["memento_created"]));

    // Change the state.
    let changed = app
        .put("/originators/doc1/state", json!({ "state": universe }))
        .await
        .expect_status(StatusCode::OK);
    assert!(changed.position() > p_capture);
    assert_eq!(changed.body["version"], 2);

    // Undo: restore the memento.
    let restored = app
        .post_empty("/mementos/caretakers/docs/mementos/m1/restore")
        .await
        .expect_status(StatusCode::OK);
    let p_restore = restored.position();
    assert_eq!(restored.body["aggregate_type"], "originator");
    assert_eq!(restored.body["aggregate_id"], "doc1");
    assert_eq!(restored.body["version"], 3);
    let events: Vec<&str> = restored.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(events.contains(&"memento_restored"), "{events:?}");
    assert!(events.contains(&"originator_restored"), "{events:?}");

    // Read back right away: the read waits for the projection by itself.
    let doc = app
        .get_at("/originators/doc1", p_restore)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["state"], hello, "{}", doc.text);
    assert_eq!(doc.body["version"], 3);
    assert_eq!(doc.body["type"], "document");
    assert_eq!(doc.body["restored_from"]["memento_id"], "m1");

    let history = app
        .get_at("/originators/doc1/history", p_restore)
        .await
        .expect_status(StatusCode::OK);
    let versions: Vec<u64> = history.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["version"].as_u64())
        .collect();
    assert_eq!(versions, vec![1, 2, 3], "{}", history.text);
    assert_eq!(history.body["total"], 3);
    assert_eq!(history.body["items"][1]["state"], universe);

    let v2 = app
        .get_at("/originators/doc1/state?version=2", p_restore)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(v2.body["version"], 2);
    assert_eq!(v2.body["current_version"], 3);
    assert_eq!(v2.body["state"], universe);
    let now = app
        .get_at("/originators/doc1/state", p_restore)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(now.body["state"], hello);
    app.get("/originators/doc1/state?version=9")
        .await
        .expect_problem(StatusCode::NOT_FOUND);

    // A second memento, saved directly, of another type.
    let config_state = json!({ "database": { "host": "localhost", "port": 3306 } });
    let saved = app
        .post(
            "/mementos/caretakers/docs/mementos",
            json!({
                "id": "m2", "originator_id": "config1", "type": "configuration",
                "state": config_state, "description": "config",
                "metadata": { "author": "John Doe" },
            }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    let p_saved = saved.position();

    let stats = app
        .get_at("/mementos/caretakers/docs/stats", p_saved)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["name"], "docs");
    assert_eq!(stats.body["memento_count"], 2, "{}", stats.text);
    assert_eq!(stats.body["by_type"]["document"], 1, "{}", stats.text);
    assert_eq!(stats.body["by_type"]["configuration"], 1, "{}", stats.text);
    assert_eq!(stats.body["restore_count"], 1, "{}", stats.text);

    let caretakers = app
        .get_at("/mementos/caretakers", p_saved)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(caretakers.body["total"], 1);
    assert_eq!(caretakers.body["items"][0]["name"], "docs");
    app.get_at("/mementos/caretakers/docs", p_saved)
        .await
        .expect_status(StatusCode::OK);

    let all = app
        .get_at("/mementos/caretakers/docs/mementos", p_saved)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(all.ids(), vec!["m1", "m2"]);
    let by_originator = app
        .get_at(
            "/mementos/caretakers/docs/mementos?originator_id=doc1",
            p_saved,
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(by_originator.ids(), vec!["m1"]);
    let by_type = app
        .get_at(
            "/mementos/caretakers/docs/mementos?type=configuration",
            p_saved,
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(by_type.ids(), vec!["m2"]);
    let none = app
        .get_at(
            "/mementos/caretakers/docs/mementos?originator_id=doc1&type=file",
            p_saved,
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(none.body["total"], 0);

    let m1 = app
        .get_at("/mementos/caretakers/docs/mementos/m1", p_saved)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(m1.body["id"], "m1");
    assert_eq!(m1.body["originator_id"], "doc1");
    assert_eq!(m1.body["type"], "document");
    assert_eq!(m1.body["state"], hello);
    assert_eq!(m1.body["description"], "first draft");
    assert_eq!(m1.body["checksum"], canonical_sha256(&hello), "{}", m1.text);
    assert_eq!(m1.body["restore_count"], 1);
    let m2 = app
        .get_at("/mementos/caretakers/docs/mementos/m2", p_saved)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(m2.body["checksum"], canonical_sha256(&config_state));
    assert_eq!(m2.body["metadata"]["author"], "John Doe");

    // Delete a memento.
    let deleted = app
        .delete("/mementos/caretakers/docs/mementos/m2")
        .await
        .expect_status(StatusCode::OK);
    let p_deleted = deleted.position();
    assert_eq!(deleted.body["events"], json!(["memento_deleted"]));
    app.get_at("/mementos/caretakers/docs/mementos/m2", p_deleted)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let stats = app
        .get_at("/mementos/caretakers/docs/stats", p_deleted)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["memento_count"], 1);
    assert_eq!(stats.body["by_type"]["configuration"], 0);

    // Cleanup (nothing is expired or over the limit: it only records the run).
    let cleaned = app
        .post_empty("/mementos/caretakers/docs/cleanup")
        .await
        .expect_status(StatusCode::OK);
    let p_cleaned = cleaned.position();
    assert_eq!(cleaned.body["events"], json!(["cleanup_completed"]));
    let stats = app
        .get_at("/mementos/caretakers/docs/stats", p_cleaned)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["cleanup_count"], 1);
    assert_eq!(stats.body["memento_count"], 1);
    assert!(stats.body["last_cleanup_at"].is_string());

    // Remove the caretaker: it and its mementos are gone.
    let removed = app
        .delete("/mementos/caretakers/docs")
        .await
        .expect_status(StatusCode::OK);
    let p_removed = removed.position();
    assert_eq!(removed.body["events"], json!(["caretaker_removed"]));
    app.get_at("/mementos/caretakers/docs", p_removed)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get_at("/mementos/caretakers/docs/mementos/m1", p_removed)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/mementos/caretakers/docs")
        .await
        .expect_problem(StatusCode::NOT_FOUND);

    // The originator is not the caretaker's: it stays, restored.
    let doc = app
        .get_at("/originators/doc1", p_removed)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["state"], hello);
    assert_eq!(app.head_position().await, p_removed);
}
both_backends!(readme_walkthrough);

/// A `min_position` beyond anything committed is a client error (422 naming the parameter),
/// not something to wait for.
async fn min_position_beyond_the_head_is_422(app: TestApp) {
    let p = app.create_caretaker("c1").await;
    app.get_at("/mementos/caretakers/c1", p)
        .await
        .expect_status(StatusCode::OK);
    let reply = app
        .get_at("/mementos/caretakers/c1", p + 1_000_000)
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["min_position"], "{}", reply.text);
}
both_backends!(min_position_beyond_the_head_is_422);

/// Writes return the committed position; it equals the store's head after the write, and
/// each write moves it forward.
async fn positions_are_committed_and_increasing(app: TestApp) {
    let mut last = app.head_position().await;
    for name in ["a", "b", "c"] {
        let p = app.create_caretaker(name).await;
        assert!(p > last, "{p} after {last}");
        assert_eq!(app.head_position().await, p);
        last = p;
    }
}
both_backends!(positions_are_committed_and_increasing);

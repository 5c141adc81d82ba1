//! The periodic cleanup removes expired mementos from every live caretaker, and writes
//! nothing where there is nothing to remove.

use chrono::{Duration, Utc};
use kernel::config::Settings;
use kernel::domain::memento::{Caretaker, CaretakerCommand, OriginatorKind};
use kernel::envelope::CommandContext;
use write_api::{jobs, WriteState};

#[tokio::test]
async fn cleanup_all_removes_only_expired_mementos() {
    let dir = std::env::temp_dir().join(format!("quintet-cleanup-{}", uuid::Uuid::new_v4()));
    let settings = Settings::embedded_at(&dir).expect("settings");
    let backends = kernel::wiring::connect_write_side(&settings)
        .await
        .expect("backends");
    let state = WriteState::new(backends.engine.clone(), &settings);
    let ctx = CommandContext::default();
    let long_ago = Utc::now() - Duration::days(3);
    for name in ["old", "fresh"] {
        state
            .engine
            .execute::<Caretaker, _>(
                name,
                || CaretakerCommand::CreateCaretaker {
                    name: name.into(),
                    max_mementos: None,
                    max_memento_size: None,
                    max_memento_age_secs: Some(3600),
                    at: long_ago,
                },
                &state.memento,
                &ctx,
            )
            .await
            .expect("create");
        let at = if name == "old" { long_ago } else { Utc::now() };
        state
            .engine
            .execute::<Caretaker, _>(
                name,
                || CaretakerCommand::SaveMemento {
                    memento_id: "m1".into(),
                    originator_id: "doc1".into(),
                    kind: OriginatorKind::Document,
                    state: serde_json::json!({"content": "x"}),
                    description: None,
                    metadata: Default::default(),
                    at,
                },
                &state.memento,
                &ctx,
            )
            .await
            .expect("save");
    }
    let head = state.engine.store().head_position().await.expect("head");

    assert_eq!(jobs::cleanup_all(&state).await.expect("cleanup"), 1);
    let old = state.engine.load::<Caretaker>("old").await.expect("load");
    let fresh = state.engine.load::<Caretaker>("fresh").await.expect("load");
    assert_eq!(old.state.memento_count(), 0);
    assert_eq!(fresh.state.memento_count(), 1);
    let after = state.engine.store().head_position().await.expect("head");
    assert_eq!(
        after,
        head + 1,
        "one cleanup_completed event, for the old caretaker only"
    );

    assert_eq!(jobs::cleanup_all(&state).await.expect("cleanup"), 0);
    assert_eq!(
        state.engine.store().head_position().await.expect("head"),
        after
    );
    let _ = std::fs::remove_dir_all(dir);
}

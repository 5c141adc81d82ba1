//! The committed specs in `openapi/` match what the code serves. Regenerate them with
//! `cargo run -p quintet -- openapi` when this fails.

use std::path::PathBuf;

use serde_json::Value;

/// Both specs, built the way `quintet openapi` builds them.
async fn current_specs() -> Vec<(&'static str, String)> {
    let scratch =
        std::env::temp_dir().join(format!("quintet-e2e-openapi-{}", uuid::Uuid::new_v4()));
    let settings = kernel::config::Settings::embedded_at(&scratch).expect("embedded settings");
    let (_stop, shutdown) = web::server::shutdown_channel();
    let (backends, read_state) = read_api::connect_and_start(&settings, shutdown)
        .await
        .expect("backends");
    let write_state = write_api::WriteState::new(backends.engine.clone(), &settings);
    let specs = vec![
        (
            "write-api.json",
            web::server::spec_json(&write_api::openapi(write_state)),
        ),
        (
            "read-api.json",
            web::server::spec_json(&read_api::openapi(read_state)),
        ),
    ];
    let _ = std::fs::remove_dir_all(&scratch);
    specs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_openapi_specs_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi");
    let mut drifted = Vec::new();
    for (file, spec) in current_specs().await {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "{}: {err}; run `cargo run -p quintet -- openapi`",
                path.display()
            )
        });
        let committed: Value = serde_json::from_str(&committed)
            .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
        let current: Value = serde_json::from_str(&spec).expect("the generated spec is JSON");
        if committed != current {
            drifted.push(file);
        }
    }
    assert!(
        drifted.is_empty(),
        "openapi/ drifted: run `cargo run -p quintet -- openapi` ({drifted:?} differ)"
    );
}

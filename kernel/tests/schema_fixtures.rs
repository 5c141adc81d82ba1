//! Schema evolution, checked in CI: `tests/fixtures/events/<aggregate_type>/<event_type>.v<N>.json`
//! (at the workspace root) holds one stored payload of every (aggregate type, event type,
//! event version), exactly as it was written when that version was current. Every fixture
//! must still upcast, deserialize, apply and project today, so a change that breaks old
//! events fails the build; and every event the enums can produce today must have a fixture,
//! so a new event or version cannot ship without one.
//!
//! To add the fixture of a new event or version, run once with `QUINTET_WRITE_FIXTURES=1`
//! (`cargo test -p quintet-kernel --test schema_fixtures every_event_type_and_version_has_a_fixture`):
//! missing files are written from the samples below. Existing files are never rewritten —
//! they are the record of what older code stored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use kernel::domain::memento::{
    checksum, Caretaker, CaretakerEvent, MementoProjection, Originator, OriginatorEvent,
    OriginatorKind, RemovedMemento, CARETAKER, ORIGINATOR,
};
use kernel::domain::projection::{
    forgotten_aggregate, Projection, AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE,
};
use kernel::domain::{command, event_sourcing, mediator, repository, upcast, Context};
use kernel::envelope::RecordedEvent;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use uuid::Uuid;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/events")
}

fn fixture_path(aggregate_type: &str, event_type: &str, version: &str) -> PathBuf {
    fixtures_dir()
        .join(aggregate_type)
        .join(format!("{event_type}.v{version}.json"))
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
        + chrono::Duration::seconds(secs)
}

/// Which variant an event is. Exhaustive on purpose: a new variant does not compile until it
/// is listed here, and `every_variant_has_a_sample` then asks for a sample of it.
fn caretaker_variant(event: &CaretakerEvent) -> &'static str {
    match event {
        CaretakerEvent::CaretakerCreated { .. } => "CaretakerCreated",
        CaretakerEvent::MementoCreated { .. } => "MementoCreated",
        CaretakerEvent::MementoDeleted { .. } => "MementoDeleted",
        CaretakerEvent::MementoRestored { .. } => "MementoRestored",
        CaretakerEvent::CleanupCompleted { .. } => "CleanupCompleted",
        CaretakerEvent::CaretakerRemoved { .. } => "CaretakerRemoved",
    }
}
const CARETAKER_VARIANTS: usize = 6;

fn originator_variant(event: &OriginatorEvent) -> &'static str {
    match event {
        OriginatorEvent::OriginatorCreated { .. } => "OriginatorCreated",
        OriginatorEvent::OriginatorStateChanged { .. } => "OriginatorStateChanged",
        OriginatorEvent::OriginatorRestored { .. } => "OriginatorRestored",
    }
}
const ORIGINATOR_VARIANTS: usize = 3;

/// One realistic event of each caretaker variant, in an order that makes sense to apply.
fn caretaker_samples() -> Vec<CaretakerEvent> {
    let state = json!({ "content": "Hello, World!" });
    let (size, sum) = checksum(&state);
    let mut metadata = Map::new();
    metadata.insert("author".into(), json!("ada"));
    metadata.insert("tags".into(), json!(["draft", "v1"]));
    vec![
        CaretakerEvent::CaretakerCreated {
            name: "editor".into(),
            max_mementos: 100,
            max_memento_size: 1_048_576,
            max_memento_age_secs: 86_400,
            at: at(0),
        },
        CaretakerEvent::MementoCreated {
            memento_id: "m1".into(),
            originator_id: "doc-1".into(),
            kind: OriginatorKind::Document,
            state,
            description: Some("first draft".into()),
            metadata,
            size,
            checksum: sum,
            version: 1,
            at: at(1),
        },
        CaretakerEvent::MementoRestored {
            memento_id: "m1".into(),
            originator_id: "doc-1".into(),
            version: 1,
            at: at(2),
        },
        CaretakerEvent::MementoDeleted {
            memento_id: "m1".into(),
            originator_id: "doc-1".into(),
            kind: OriginatorKind::Document,
            size,
            at: at(3),
        },
        CaretakerEvent::CleanupCompleted {
            removed: vec![RemovedMemento {
                memento_id: "m0".into(),
                originator_id: "cfg-1".into(),
                kind: OriginatorKind::Configuration,
                size: 2,
            }],
            at: at(4),
        },
        CaretakerEvent::CaretakerRemoved {
            name: "editor".into(),
            memento_count: 0,
            at: at(5),
        },
    ]
}

fn originator_samples() -> Vec<OriginatorEvent> {
    vec![
        OriginatorEvent::OriginatorCreated {
            id: "doc-1".into(),
            kind: OriginatorKind::Document,
            name: "Quarterly report".into(),
            state: json!({ "content": "" }),
            version: 1,
            at: at(0),
        },
        OriginatorEvent::OriginatorStateChanged {
            state: json!({ "content": "Hello, World!" }),
            version: 2,
            at: at(1),
        },
        OriginatorEvent::OriginatorRestored {
            caretaker: "editor".into(),
            memento_id: "m1".into(),
            restored_version: 1,
            state: json!({ "content": "Hello, World!" }),
            version: 3,
            at: at(2),
        },
    ]
}

/// A sample event as the engine would store it: aggregate type, event type, version, the
/// payload JSON (what `UnitOfWork::push` serializes before the codec).
struct Sample {
    aggregate_type: &'static str,
    event_type: String,
    version: String,
    payload: Value,
}

fn samples() -> Vec<Sample> {
    fn sample<A: Aggregate>(event: &A::Event) -> Sample {
        Sample {
            aggregate_type: A::TYPE,
            event_type: event.event_type(),
            version: event.event_version(),
            payload: serde_json::to_value(event).expect("serialize a sample"),
        }
    }
    let mut all: Vec<Sample> = caretaker_samples()
        .iter()
        .map(sample::<Caretaker>)
        .collect();
    all.extend(originator_samples().iter().map(sample::<Originator>));
    all.extend(
        repository::fixtures::samples()
            .into_iter()
            .map(|sample| Sample {
                aggregate_type: sample.aggregate_type,
                event_type: sample.event_type,
                version: sample.version,
                payload: sample.payload,
            }),
    );
    all.extend(
        event_sourcing::fixtures::samples()
            .into_iter()
            .map(|sample| Sample {
                aggregate_type: sample.aggregate_type,
                event_type: sample.event_type,
                version: sample.version,
                payload: sample.payload,
            }),
    );
    all.extend(
        mediator::fixtures::samples()
            .into_iter()
            .map(|sample| Sample {
                aggregate_type: sample.aggregate_type,
                event_type: sample.event_type,
                version: sample.version,
                payload: sample.payload,
            }),
    );
    all.extend(
        command::fixtures::samples()
            .into_iter()
            .map(|sample| Sample {
                aggregate_type: sample.aggregate_type,
                event_type: sample.event_type,
                version: sample.version,
                payload: sample.payload,
            }),
    );
    all.push(Sample {
        aggregate_type: SYSTEM_AGGREGATE,
        event_type: AGGREGATE_FORGOTTEN.to_string(),
        version: "1".to_string(),
        payload: json!({ "aggregate_type": ORIGINATOR, "aggregate_id": "doc-1" }),
    });
    all
}

#[test]
fn every_variant_has_a_sample() {
    let caretaker: BTreeSet<_> = caretaker_samples().iter().map(caretaker_variant).collect();
    assert_eq!(
        caretaker.len(),
        CARETAKER_VARIANTS,
        "a caretaker event has no sample"
    );
    let originator: BTreeSet<_> = originator_samples()
        .iter()
        .map(originator_variant)
        .collect();
    assert_eq!(
        originator.len(),
        ORIGINATOR_VARIANTS,
        "an originator event has no sample"
    );
}

#[test]
fn every_event_type_and_version_has_a_fixture() {
    let write = std::env::var("QUINTET_WRITE_FIXTURES").is_ok_and(|v| v == "1");
    let mut missing = Vec::new();
    for sample in samples() {
        let path = fixture_path(sample.aggregate_type, &sample.event_type, &sample.version);
        if path.exists() {
            continue;
        }
        if write {
            let dir = path.parent().expect("a fixture has a directory");
            std::fs::create_dir_all(dir).expect("create the fixture directory");
            let text = serde_json::to_string_pretty(&sample.payload).expect("fixture json");
            std::fs::write(&path, text + "\n").expect("write the fixture");
            eprintln!("wrote {}", path.display());
        } else {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "events without a stored-payload fixture (run once with QUINTET_WRITE_FIXTURES=1 and \
         commit the files): {missing:#?}"
    );
}

/// One fixture file, parsed from its path.
struct Fixture {
    path: PathBuf,
    aggregate_type: String,
    event_type: String,
    version: i32,
    payload: Value,
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let dirs = std::fs::read_dir(fixtures_dir()).expect("tests/fixtures/events exists");
    for dir in dirs {
        let dir = dir.expect("dir entry").path();
        assert!(dir.is_dir(), "unexpected file {}", dir.display());
        let aggregate_type = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        for file in std::fs::read_dir(&dir).expect("read fixture dir") {
            let path = file.expect("dir entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
                .to_string();
            let stem = name
                .strip_suffix(".json")
                .unwrap_or_else(|| panic!("{name}: fixtures are .json files"));
            let (event_type, version) = stem
                .rsplit_once(".v")
                .unwrap_or_else(|| panic!("{name}: expected <event_type>.v<version>.json"));
            let version: i32 = version
                .parse()
                .unwrap_or_else(|_| panic!("{name}: version must be a number"));
            let text = std::fs::read_to_string(&path).expect("read fixture");
            let payload: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            out.push(Fixture {
                path,
                aggregate_type: aggregate_type.clone(),
                event_type: event_type.to_string(),
                version,
                payload,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn recorded(fixture: &Fixture, data: Value, position: u64) -> RecordedEvent {
    RecordedEvent {
        position,
        context: Context::of_aggregate(&fixture.aggregate_type).as_str(),
        aggregate_type: fixture.aggregate_type.clone(),
        aggregate_id: if fixture.aggregate_type == SYSTEM_AGGREGATE {
            "originator/doc-1".to_string()
        } else {
            "fixture-aggregate".to_string()
        },
        sequence: position,
        event_type: fixture.event_type.clone(),
        event_version: fixture.version,
        event_id: Uuid::nil(),
        correlation_id: Uuid::nil(),
        causation_id: None,
        actor: None,
        recorded_at: at(0),
        data: Some(data),
    }
}

/// Upcasts, deserializes and applies one fixture, both to a fresh aggregate and to one that
/// was created first; returns the event.
fn replay_fixture<A>(fixture: &Fixture, created: &A) -> A::Event
where
    A: Aggregate + Clone,
    A::Event: DeserializeOwned,
{
    let upcast = upcast(
        &fixture.aggregate_type,
        &fixture.event_type,
        fixture.version,
        fixture.payload.clone(),
    )
    .unwrap_or_else(|e| panic!("{}: upcast failed: {e}", fixture.path.display()));
    let event: A::Event = serde_json::from_value(upcast)
        .unwrap_or_else(|e| panic!("{}: no longer deserializes: {e}", fixture.path.display()));
    let mut fresh = A::default();
    fresh.apply(event.clone());
    let mut existing = created.clone();
    existing.apply(event.clone());
    event
}

#[test]
fn every_fixture_upcasts_deserializes_applies_and_projects() {
    let all = fixtures();
    assert!(!all.is_empty(), "no fixtures found");
    let created = |aggregate_type: &str| -> Value {
        all.iter()
            .find(|f| {
                f.aggregate_type == aggregate_type
                    && f.event_type == format!("{aggregate_type}_created")
            })
            .map(|f| {
                upcast(
                    &f.aggregate_type,
                    &f.event_type,
                    f.version,
                    f.payload.clone(),
                )
            })
            .expect("a created fixture")
            .expect("upcast")
    };
    let mut caretaker = Caretaker::default();
    caretaker.apply(serde_json::from_value(created(CARETAKER)).expect("caretaker_created"));
    let mut originator = Originator::default();
    originator.apply(serde_json::from_value(created(ORIGINATOR)).expect("originator_created"));

    let projections: Vec<Box<dyn Projection>> = vec![
        Box::new(MementoProjection),
        Box::new(event_sourcing::EventSourcingProjection),
        Box::new(repository::RepositoryProjection),
        Box::new(mediator::MediatorProjection),
        Box::new(command::CommandProjection),
    ];
    for (position, fixture) in all.iter().enumerate() {
        let position = position as u64 + 1;
        let name = fixture.path.display();
        let data = match fixture.aggregate_type.as_str() {
            CARETAKER => {
                let event = replay_fixture::<Caretaker>(fixture, &caretaker);
                serde_json::to_value(&event).expect("serialize")
            }
            ORIGINATOR => {
                let event = replay_fixture::<Originator>(fixture, &originator);
                serde_json::to_value(&event).expect("serialize")
            }
            SYSTEM_AGGREGATE => {
                assert_eq!(fixture.event_type, AGGREGATE_FORGOTTEN, "{name}");
                let event = recorded(fixture, fixture.payload.clone(), position);
                assert!(forgotten_aggregate(&event).is_some(), "{name}: unreadable");
                fixture.payload.clone()
            }
            t if repository::owns(t)
                || event_sourcing::owns(t)
                || mediator::owns(t)
                || command::owns(t) =>
            {
                let replay = if repository::owns(t) {
                    repository::fixtures::replay_payload
                } else if mediator::owns(t) {
                    mediator::fixtures::replay_payload
                } else if command::owns(t) {
                    command::fixtures::replay_payload
                } else {
                    event_sourcing::fixtures::replay_payload
                };
                let data = upcast(
                    t,
                    &fixture.event_type,
                    fixture.version,
                    fixture.payload.clone(),
                )
                .unwrap_or_else(|e| panic!("{name}: upcast failed: {e}"));
                replay(t, data.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                data
            }
            other => panic!("{name}: unknown aggregate type {other}"),
        };
        // The read side reads the stored (upcast) payload too, through every projection.
        let event = recorded(fixture, data, position);
        for projection in &projections {
            if projection.handles(&event.aggregate_type) || event.aggregate_type == SYSTEM_AGGREGATE
            {
                projection
                    .project(&event)
                    .unwrap_or_else(|e| panic!("{name}: {} rejects it: {e}", projection.name()));
            }
        }
    }
}

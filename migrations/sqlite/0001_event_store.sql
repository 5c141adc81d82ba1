-- The event store on SQLite: the event log, idempotency keys, unique-value reservations and
-- per-aggregate data keys. Timestamps are unix microseconds; UUIDs are 16 raw bytes.

CREATE TABLE events (
    -- AUTOINCREMENT: a position is never reused, even after the newest rows are deleted.
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 1),
    event_type     TEXT    NOT NULL,
    event_version  INTEGER NOT NULL,
    event_id       BLOB    NOT NULL UNIQUE,
    correlation_id BLOB    NOT NULL,
    causation_id   BLOB,
    actor          TEXT,
    recorded_at    INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    -- The optimistic lock: two writers cannot both append the same sequence.
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_by_type ON events (event_type, position);
CREATE INDEX events_by_aggregate_type ON events (aggregate_type, position);

CREATE TABLE idempotency_keys (
    idem_key     TEXT    PRIMARY KEY NOT NULL,
    request_hash TEXT    NOT NULL,
    -- The JSON of the `Committed` the first request produced.
    response     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE reservations (
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (scope, value)
);

CREATE TABLE data_keys (
    key_id       TEXT    PRIMARY KEY NOT NULL,
    aggregate_id TEXT    NOT NULL,
    -- NULL once forgotten (crypto-shredded).
    wrapped_key  BLOB,
    created_at   INTEGER NOT NULL,
    forgotten_at INTEGER
);

CREATE INDEX data_keys_by_aggregate ON data_keys (aggregate_id);

-- The event store on MySQL / MariaDB: the event log, idempotency keys, unique-value reservations
-- and per-aggregate data keys. Timestamps are unix microseconds (BIGINT, portable and exact);
-- UUIDs are BINARY(16). Identifiers use a binary collation: 'Abc' and 'abc' are two aggregates.

CREATE TABLE events (
    position       BIGINT       NOT NULL AUTO_INCREMENT,
    aggregate_type VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    sequence       BIGINT       NOT NULL,
    event_type     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    event_version  INT          NOT NULL,
    event_id       BINARY(16)   NOT NULL,
    correlation_id BINARY(16)   NOT NULL,
    causation_id   BINARY(16)   NULL,
    actor          VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    recorded_at    BIGINT       NOT NULL,
    payload        LONGBLOB     NOT NULL,
    PRIMARY KEY (position),
    -- The optimistic lock: two writers cannot both append the same sequence.
    UNIQUE KEY events_stream (aggregate_type, aggregate_id, sequence),
    UNIQUE KEY events_event_id (event_id),
    KEY events_by_type (event_type, position),
    KEY events_by_aggregate_type (aggregate_type, position)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE idempotency_keys (
    idem_key     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    request_hash CHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The JSON of the `Committed` the first request produced.
    response     MEDIUMTEXT   CHARACTER SET utf8mb4 NOT NULL,
    created_at   BIGINT       NOT NULL,
    PRIMARY KEY (idem_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE reservations (
    scope VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    value VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    owner VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    PRIMARY KEY (scope, value)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE data_keys (
    key_id       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    -- NULL once forgotten (crypto-shredded).
    wrapped_key  BLOB         NULL,
    created_at   BIGINT       NOT NULL,
    forgotten_at BIGINT       NULL,
    PRIMARY KEY (key_id),
    KEY data_keys_by_aggregate (aggregate_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

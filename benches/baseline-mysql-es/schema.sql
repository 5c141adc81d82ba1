-- mysql-es 0.5's db/init.sql (events and snapshots tables) with `NOT NULL` written before
-- `CHECK (...)`: MariaDB rejects the original order. Otherwise the same schema.
CREATE TABLE events
(
    aggregate_type varchar(255)                 NOT NULL,
    aggregate_id   varchar(255)                 NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence >= 0),
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    CONSTRAINT events_pk PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   varchar(255)                         NOT NULL,
    aggregate_id     varchar(255)                         NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json                                 NOT NULL,
    CONSTRAINT snapshots_pk PRIMARY KEY (aggregate_type, aggregate_id)
);

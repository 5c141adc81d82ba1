-- Ordered parking and blue/green generations of projections (issue 3).
--
-- A projection's versions, checkpoint and parked events are keyed by its projection key:
-- `name` for generation 0 (every projection before its first rebuild), `name#N` after. Its
-- documents live in `collection` (generation 0) or `collection#N`.

-- Events a projection could not apply, and every later event of the same aggregate.
CREATE TABLE IF NOT EXISTS parked (
    projection    TEXT    NOT NULL,
    aggregate_key TEXT    NOT NULL,
    sequence      INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    event_id      TEXT    NOT NULL,
    error         TEXT    NOT NULL,
    parked_at     TEXT    NOT NULL,
    envelope      TEXT    NOT NULL CHECK (json_valid(envelope)),
    PRIMARY KEY (projection, aggregate_key, sequence)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS parked_by_position ON parked (projection, position);
CREATE INDEX IF NOT EXISTS parked_by_event ON parked (projection, event_id);

-- The active generation of each rebuilt projection, and the shadow being built (with the
-- lease of the job building it).
CREATE TABLE IF NOT EXISTS generations (
    projection       TEXT    NOT NULL PRIMARY KEY,
    active           INTEGER NOT NULL,
    shadow           INTEGER,
    shadow_heartbeat TEXT,
    collections      TEXT    NOT NULL CHECK (json_valid(collections))
);

-- Which projection owns a collection, so reads find the active copy.
CREATE TABLE IF NOT EXISTS generation_collections (
    collection TEXT NOT NULL PRIMARY KEY,
    projection TEXT NOT NULL
) WITHOUT ROWID;

-- Read models of the embedded (SQLite) read store: JSON documents, projection checkpoints and
-- the per-aggregate high-water marks that make projections idempotent.

CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL CHECK (json_valid(body)),
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS checkpoints (
    projection TEXT    NOT NULL PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS aggregate_versions (
    projection    TEXT    NOT NULL,
    aggregate_key TEXT    NOT NULL,
    sequence      INTEGER NOT NULL,
    PRIMARY KEY (projection, aggregate_key)
) WITHOUT ROWID;

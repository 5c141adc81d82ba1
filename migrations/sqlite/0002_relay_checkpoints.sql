-- Where each relay (event store -> Kafka) stands: the last position the broker acknowledged.
-- A restarted relay resumes after it.
CREATE TABLE relay_checkpoints (
    name     TEXT    NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL
);

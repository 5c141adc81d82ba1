-- Where each relay (event store -> Kafka) stands: the last position the broker acknowledged.
-- A restarted relay resumes after it.
CREATE TABLE relay_checkpoints (
    name     VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    position BIGINT       NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

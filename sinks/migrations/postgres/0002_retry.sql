-- Reversals are looked up by the entry they reverse.
CREATE INDEX lancamentos_estorno_de ON lancamentos (estorno_de);

-- Each retried delivery of a failed record, claimed in the epoch that processes it: a delivery
-- that reaches consolidation twice (a retry stage or consolidator restart) is processed once.
CREATE TABLE redeliveries (
    origin_topic     TEXT    NOT NULL,
    origin_partition INTEGER NOT NULL,
    origin_offset    BIGINT  NOT NULL,
    attempt          INTEGER NOT NULL,
    claimed_at       TEXT    NOT NULL,
    PRIMARY KEY (origin_topic, origin_partition, origin_offset, attempt)
);

-- The dead-letter topic cannot be truncated here: purging moves a mark past the purged records,
-- and replaying records each replayed record.
CREATE TABLE dlq_marks (
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    purged_until BIGINT  NOT NULL,
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE dlq_replays (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    BIGINT  NOT NULL,
    replayed_at TEXT    NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);

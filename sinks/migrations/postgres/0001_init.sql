-- Entries, exactly as consolidated. The primary key makes an entry id count once.
-- Dates and instants are ISO-8601 text (YYYY-MM-DD, RFC 3339 UTC): they sort correctly and read
-- the same through both stores.
CREATE TABLE lancamentos (
    id               TEXT    PRIMARY KEY,
    merchant_id      TEXT    NOT NULL,
    tipo             TEXT    NOT NULL CHECK (tipo IN ('credito', 'debito')),
    valor_cents      BIGINT  NOT NULL CHECK (valor_cents > 0),
    data             TEXT    NOT NULL CHECK (data ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'),
    descricao        TEXT    NOT NULL,
    categoria        TEXT,
    criado_em        TEXT    NOT NULL,
    estorno_de       TEXT,
    origin_topic     TEXT    NOT NULL,
    origin_partition INTEGER NOT NULL,
    origin_offset    BIGINT  NOT NULL,
    consolidado_em   TEXT    NOT NULL
);
CREATE INDEX lancamentos_merchant_data ON lancamentos (merchant_id, data, criado_em, id);

-- Daily totals per merchant: the consolidated state. Balances are derived at read time.
CREATE TABLE consolidado_diario (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL CHECK (data ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'),
    creditos_cents BIGINT  NOT NULL,
    debitos_cents  BIGINT  NOT NULL,
    quantidade     BIGINT  NOT NULL,
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data)
);

-- Where each consumer group resumes. Written in the same transaction as the data it covers.
CREATE TABLE consumer_progress (
    consumer_group TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    BIGINT  NOT NULL,
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    merchant_id   TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

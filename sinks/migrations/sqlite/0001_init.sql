-- Entries, exactly as consolidated. The primary key makes an entry id count once.
CREATE TABLE lancamentos (
    id               TEXT    PRIMARY KEY,
    merchant_id      TEXT    NOT NULL,
    tipo             TEXT    NOT NULL CHECK (tipo IN ('credito', 'debito')),
    valor_cents      INTEGER NOT NULL CHECK (valor_cents > 0),
    data             TEXT    NOT NULL,
    descricao        TEXT    NOT NULL,
    categoria        TEXT,
    criado_em        TEXT    NOT NULL,
    estorno_de       TEXT,
    origin_topic     TEXT    NOT NULL,
    origin_partition INTEGER NOT NULL,
    origin_offset    INTEGER NOT NULL,
    consolidado_em   TEXT    NOT NULL
);
CREATE INDEX lancamentos_merchant_data ON lancamentos (merchant_id, data, criado_em, id);

-- Daily totals per merchant: the consolidated state. Balances are derived at read time.
CREATE TABLE consolidado_diario (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL,
    debitos_cents  INTEGER NOT NULL,
    quantidade     INTEGER NOT NULL,
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data)
);

-- Where each consumer group resumes. Written in the same transaction as the data it covers.
CREATE TABLE consumer_progress (
    consumer_group TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    INTEGER NOT NULL,
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

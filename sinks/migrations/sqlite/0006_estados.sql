-- Each merchant's months, for GET /v1/consolidado/mensal: a year is at most 12 rows.
CREATE TABLE consolidado_mensal (
    merchant_id    TEXT    NOT NULL,
    mes            TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, mes)
);
INSERT INTO consolidado_mensal
SELECT merchant_id, substr(data, 1, 7), SUM(creditos_cents), SUM(debitos_cents), SUM(quantidade),
       strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM consolidado_diario
GROUP BY merchant_id, substr(data, 1, 7);

-- The states the store keeps, by table: the key and values they were built with
-- (`merchant_id,data`, `creditos,debitos,lancamentos`), and whether the table holds every stored
-- entry (1) or is not kept any more (0). A state declared
-- in pipeline.yaml and not kept here is built from the stored entries at the consolidator's
-- start; every epoch checks that the states kept here are the ones it computes.
CREATE TABLE estados (
    tabela        TEXT    PRIMARY KEY,
    chave         TEXT    NOT NULL,
    valores       TEXT    NOT NULL,
    pronto        INTEGER NOT NULL,
    atualizado_em TEXT    NOT NULL
);
INSERT INTO estados VALUES
    ('consolidado_diario', 'merchant_id,data', 'creditos,debitos,lancamentos', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('consolidado_categoria', 'merchant_id,data,categoria', 'creditos,debitos,lancamentos', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('consolidado_mensal', 'merchant_id,mes', 'creditos,debitos,lancamentos', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ('consolidado_comerciante', 'merchant_id', 'creditos,debitos,lancamentos', 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

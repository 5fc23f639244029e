-- Each merchant's months, for GET /v1/consolidado/mensal: a year is at most 12 rows.
CREATE TABLE consolidado_mensal (
    merchant_id    TEXT    NOT NULL,
    mes            TEXT    NOT NULL,
    creditos_cents BIGINT  NOT NULL CHECK (creditos_cents >= 0),
    debitos_cents  BIGINT  NOT NULL CHECK (debitos_cents >= 0),
    quantidade     BIGINT  NOT NULL CHECK (quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, mes)
);
INSERT INTO consolidado_mensal
SELECT merchant_id, substr(data, 1, 7), SUM(creditos_cents), SUM(debitos_cents), SUM(quantidade),
       to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
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
    pronto        BIGINT  NOT NULL,
    atualizado_em TEXT    NOT NULL
);
INSERT INTO estados
SELECT t, k, 'creditos,debitos,lancamentos', 1, to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
FROM (VALUES ('consolidado_diario', 'merchant_id,data'),
             ('consolidado_categoria', 'merchant_id,data,categoria'),
             ('consolidado_mensal', 'merchant_id,mes'),
             ('consolidado_comerciante', 'merchant_id')) AS fixed (t, k);

-- Totals per merchant, day and category ('' for entries without one): the dataflow's state, from
-- which each day's totals are the sum. Filled from the entries already consolidated.
CREATE TABLE consolidado_categoria (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    categoria      TEXT    NOT NULL,
    creditos_cents BIGINT  NOT NULL,
    debitos_cents  BIGINT  NOT NULL,
    quantidade     BIGINT  NOT NULL,
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data, categoria)
);

INSERT INTO consolidado_categoria
SELECT merchant_id, data, COALESCE(categoria, ''),
       SUM(CASE WHEN tipo = 'credito' THEN valor_cents ELSE 0 END),
       SUM(CASE WHEN tipo = 'debito' THEN valor_cents ELSE 0 END),
       COUNT(*),
       to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
FROM lancamentos
GROUP BY merchant_id, data, COALESCE(categoria, '');

-- Totals never wrap: BIGINT arithmetic fails on overflow (22003), and consolidation routes the
-- record that caused it. Totals are never negative.

-- Each merchant's credits and debits of all time. Consolidation parks an entry that would take
-- either beyond 64 bits, so no day, category, month or running balance can overflow.
CREATE TABLE consolidado_comerciante (
    merchant_id    TEXT    PRIMARY KEY,
    creditos_cents BIGINT  NOT NULL CHECK (creditos_cents >= 0),
    debitos_cents  BIGINT  NOT NULL CHECK (debitos_cents >= 0),
    quantidade     BIGINT  NOT NULL CHECK (quantidade >= 0),
    atualizado_em  TEXT    NOT NULL
);
INSERT INTO consolidado_comerciante
SELECT merchant_id, SUM(creditos_cents), SUM(debitos_cents), SUM(quantidade),
       to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
FROM consolidado_diario
GROUP BY merchant_id;

ALTER TABLE consolidado_diario
    ADD CONSTRAINT consolidado_diario_not_negative
    CHECK (creditos_cents >= 0 AND debitos_cents >= 0 AND quantidade >= 0);
ALTER TABLE consolidado_categoria
    ADD CONSTRAINT consolidado_categoria_not_negative
    CHECK (creditos_cents >= 0 AND debitos_cents >= 0 AND quantidade >= 0);

-- An entry is reversed at most once: two consolidators that each read "not reversed yet" under
-- READ COMMITTED cannot both insert a reversal of it.
DROP INDEX lancamentos_estorno_de;
CREATE UNIQUE INDEX lancamentos_estorno_de ON lancamentos (estorno_de);

-- Totals never wrap and never turn into floats. SQLite's `+` turns an integer sum beyond 64 bits
-- into a REAL, so every total column is checked to stay an integer and not negative: a write that
-- would break that fails, and consolidation routes the record that caused it.

-- Each merchant's credits and debits of all time. Consolidation parks an entry that would take
-- either beyond 64 bits, so no day, category, month or running balance can overflow.
CREATE TABLE consolidado_comerciante (
    merchant_id    TEXT    PRIMARY KEY,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL
);
INSERT INTO consolidado_comerciante
SELECT merchant_id, SUM(creditos_cents), SUM(debitos_cents), SUM(quantidade), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM consolidado_diario
GROUP BY merchant_id;

CREATE TABLE consolidado_diario_checked (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data)
);
INSERT INTO consolidado_diario_checked SELECT * FROM consolidado_diario;
DROP TABLE consolidado_diario;
ALTER TABLE consolidado_diario_checked RENAME TO consolidado_diario;

CREATE TABLE consolidado_categoria_checked (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    categoria      TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data, categoria)
);
INSERT INTO consolidado_categoria_checked SELECT * FROM consolidado_categoria;
DROP TABLE consolidado_categoria;
ALTER TABLE consolidado_categoria_checked RENAME TO consolidado_categoria;

-- An entry is reversed at most once: two consolidators that each read "not reversed yet" cannot
-- both insert a reversal of it.
DROP INDEX lancamentos_estorno_de;
CREATE UNIQUE INDEX lancamentos_estorno_de ON lancamentos (estorno_de);

-- Only a reversal has an `estorno_de`, and only reversals need the unique index: an index of
-- every entry's NULL cost each insert an index entry for nothing.
DROP INDEX lancamentos_estorno_de;
CREATE UNIQUE INDEX lancamentos_estorno_de ON lancamentos (estorno_de) WHERE estorno_de IS NOT NULL;

-- The states' tables, clustered on their key (WITHOUT ROWID): a table with a rowid keeps its key
-- in an index beside the rows, so each upsert searched and wrote two b-trees; now one.

CREATE TABLE consolidado_diario_clustered (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data)
) WITHOUT ROWID;
INSERT INTO consolidado_diario_clustered SELECT merchant_id, data, creditos_cents, debitos_cents, quantidade, atualizado_em FROM consolidado_diario;
DROP TABLE consolidado_diario;
ALTER TABLE consolidado_diario_clustered RENAME TO consolidado_diario;

CREATE TABLE consolidado_categoria_clustered (
    merchant_id    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    categoria      TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, data, categoria)
) WITHOUT ROWID;
INSERT INTO consolidado_categoria_clustered SELECT merchant_id, data, categoria, creditos_cents, debitos_cents, quantidade, atualizado_em FROM consolidado_categoria;
DROP TABLE consolidado_categoria;
ALTER TABLE consolidado_categoria_clustered RENAME TO consolidado_categoria;

CREATE TABLE consolidado_mensal_clustered (
    merchant_id    TEXT    NOT NULL,
    mes            TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, mes)
) WITHOUT ROWID;
INSERT INTO consolidado_mensal_clustered SELECT merchant_id, mes, creditos_cents, debitos_cents, quantidade, atualizado_em FROM consolidado_mensal;
DROP TABLE consolidado_mensal;
ALTER TABLE consolidado_mensal_clustered RENAME TO consolidado_mensal;

CREATE TABLE consolidado_comerciante_clustered (
    merchant_id    TEXT    NOT NULL,
    creditos_cents INTEGER NOT NULL CHECK (typeof(creditos_cents) = 'integer' AND creditos_cents >= 0),
    debitos_cents  INTEGER NOT NULL CHECK (typeof(debitos_cents) = 'integer' AND debitos_cents >= 0),
    quantidade     INTEGER NOT NULL CHECK (typeof(quantidade) = 'integer' AND quantidade >= 0),
    atualizado_em  TEXT    NOT NULL,
    PRIMARY KEY (merchant_id)
) WITHOUT ROWID;
INSERT INTO consolidado_comerciante_clustered SELECT merchant_id, creditos_cents, debitos_cents, quantidade, atualizado_em FROM consolidado_comerciante;
DROP TABLE consolidado_comerciante;
ALTER TABLE consolidado_comerciante_clustered RENAME TO consolidado_comerciante;

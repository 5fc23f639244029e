-- Only a reversal has an `estorno_de`, and only reversals need the unique index: an index of
-- every entry's NULL cost each insert an index entry for nothing.
DROP INDEX lancamentos_estorno_de;
CREATE UNIQUE INDEX lancamentos_estorno_de ON lancamentos (estorno_de) WHERE estorno_de IS NOT NULL;

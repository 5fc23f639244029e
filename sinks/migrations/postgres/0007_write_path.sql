-- Cheaper consolidation writes, each measured (issue 29; BENCHMARKS.md).
--
-- Only a reversal has an `estorno_de`, and only reversals need the unique index: an index of
-- every entry's NULL cost each insert an index entry for nothing.
DROP INDEX lancamentos_estorno_de;
CREATE UNIQUE INDEX lancamentos_estorno_de ON lancamentos (estorno_de) WHERE estorno_de IS NOT NULL;

-- An epoch adds to stored totals. With room left on each page, the new version of a row can stay
-- on its page without new index entries (a HOT update), as the key never changes.
ALTER TABLE consolidado_diario SET (fillfactor = 80);
ALTER TABLE consolidado_categoria SET (fillfactor = 80);
ALTER TABLE consolidado_mensal SET (fillfactor = 80);
ALTER TABLE consolidado_comerciante SET (fillfactor = 80);

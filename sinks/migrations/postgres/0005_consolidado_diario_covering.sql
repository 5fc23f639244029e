-- The balance query reads a merchant's daily totals in a range and sums every day before it. With
-- the totals in the primary key's index, both are index-only scans instead of a heap fetch per
-- day (pgbench on 876k days of 10k merchants: 214–216 → 126–135 µs per query, client included).
-- Upserting 195k days, a quarter of them stored already, took the same time either way
-- (1.42–1.48 s). PostgreSQL only: SQLite has no INCLUDE.
ALTER TABLE consolidado_diario
    DROP CONSTRAINT consolidado_diario_pkey,
    ADD CONSTRAINT consolidado_diario_pkey PRIMARY KEY (merchant_id, data)
        INCLUDE (creditos_cents, debitos_cents, quantidade);

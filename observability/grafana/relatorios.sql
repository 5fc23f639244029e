-- The read-only role behind the reports' datasource (uid cashflow-relatorios), for a PostgreSQL
-- store. Run it after cashflow has migrated the store, as a role that may create roles and owns
-- the store's tables (the store's superuser, e.g. Compose's `cashflow`):
--
--   psql "$DATABASE_URL" -v password="$CASHFLOW_RELATORIOS_PASSWORD" -f observability/grafana/relatorios.sql
--
-- It can run again: for another store on the same server, after a state is added, or to change
-- the password.
--
-- What the role may read is the GRANTs below: the consolidated states (each day, day and
-- category, month, and merchant) and the entries' columns that describe nothing (not
-- `descricao`, the merchant's free text). It reads no users, clients, keys, positions or
-- secrets, and writes no table of the store. The settings after that guard the store against a
-- heavy report: sessions read-only, a query stopped after 30 s, at most 4 connections and 1 GB
-- of temporary files. The first two are defaults a session may change; the last two it cannot.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE cashflow_relatorios LOGIN PASSWORD %L', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cashflow_relatorios') \gexec
ALTER ROLE cashflow_relatorios LOGIN PASSWORD :'password' CONNECTION LIMIT 4;
ALTER ROLE cashflow_relatorios SET default_transaction_read_only = on;
ALTER ROLE cashflow_relatorios SET statement_timeout = '30s';
ALTER ROLE cashflow_relatorios SET temp_file_limit = '1GB';

GRANT USAGE ON SCHEMA public TO cashflow_relatorios;
GRANT SELECT ON consolidado_diario, consolidado_categoria, consolidado_mensal, consolidado_comerciante
    TO cashflow_relatorios;
GRANT SELECT (id, merchant_id, tipo, valor_cents, data, categoria, criado_em, estorno_de, consolidado_em)
    ON lancamentos TO cashflow_relatorios;

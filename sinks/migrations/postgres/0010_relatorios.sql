-- The reports (observability/grafana/dashboards/cashflow-relatorios.json) filter and group by
-- day with Grafana's macros, which need a date column, and read a range of days of every
-- merchant, which needs an index that leads with the day. The states keyed by `data` keep it as a
-- date too, `dia`, computed from `data`, with an index (states.rs makes declared states the same
-- way). A stored column rather than an index on the expression: the writes cost the same either
-- way (BENCHMARKS.md, the reports dashboard), and a report over a year reads it instead of
-- computing it for every row.
ALTER TABLE consolidado_diario ADD COLUMN dia DATE GENERATED ALWAYS AS
    (make_date(substr(data, 1, 4)::int, substr(data, 6, 2)::int, substr(data, 9, 2)::int)) STORED;
CREATE INDEX consolidado_diario_dia ON consolidado_diario (dia);
ALTER TABLE consolidado_categoria ADD COLUMN dia DATE GENERATED ALWAYS AS
    (make_date(substr(data, 1, 4)::int, substr(data, 6, 2)::int, substr(data, 9, 2)::int)) STORED;
CREATE INDEX consolidado_categoria_dia ON consolidado_categoria (dia);

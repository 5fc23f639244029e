//! A Grafana SQL panel's query as Grafana sends it to PostgreSQL: the dashboard's variables
//! interpolated as its SQL datasources interpolate them, then the macros expanded as its
//! PostgreSQL macro engine expands them (pkg/tsdb/grafana-postgresql-datasource/macros.go).

/// The time picker's range, as Grafana gives it to the macros: RFC 3339 in UTC.
#[derive(Clone, Copy, Debug)]
pub struct TimeRange<'a> {
    pub from: &'a str,
    pub to: &'a str,
}

/// `sql` with the single-value variable `name` (one that offers "All") set to `value`, or to
/// "All" when `None`: a value becomes a quoted literal, "All" the variable's custom all value,
/// unquoted. `$name`, `${name}` and `[[name]]` are all replaced.
pub fn interpolate(sql: &str, name: &str, value: Option<&str>, all_value: &str) -> String {
    let text = match value {
        Some(v) => format!("'{}'", v.replace('\'', "''")),
        None => all_value.to_owned(),
    };
    let braced = sql.replace(&format!("${{{name}}}"), &text).replace(&format!("[[{name}]]"), &text);
    // `$name` only where the name ends: `$comerciante` must not eat `$comerciantes`.
    let pattern = format!("${name}");
    let mut out = String::new();
    let mut rest = braced.as_str();
    while let Some(at) = rest.find(&pattern) {
        let after = &rest[at + pattern.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&pattern);
        } else {
            out.push_str(&text);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `sql` with every `$__macro(args)` expanded for `range`. Panics on a macro Grafana's
/// PostgreSQL engine does not know, as Grafana answers it with an error.
pub fn expand_macros(sql: &str, range: TimeRange<'_>) -> String {
    let mut out = String::new();
    let mut rest = sql;
    // Grafana's pattern: `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`.
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let (name, tail) = after.split_at(name_len);
        let call = tail.strip_prefix('(').and_then(|t| t.find(')').map(|end| (&t[..end], &t[end + 1..])));
        match call {
            Some((args, tail)) if !name.is_empty() => {
                let args: Vec<&str> = args.split(',').map(str::trim).collect();
                out.push_str(&macro_text(name, &args, range));
                rest = tail;
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn macro_text(name: &str, args: &[&str], range: TimeRange<'_>) -> String {
    let (from, to) = (range.from, range.to);
    match name {
        "__time" => format!("{} AS \"time\"", args[0]),
        "__timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
        "__timeFrom" => format!("'{from}'"),
        "__timeTo" => format!("'{to}'"),
        "__timeGroup" => {
            let seconds = interval_seconds(args[1].trim_matches('\''));
            format!("floor(extract(epoch from {})/{seconds})*{seconds}", args[0])
        }
        "__timeGroupAlias" => format!("{} AS \"time\"", macro_text("__timeGroup", args, range)),
        other => panic!("Grafana's PostgreSQL macros have no {other}"),
    }
}

/// Seconds in an interval such as `1d`, `6h`, `15m` or `30s`.
fn interval_seconds(interval: &str) -> u64 {
    let (n, unit) = interval.split_at(interval.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("interval {interval:?}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => panic!("interval {interval:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: TimeRange<'static> = TimeRange { from: "2026-09-10T00:00:00Z", to: "2026-10-15T23:59:59.999Z" };

    #[test]
    fn macros_expand_as_grafanas_postgresql_engine_does() {
        let sql = "SELECT $__timeGroupAlias(dia, 1d), x FROM t WHERE $__timeFilter(dia) AND m < left($__timeFrom(), 7) AND $5 = 1";
        assert_eq!(
            expand_macros(sql, RANGE),
            "SELECT floor(extract(epoch from dia)/86400)*86400 AS \"time\", x FROM t WHERE dia BETWEEN \
             '2026-09-10T00:00:00Z' AND '2026-10-15T23:59:59.999Z' AND m < left('2026-09-10T00:00:00Z', 7) AND $5 = 1"
        );
    }

    #[test]
    fn a_value_is_a_quoted_literal_and_all_the_custom_value_unquoted() {
        let sql = "WHERE (($comerciante) IS NULL OR m = ${comerciante}) AND $comerciantes";
        assert_eq!(
            interpolate(sql, "comerciante", Some("lo'ja"), "NULL"),
            "WHERE (('lo''ja') IS NULL OR m = 'lo''ja') AND $comerciantes"
        );
        assert_eq!(
            interpolate(sql, "comerciante", None, "NULL"),
            "WHERE ((NULL) IS NULL OR m = NULL) AND $comerciantes"
        );
    }
}

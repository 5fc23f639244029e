//! Where PostgreSQL's time goes in a phase, statement by statement (`pg_stat_statements`, which
//! the bench's cluster loads): the profile behind each phase's CPU figure.

use super::*;

/// How many statements a phase's profile names (the rest are summed as "others").
const SHOWN: usize = 8;

/// Clears the statistics of every statement, so that what follows is one phase's.
pub(crate) async fn reset(db: &mut PgConnection) {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut *db).await.unwrap();
    sqlx::query("SELECT pg_stat_statements_reset()").execute(&mut *db).await.unwrap();
}

/// Reports the execution time per item of the phase's costliest statements in the database of
/// `db`, and their calls, each named by its first words; the bench's own statements are left out.
pub(crate) async fn report(db: &mut PgConnection, phase: &str, items: f64, report: &mut Report) {
    let rows = sqlx::query(
        "SELECT query, calls, total_exec_time FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND query NOT LIKE '%pg_stat_statements%' AND query <> $1 ORDER BY total_exec_time DESC",
    )
    .bind(PROGRESS)
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let mut others = 0.0;
    for (i, row) in rows.iter().enumerate() {
        let (query, calls, ms): (String, i64, f64) = (row.get(0), row.get(1), row.get(2));
        if i >= SHOWN {
            others += ms;
            continue;
        }
        let words: String = query.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
        let words: String = words.chars().take(60).collect();
        report.add(&format!("{phase}: PostgreSQL time per item, {words}"), ms * 1e3 / items, "µs");
        report.add(&format!("{phase}: calls of {words}"), calls as f64, "calls");
    }
    report.add(&format!("{phase}: PostgreSQL time per item, others"), others * 1e3 / items, "µs");
}

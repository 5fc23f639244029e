//! Phase 4b: consolidation with 1, 2 and 4 sink lanes, each into a database of its own.

use super::*;

/// The name of the phase with `k` lanes.
fn label(k: usize) -> String {
    format!("consolidation, lanes: {k}")
}

/// The name of its rate.
pub(crate) fn rate(k: usize) -> String {
    label(k) + " entries/s"
}

/// Consolidates the topic again with each count of lanes, into a new database on the cluster of
/// `db` (whose URL is `shipped`), checked as phase 4 and dropped after it.
pub(crate) async fn phase(
    p: &mut Pipeline,
    db: &mut PgConnection,
    shipped: &str,
    entries: &[Lancamento],
    [broker, postgres]: [u32; 2],
    report: &mut Report,
) {
    let (shipped_url, epoch_wait) = (format!("url: \"{shipped}\""), "max_epoch_wait_ms: 50");
    for lanes in [1, 2, 4] {
        eprintln!("4b. consolidation with {lanes} sink lanes, into a database of its own");
        let name = format!("bench_lanes_{lanes}");
        let url = database_of_its_own(db, &name).await;
        let mut lanes_db = PgConnection::connect(&url).await.unwrap();
        let (url_line, lanes_line) = (format!("url: \"{url}\""), format!("{epoch_wait}\n    lanes: {lanes}"));
        p.edit_config(&shipped_url, &url_line);
        p.edit_config(epoch_wait, &lanes_line);
        let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres)]);
        consolidation(p, &mut lanes_db, entries, cpu, &label(lanes), report).await;
        p.edit_config(&lanes_line, epoch_wait);
        p.edit_config(&url_line, &shipped_url);
        // its rows are counted and checked: the disk is the next phases'
        lanes_db.close().await.unwrap();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut *db).await.unwrap();
    }
}

/// A new database on `db`'s cluster, migrated by the consolidator that first connects: its URL.
pub(crate) async fn database_of_its_own(db: &mut PgConnection, name: &str) -> String {
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut *db).await.unwrap();
    let url: String = sqlx::query_scalar(
        "SELECT 'postgres://' || current_user || '@127.0.0.1:' || \
                                          current_setting('port') || '/' || $1",
    )
    .bind(name)
    .fetch_one(&mut *db)
    .await
    .unwrap();
    url
}

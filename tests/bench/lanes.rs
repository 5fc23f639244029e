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
    let epoch_wait = "max_epoch_wait_ms: 50";
    for lanes in [1, 2, 4] {
        eprintln!("4b. consolidation with {lanes} sink lanes, into a database of its own");
        let mut own = OwnDatabase::create(p, db, shipped, &format!("bench_lanes_{lanes}")).await;
        let lanes_line = format!("{epoch_wait}\n    lanes: {lanes}");
        p.edit_config(epoch_wait, &lanes_line);
        let cpu = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres)]);
        consolidation(p, &mut own.db, entries, cpu, &label(lanes), report).await;
        p.edit_config(&lanes_line, epoch_wait);
        own.drop_it(p, db).await;
    }
}

/// A new database on the cluster of the store (whose URL is `shipped`), the pipeline's store
/// until it is dropped: its rows are checked by then, and the disk is the next phases'.
pub(crate) struct OwnDatabase {
    name: String,
    lines: [String; 2],
    pub(crate) db: PgConnection,
}

impl OwnDatabase {
    /// Creates the database `name` and makes it the pipeline's store; the consolidator that first
    /// connects migrates it.
    pub(crate) async fn create(p: &Pipeline, db: &mut PgConnection, shipped: &str, name: &str) -> OwnDatabase {
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut *db).await.unwrap();
        let url: String = sqlx::query_scalar(
            "SELECT 'postgres://' || current_user || '@127.0.0.1:' || current_setting('port') || '/' || $1",
        )
        .bind(name)
        .fetch_one(&mut *db)
        .await
        .unwrap();
        let lines = [format!("url: \"{shipped}\""), format!("url: \"{url}\"")];
        p.edit_config(&lines[0], &lines[1]);
        let own_db = PgConnection::connect(&url).await.unwrap();
        OwnDatabase { name: name.to_owned(), lines, db: own_db }
    }

    /// Puts the shipped store back and drops the database.
    pub(crate) async fn drop_it(self, p: &Pipeline, db: &mut PgConnection) {
        p.edit_config(&self.lines[1], &self.lines[0]);
        self.db.close().await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&mut *db).await.unwrap();
    }
}

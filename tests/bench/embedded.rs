//! Phase 11: the embedded default beside its own ceiling.

use sqlx::SqliteConnection;

use super::*;

/// `cashflow up`'s store and broker: the data set produced to a broker of its own, read back by a
/// raw consumer (the ceiling), then consolidated into SQLite and checked against the data set.
pub(crate) async fn embedded(entries: &[Lancamento], report: &mut Report) {
    let mut p = with_topics(Store::Sqlite).await;
    let kafka = |c: &mut ClientConfig| {
        c.set("bootstrap.servers", &p.kafka).set("broker.address.family", "v4");
    };
    let encoded: Vec<(String, Vec<u8>)> = entries.iter().map(|e| (e.merchant_id.to_string(), e.encode())).collect();
    let mut produced = Report::default();
    raw_produce(kafka, &encoded, &mut produced).await;
    drop(encoded);

    let (broker, n) = (p.pid(Role::Broker), entries.len() as f64);
    let cpu = CpuMeter::start(&[("broker", broker), ("client", std::process::id())]);
    let mut consumed = Report::default();
    raw_consume(kafka, entries.len() as u64, &mut consumed);
    report.add("embedded: raw consume records/s", consumed.get("raw consume records/s"), "records/s");
    cpu.report("embedded: raw consume", n, report);

    let store = format!("sqlite://{}", p.data_dir().join("cashflow.db").display());
    let mut cpu = CpuMeter::start(&[("broker", broker)]);
    p.launch(Role::Consolidate).await;
    cpu.add("consolidator", p.pid(Role::Consolidate));
    let mut db = SqliteConnection::connect(&store).await.unwrap();
    let want = entries.len() as i64;
    let mut timer = Consolidating::new(want);
    let progress = "SELECT COALESCE(SUM(next_offset), 0) FROM consumer_progress";
    while !timer.saw(sqlx::query_scalar(progress).fetch_one(&mut db).await.unwrap()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.add("embedded: consolidation entries/s", timer.rate(), "entries/s");
    cpu.report("embedded: consolidation", n, report);
    after_the_load(&p, "embedded", n, report).await;
    p.interrupt(Role::Consolidate).await;

    let (count, credits, debits): (i64, i64, i64) =
        sqlx::query_as("SELECT SUM(quantidade), SUM(creditos_cents), SUM(debitos_cents) FROM consolidado_diario")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let cents = |t: Tipo| entries.iter().filter(|e| e.tipo == t).map(|e| e.valor.cents()).sum::<i64>();
    assert_eq!((count, credits, debits), (want, cents(Tipo::Credito), cents(Tipo::Debito)), "embedded balances differ");
    p.stop().await;
}

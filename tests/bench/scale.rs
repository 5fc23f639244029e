//! Phase 4c: consolidation by 1, 2 and 3 consolidators of one consumer group, each run into a
//! database of its own: the total and each member's throughput, how the records read were shared,
//! and the CPU per entry. On one machine the members share its cores, so the total grows only as
//! far as those cores allow; the consolidators' CPU per entry, which stays flat when no work is
//! done twice, predicts the speed-up when each has cores of its own.

use super::*;

/// The members, in the order they join.
const MEMBERS: [Role; 3] = [Role::Consolidate, Role::SecondConsolidator, Role::ExtraConsolidator(3)];

/// The name of the phase with `n` members.
fn label(n: usize) -> String {
    format!("consolidation, {n} consolidators")
}

/// The name of its rate.
pub(crate) fn rate(n: usize) -> String {
    label(n) + " entries/s"
}

/// The name of the consolidators' CPU per entry with `n` members.
pub(crate) fn cpu(n: usize) -> String {
    label(n) + ": CPU per entry, every consolidator"
}

pub(crate) async fn phase(
    p: &mut Pipeline,
    db: &mut PgConnection,
    shipped: &str,
    entries: &[Lancamento],
    [broker, postgres]: [u32; 2],
    report: &mut Report,
) {
    let want = entries.len() as i64;
    for n in 1..=MEMBERS.len() {
        eprintln!("4c. consolidation by {n} consolidators of one group, into a database of its own");
        let mut own = lanes::OwnDatabase::create(p, db, shipped, &format!("bench_scale_{n}")).await;
        let members = &MEMBERS[..n];
        let meter = CpuMeter::start(&[("broker", broker), ("PostgreSQL", postgres)]);
        let mut spent = Vec::new();
        for &member in members {
            // A port chosen at the start may have served as a client port since: take a fresh one.
            p.stages.insert(member, format!("http://127.0.0.1:{}", cashflow_tests::free_port()));
            p.launch(member).await;
            spent.push(cpu::cpu_seconds(p.pid(member)));
        }
        let mut timer = Consolidating::new(want);
        while !timer.saw(progress(&mut own.db, "cashflow-consolidate").await) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let total = timer.rate();
        report.add(&rate(n), total, "entries/s");
        let mut read = Vec::new();
        for (&member, spent) in members.iter().zip(&mut spent) {
            let metrics = p.api.metrics(&p.stages[&member]).await;
            read.push(metrics.must("cashflow_consolidate_records_consumed_total"));
            *spent = cpu::cpu_seconds(p.pid(member)) - *spent;
        }
        let all: f64 = read.iter().sum();
        for (i, records) in read.iter().enumerate() {
            let share = records / all;
            report.add(&format!("{}: member {} share of the records read", label(n), i + 1), share * 100.0, "%");
            report.add(&format!("{}: member {} entries/s", label(n), i + 1), total * share, "entries/s");
        }
        // Above 0 only by what a rebalance at the start handed over before it was committed.
        report.add(&format!("{}: records read beyond the entries", label(n)), all - want as f64, "records");
        report.add(&cpu(n), spent.iter().sum::<f64>() / want as f64 * 1e6, "µs");
        meter.report(&label(n), want as f64, report);
        for &member in members {
            p.interrupt(member).await;
        }
        counted_once(&mut own.db, entries).await;
        own.drop_it(p, db).await;
    }
}

//! Each step of an epoch on records made here: no broker, no store.

#![allow(clippy::unwrap_used)]

use cashflow_core::Reversal;
use cashflow_core::failure::Failure;
use chrono::{TimeZone as _, Utc};

use super::*;

fn merchant(m: &str) -> MerchantId {
    MerchantId::parse(m).unwrap()
}

fn entry(m: &str, tipo: Tipo, cents: i64) -> Lancamento {
    Lancamento {
        id: EntryId::random(),
        merchant_id: merchant(m),
        tipo,
        valor: Money::from_cents(cents),
        data: "2026-03-10".parse().unwrap(),
        descricao: "venda".into(),
        categoria: None,
        criado_em: Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap(),
        estorno_de: None,
    }
}

fn reversal(m: &str, of: EntryId) -> Reversal {
    Reversal {
        id: EntryId::random(),
        merchant_id: merchant(m),
        of,
        data: "2026-03-11".parse().unwrap(),
        descricao: "estorno".into(),
        criado_em: Utc.with_ymd_and_hms(2026, 3, 11, 12, 0, 0).unwrap(),
        stated: None,
    }
}

fn record(offset: i64, payload: Vec<u8>) -> Record {
    let decoded = Incoming::decode(&payload);
    Record { topic: "lancamentos".into(), partition: 0, offset, key: None, payload, failure: None, decoded }
}

/// A retried delivery of the record first read at `origin`.
fn retried(offset: i64, payload: Vec<u8>, origin: i64) -> Record {
    let failure = Failure {
        code: Code::OriginalNotFound,
        stage: "consolidate".into(),
        detail: String::new(),
        attempt: 1,
        origin_topic: "lancamentos".into(),
        origin_partition: 0,
        origin_offset: origin,
        first_failed_at_ms: 0,
        not_before_ms: 0,
    };
    Record { failure: Some(failure), ..record(offset, payload) }
}

fn codes(rejected: &[Rejected<'_>]) -> Vec<(i64, Code)> {
    rejected.iter().map(|r| (r.record.offset, r.code)).collect()
}

#[test]
fn a_retried_delivery_counts_only_where_it_was_claimed() {
    let e = entry("loja-1", Tipo::Credito, 100);
    let batch = [record(0, e.encode()), retried(1, e.encode(), 7), retried(2, e.encode(), 8)];
    let claimed = HashSet::from([batch[1].delivery().unwrap()]);
    let (admitted, repeated) = admit(&batch, &claimed);
    assert_eq!(admitted.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(repeated, 1);
}

#[test]
fn bad_records_get_their_code_and_good_ones_pass() {
    let mut outside = entry("loja-1", Tipo::Credito, 100);
    outside.data = "2001-01-01".parse().unwrap();
    let batch = [
        record(0, b"{not json".to_vec()),
        record(1, entry("loja-1", Tipo::Debito, 5).encode()),
        record(2, outside.encode()),
        record(3, br#"{"v":9}"#.to_vec()),
    ];
    let (incoming, rejected) = decode(batch.iter().collect(), &DateWindow::default());
    assert_eq!(incoming.iter().map(|(_, r)| r.offset).collect::<Vec<_>>(), [1]);
    assert_eq!(codes(&rejected), [(0, Code::Malformed), (2, Code::InvalidField), (3, Code::UnknownVersion)]);
}

#[test]
fn reversals_resolve_against_the_store_or_the_batch_once_and_for_their_merchant() {
    let stored = entry("loja-1", Tipo::Credito, 700);
    let in_batch = entry("loja-1", Tipo::Debito, 300);
    let other_merchants = entry("loja-2", Tipo::Credito, 50);
    let reversed_before = entry("loja-1", Tipo::Credito, 10);
    let first = reversal("loja-1", stored.id);
    let batch = [
        record(0, first.encode()),
        record(1, in_batch.encode()),
        record(2, reversal("loja-1", in_batch.id).encode()),
        record(3, reversal("loja-1", stored.id).encode()),
        record(4, reversal("loja-1", other_merchants.id).encode()),
        record(5, reversal("loja-1", EntryId::random()).encode()),
        record(6, reversal("loja-1", reversed_before.id).encode()),
    ];
    let (incoming, rejected) = decode(batch.iter().collect(), &DateWindow::default());
    assert!(rejected.is_empty());
    let targets = reversal_targets(&incoming);
    assert_eq!(targets.len(), 5, "each original once");
    let originals = Originals {
        stored: [&stored, &other_merchants, &reversed_before].map(|e| (e.id, e.to_record())).into_iter().collect(),
        reversed_by: HashMap::from([(reversed_before.id, EntryId::random())]),
    };
    let (entries, rejected) = resolve(incoming, originals);
    let resolved: Vec<(i64, Tipo, i64)> = entries.iter().map(|(e, r)| (r.offset, e.tipo, e.valor.cents())).collect();
    assert_eq!(resolved, [(0, Tipo::Debito, 700), (1, Tipo::Debito, 300), (2, Tipo::Credito, 300)]);
    assert_eq!(entries[0].0.estorno_de, Some(stored.id));
    assert_eq!(
        codes(&rejected),
        [
            (3, Code::AlreadyReversed),
            (4, Code::OriginalNotFound),
            (5, Code::OriginalNotFound),
            (6, Code::AlreadyReversed)
        ]
    );
}

#[test]
fn an_id_counts_once_and_a_different_use_of_it_is_a_conflict() {
    let new = entry("loja-1", Tipo::Credito, 100);
    let known = entry("loja-1", Tipo::Debito, 40);
    let conflicting = Lancamento { valor: Money::from_cents(41), ..known.clone() };
    let batch = [
        record(0, new.encode()),
        record(1, new.encode()),
        record(2, Lancamento { valor: Money::from_cents(101), ..new.clone() }.encode()),
        record(3, known.encode()),
        record(4, conflicting.encode()),
    ];
    let (incoming, _) = decode(batch.iter().collect(), &DateWindow::default());
    let (entries, _) = resolve(incoming, Originals::default());
    let c = candidates(entries);
    assert_eq!(c.first.iter().map(|s| s.origin.offset).collect::<Vec<_>>(), [0, 3], "the first record of each id");
    let inserted = HashSet::from([new.id]);
    assert_eq!(c.seen_before(&inserted), [known.id]);
    let judged = judge(&c, &inserted, HashMap::from([(known.id, known.to_record())]));
    assert_eq!(judged.fresh.iter().map(|(_, r)| r.offset).collect::<Vec<_>>(), [0]);
    assert_eq!(judged.duplicates, 2, "offset 1 repeats the new entry, offset 3 the stored one");
    assert_eq!(codes(&judged.rejected), [(2, Code::ConflictingDuplicate), (4, Code::ConflictingDuplicate)]);
}

#[test]
fn a_second_reversal_of_one_entry_with_other_facts_is_parked_as_already_reversed() {
    let original = entry("loja-1", Tipo::Credito, 500);
    let first = reversal("loja-1", original.id);
    let later = Reversal { data: "2026-03-12".parse().unwrap(), ..first.clone() };
    let batch = [record(0, original.encode()), record(1, first.encode()), record(2, later.encode())];
    let (incoming, _) = decode(batch.iter().collect(), &DateWindow::default());
    let (entries, rejected) = resolve(incoming, Originals::default());
    assert!(rejected.is_empty(), "both reverse an entry of the batch");
    let c = candidates(entries);
    let judged = judge(&c, &HashSet::from([original.id, first.id]), HashMap::new());
    assert_eq!(judged.fresh.iter().map(|(_, r)| r.offset).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(codes(&judged.rejected), [(2, Code::AlreadyReversed)]);
}

#[test]
fn an_entry_that_would_overflow_its_merchants_totals_is_refused_and_the_rest_kept() {
    let near = DayTotals { creditos_cents: i64::MAX - 100, debitos_cents: 0, quantidade: 1 };
    let fits = entry("loja-1", Tipo::Credito, 100);
    let over = entry("loja-1", Tipo::Credito, 1);
    let debit = entry("loja-1", Tipo::Debito, 5);
    let elsewhere = entry("loja-2", Tipo::Credito, 1_000);
    let batch: Vec<Record> =
        [&fits, &over, &debit, &elsewhere].iter().enumerate().map(|(i, e)| record(i as i64, e.encode())).collect();
    let fresh: Vec<(&Lancamento, &Record)> = [&fits, &over, &debit, &elsewhere].into_iter().zip(&batch).collect();
    assert_eq!(merchants(&fresh), [&merchant("loja-1"), &merchant("loja-2")]);
    let limited = limit(fresh, HashMap::from([(merchant("loja-1"), near)]));
    assert_eq!(limited.kept.iter().map(|e| e.id).collect::<Vec<_>>(), [fits.id, debit.id, elsewhere.id]);
    assert_eq!(limited.refused, [over.id]);
    assert_eq!(codes(&limited.rejected), [(1, Code::AmountOverflow)]);
}

#[test]
fn the_next_offset_of_each_partition_is_one_past_its_last_record() {
    let mut batch = vec![record(5, vec![]), record(9, vec![]), record(7, vec![])];
    batch.push(Record { partition: 2, ..record(3, vec![]) });
    let next = next_offsets(&batch);
    assert_eq!(progress(&next), [("lancamentos".to_owned(), 0, 10), ("lancamentos".to_owned(), 2, 4)]);
}

/// Lanes take whole partitions, in the order read, and never outnumber the partitions.
#[test]
fn lanes_take_whole_partitions_in_turn_and_keep_their_order() {
    let at = |topic: &str, partition, offset| Record { topic: topic.into(), partition, ..record(offset, vec![]) };
    let batch = vec![
        at("lancamentos", 3, 10),
        at("lancamentos", 0, 5),
        at("lancamentos.retry", 0, 1),
        at("lancamentos", 3, 11),
        at("lancamentos", 1, 7),
        at("lancamentos", 0, 6),
    ];
    let positions =
        |lane: &Vec<Record>| lane.iter().map(|r| (r.topic.clone(), r.partition, r.offset)).collect::<Vec<_>>();
    let lanes = split_lanes(batch.clone(), 2);
    let l = |t: &str, p, o| (t.to_owned(), p, o);
    // partitions in order: lancamentos 0, 1, 3, then lancamentos.retry 0, dealt to lanes 0, 1, 0, 1
    let first = [l("lancamentos", 3, 10), l("lancamentos", 0, 5), l("lancamentos", 3, 11), l("lancamentos", 0, 6)];
    assert_eq!(positions(&lanes[0]), first);
    assert_eq!(positions(&lanes[1]), [l("lancamentos.retry", 0, 1), l("lancamentos", 1, 7)]);
    assert_eq!(split_lanes(batch.clone(), 64).len(), 4, "a lane per partition at most");
    assert_eq!(split_lanes(batch.clone(), 1).into_iter().map(|l| l.len()).collect::<Vec<_>>(), [6]);
    assert_eq!(split_lanes(Vec::new(), 3).len(), 1);
}

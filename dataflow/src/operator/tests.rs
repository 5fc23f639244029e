//! The dataflow against a plain recomputation, on random entry streams: backdated days, many
//! epochs of random size, and restarts from a snapshot of what was emitted so far.

use std::collections::BTreeMap;

use cashflow_core::{EntryId, Money, Tipo};
use chrono::Utc;
use proptest::prelude::*;

use super::*;

fn entry(merchant: u8, day: i32, credit: bool, cents: i64) -> Lancamento {
    categorised(merchant, day, credit, cents, None)
}

fn categorised(merchant: u8, day: i32, credit: bool, cents: i64, categoria: Option<&str>) -> Lancamento {
    Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse(&format!("m{merchant}")).unwrap(),
        tipo: if credit { Tipo::Credito } else { Tipo::Debito },
        valor: Money::from_cents(cents),
        data: BusinessDate::from_days(20_000 + day).unwrap(),
        descricao: "x".into(),
        categoria: categoria.map(str::to_owned),
        criado_em: Utc::now(),
        estorno_de: None,
    }
}

/// The oracle: totals per (merchant, day, category), summed plainly.
fn oracle(entries: &[Lancamento]) -> BTreeMap<(MerchantId, BusinessDate, Option<String>), DayTotals> {
    let mut out: BTreeMap<_, DayTotals> = BTreeMap::new();
    for e in entries {
        let t = out.entry((e.merchant_id.clone(), e.data, e.categoria.clone())).or_default();
        match e.tipo {
            Tipo::Credito => t.creditos_cents += e.valor.cents(),
            Tipo::Debito => t.debitos_cents += e.valor.cents(),
        }
        t.quantidade += 1;
    }
    out
}

fn arb_entry() -> impl Strategy<Value = Lancamento> {
    let amount = prop_oneof![Just(1i64), Just(9_999_999_999i64), 1i64..1_000_000];
    let category = prop_oneof![Just(None), Just(Some("aluguel")), Just(Some("vendas"))];
    (0u8..4, 0i32..40, any::<bool>(), amount, category).prop_map(|(m, d, c, v, k)| categorised(m, d, c, v, k))
}

fn add(to: &mut DayTotals, t: &DayTotals) {
    to.creditos_cents += t.creditos_cents;
    to.debitos_cents += t.debitos_cents;
    to.quantidade += t.quantidade;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matches_a_plain_recomputation(
        entries in prop::collection::vec(arb_entry(), 0..300),
        cuts in prop::collection::vec(1usize..60, 1..20),
        restart_at in prop::option::of(0usize..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (emitted, days) = rt.block_on(async {
            // What a store would hold: the emitted deltas, added up per category and per day.
            let mut store: BTreeMap<(MerchantId, BusinessDate, Option<String>), DayTotals> = BTreeMap::new();
            let mut days: BTreeMap<(MerchantId, BusinessDate), DayTotals> = BTreeMap::new();
            let mut c = Consolidator::start(vec![]).unwrap();
            let mut rest = &entries[..];
            for (i, cut) in cuts.iter().cycle().enumerate() {
                if rest.is_empty() { break; }
                if restart_at == Some(i) {
                    drop(c);
                    let snapshot = store.iter().map(|((m, d, k), t)| (m.clone(), *d, k.clone(), *t)).collect();
                    c = Consolidator::start(snapshot).unwrap();
                }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                rest = later;
                let refs: Vec<&Lancamento> = now.iter().collect();
                let changes = c.apply(&refs).await.unwrap();
                for (m, d, t) in daily(&changes).unwrap() {
                    add(days.entry((m, d)).or_default(), &t);
                }
                for (m, d, k, t) in changes {
                    add(store.entry((m, d, k)).or_default(), &t);
                }
            }
            (store, days)
        });
        let expected = oracle(&entries);
        let mut expected_days: BTreeMap<(MerchantId, BusinessDate), DayTotals> = BTreeMap::new();
        for ((m, d, _), t) in &expected {
            add(expected_days.entry((m.clone(), *d)).or_default(), t);
        }
        prop_assert_eq!(emitted, expected);
        prop_assert_eq!(days, expected_days);
    }
}

#[test]
fn each_epoch_yields_the_change_of_each_day() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let c = Consolidator::start(vec![]).unwrap();
        assert!(c.apply(&[]).await.unwrap().is_empty());
        let e = entry(1, 3, true, 500);
        let changed = c.apply(&[&e]).await.unwrap();
        assert_eq!(
            changed,
            vec![(
                e.merchant_id.clone(),
                e.data,
                None,
                DayTotals { creditos_cents: 500, debitos_cents: 0, quantidade: 1 }
            )]
        );
        let d = categorised(1, 3, false, 200, Some("aluguel"));
        let changed = c.apply(&[&d]).await.unwrap();
        assert_eq!(changed[0].2.as_deref(), Some("aluguel"));
        assert_eq!(changed[0].3, DayTotals { creditos_cents: 0, debitos_cents: 200, quantidade: 1 });
    });
}

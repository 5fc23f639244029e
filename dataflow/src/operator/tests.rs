//! The dataflow against a plain recomputation, on random entry streams: backdated days, many
//! epochs of random size, epochs that did not commit and come again, and restarts (an empty
//! dataflow: it holds no history).

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

/// What a store would hold: the emitted changes of every state, added up.
#[derive(Debug, Default, PartialEq, Eq)]
struct Held {
    categories: BTreeMap<(MerchantId, BusinessDate, Option<String>), DayTotals>,
    days: BTreeMap<(MerchantId, BusinessDate), DayTotals>,
    merchants: BTreeMap<MerchantId, DayTotals>,
}

/// One change per key and state in an epoch: a store adds it with one upsert per row.
fn one_change_per_key(changes: &Changes) -> bool {
    let categories: std::collections::HashSet<_> = changes.categories.iter().map(|(m, d, k, _)| (m, d, k)).collect();
    let days: std::collections::HashSet<_> = changes.days.iter().map(|(m, d, _)| (m, d)).collect();
    let merchants: std::collections::HashSet<_> = changes.merchants.iter().map(|(m, _)| m).collect();
    categories.len() == changes.categories.len()
        && days.len() == changes.days.len()
        && merchants.len() == changes.merchants.len()
}

impl Held {
    fn add(&mut self, changes: Changes) {
        for (m, d, k, t) in changes.categories {
            add(self.categories.entry((m, d, k)).or_default(), &t);
        }
        for (m, d, t) in changes.days {
            add(self.days.entry((m, d)).or_default(), &t);
        }
        for (m, t) in changes.merchants {
            add(self.merchants.entry(m).or_default(), &t);
        }
    }

    /// The plain recomputation, with zero totals left out (as a store that added a change and
    /// its reversal would hold zeros, these hold nothing).
    fn of(entries: &[Lancamento]) -> Held {
        let mut held = Held::default();
        for ((m, d, k), t) in oracle(entries) {
            add(held.days.entry((m.clone(), d)).or_default(), &t);
            add(held.merchants.entry(m.clone()).or_default(), &t);
            held.categories.insert((m, d, k), t);
        }
        held
    }

    fn without_zeros(mut self) -> Held {
        self.categories.retain(|_, t| *t != DayTotals::default());
        self.days.retain(|_, t| *t != DayTotals::default());
        self.merchants.retain(|_, t| *t != DayTotals::default());
        self
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_state_matches_a_plain_recomputation(
        entries in prop::collection::vec(arb_entry(), 0..300),
        cuts in prop::collection::vec(1usize..60, 1..20),
        restart_at in prop::option::of(0usize..20),
        not_committed in prop::option::of(0usize..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let held = rt.block_on(async {
            let mut held = Held::default();
            let mut c = Consolidator::start().unwrap();
            let mut rest = &entries[..];
            for (i, cut) in cuts.iter().cycle().enumerate() {
                if rest.is_empty() { break; }
                if restart_at == Some(i) {
                    drop(c);
                    c = Consolidator::start().unwrap();
                }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                let refs: Vec<&Lancamento> = now.iter().collect();
                let changes = c.apply(&refs).await.unwrap();
                prop_assert!(one_change_per_key(&changes), "{changes:?}");
                if not_committed == Some(i) {
                    // The epoch did not commit: nothing reaches the store, and the next epoch
                    // carries the same entries again. It yields the same changes: the epoch that
                    // failed left nothing behind in the dataflow.
                    let again = c.apply(&refs).await.unwrap();
                    let (mut first, mut second) = (Held::default(), Held::default());
                    first.add(changes);
                    second.add(again);
                    prop_assert_eq!(first, second);
                    continue;
                }
                rest = later;
                held.add(changes);
            }
            Ok(held)
        })?;
        prop_assert_eq!(held.without_zeros(), Held::of(&entries).without_zeros());
    }
}

#[test]
fn each_epoch_yields_the_change_of_each_day() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let c = Consolidator::start().unwrap();
        assert_eq!(c.apply(&[]).await.unwrap(), Changes::default());
        let e = entry(1, 3, true, 500);
        let changed = c.apply(&[&e]).await.unwrap();
        let five = DayTotals { creditos_cents: 500, debitos_cents: 0, quantidade: 1 };
        assert_eq!(changed.categories, vec![(e.merchant_id.clone(), e.data, None, five)]);
        assert_eq!(changed.days, vec![(e.merchant_id.clone(), e.data, five)]);
        assert_eq!(changed.merchants, vec![(e.merchant_id.clone(), five)]);
        let d = categorised(1, 3, false, 200, Some("aluguel"));
        let changed = c.apply(&[&d, &e]).await.unwrap();
        let two = DayTotals { creditos_cents: 0, debitos_cents: 200, quantidade: 1 };
        assert_eq!(changed.categories.len(), 2, "{changed:?}");
        assert!(changed.categories.contains(&(d.merchant_id.clone(), d.data, Some("aluguel".into()), two)));
        let both = DayTotals { creditos_cents: 500, debitos_cents: 200, quantidade: 2 };
        assert_eq!(changed.days, vec![(e.merchant_id.clone(), e.data, both)], "one change per day");
    });
}

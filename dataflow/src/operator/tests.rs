//! The dataflow against a plain recomputation, on random entry streams and random state
//! declarations: backdated days, many epochs of random size, epochs that did not commit and come
//! again, and restarts (an empty dataflow: it holds no history).

use std::collections::{BTreeMap, HashSet};

use cashflow_core::estado::Field;
use cashflow_core::{EntryId, MerchantId, Money, Tipo};
use chrono::Datelike as _;
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

/// A field of an entry, computed plainly from the entry (not from the dataflow's period day).
fn field(e: &Lancamento, f: Field) -> String {
    let date = e.data.date();
    match f {
        Field::MerchantId => e.merchant_id.to_string(),
        Field::Data => date.format("%Y-%m-%d").to_string(),
        Field::Categoria => e.categoria.clone().unwrap_or_default(),
        Field::Tipo => e.tipo.as_str().to_owned(),
        Field::Mes => date.format("%Y-%m").to_string(),
        Field::Ano => date.year().to_string(),
        Field::Semana => format!("{}-W{:02}", date.iso_week().year(), date.iso_week().week()),
    }
}

/// What a store holds: per (state, key values), the totals.
type Held = BTreeMap<(usize, Vec<String>), DayTotals>;

/// The oracle: each state's totals per key, summed plainly from the entries, zeros left out (as
/// a store that added a change and its reversal would hold zeros, these hold nothing).
fn oracle(keys: &[Key], entries: &[Lancamento]) -> Held {
    let mut out = Held::new();
    for e in entries {
        for (i, key) in keys.iter().enumerate() {
            let values = key.fields().iter().map(|f| field(e, *f)).collect();
            add(out.entry((i, values)).or_default(), &e.totals());
        }
    }
    without_zeros(out)
}

fn without_zeros(mut held: Held) -> Held {
    held.retain(|_, t| *t != DayTotals::default());
    held
}

fn held_add(held: &mut Held, changes: Changes) {
    for (i, state) in changes.rows().unwrap().iter().enumerate() {
        for (values, t) in text(state) {
            add(held.entry((i, values)).or_default(), &t);
        }
    }
}

/// One state's changes with its values as owned text.
fn text(changes: &Rows<&str>) -> Vec<(Vec<String>, DayTotals)> {
    changes.iter().map(|(values, t)| (values.iter().map(|v| v.to_string()).collect(), *t)).collect()
}

fn arb_entry() -> impl Strategy<Value = Lancamento> {
    let amount = prop_oneof![Just(1i64), Just(9_999_999_999i64), 1i64..1_000_000];
    let category = prop_oneof![Just(None), Just(Some("aluguel")), Just(Some("vendas"))];
    // days around New Year, across months and years, or a few close together
    let day = prop_oneof![0i32..40, 0i32..800];
    (0u8..4, day, any::<bool>(), amount, category).prop_map(|(m, d, c, v, k)| categorised(m, d, c, v, k))
}

/// A random key: `merchant_id`, then any of the other fields, in any order.
fn arb_key() -> impl Strategy<Value = Key> {
    let others = Just(Field::ALL[1..].to_vec()).prop_shuffle();
    (others, 0usize..=6).prop_map(|(others, n)| {
        Key::new([Field::MerchantId].into_iter().chain(others.into_iter().take(n)).collect()).unwrap()
    })
}

/// The shipped states: day and category, day, month, merchant.
fn shipped() -> Vec<Key> {
    use Field::*;
    [vec![MerchantId, Data, Categoria], vec![MerchantId, Data], vec![MerchantId, Mes], vec![MerchantId]]
        .into_iter()
        .map(|k| Key::new(k).unwrap())
        .collect()
}

fn add(to: &mut DayTotals, t: &DayTotals) {
    to.creditos_cents += t.creditos_cents;
    to.debitos_cents += t.debitos_cents;
    to.quantidade += t.quantidade;
}

/// One change per key and state in an epoch: a store adds it with one upsert per row.
fn one_change_per_key(changes: &Changes) -> bool {
    changes
        .rows()
        .unwrap()
        .iter()
        .all(|state| state.iter().map(|(values, _)| values).collect::<HashSet<_>>().len() == state.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_state_matches_a_plain_recomputation(
        keys in prop_oneof![Just(shipped()), prop::collection::vec(arb_key(), 1..6)],
        entries in prop::collection::vec(arb_entry(), 0..300),
        cuts in prop::collection::vec(1usize..60, 1..20),
        restart_at in prop::option::of(0usize..20),
        not_committed in prop::option::of(0usize..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let held = rt.block_on(async {
            let mut held = Held::new();
            let mut c = Consolidator::start(keys.clone()).unwrap();
            let mut rest = &entries[..];
            for (i, cut) in cuts.iter().cycle().enumerate() {
                if rest.is_empty() { break; }
                if restart_at == Some(i) {
                    drop(c);
                    c = Consolidator::start(keys.clone()).unwrap();
                }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                let changes = c.apply(now.iter().map(Fact::from)).await.unwrap();
                prop_assert_eq!(changes.rows().unwrap().len(), keys.len());
                prop_assert!(one_change_per_key(&changes), "{changes:?}");
                if not_committed == Some(i) {
                    // The epoch did not commit: nothing reaches the store, and the next epoch
                    // carries the same entries again. It yields the same changes: the epoch that
                    // failed left nothing behind in the dataflow.
                    let again = c.apply(now.iter().map(Fact::from)).await.unwrap();
                    let (mut first, mut second) = (Held::new(), Held::new());
                    held_add(&mut first, changes);
                    held_add(&mut second, again);
                    prop_assert_eq!(first, second);
                    continue;
                }
                rest = later;
                held_add(&mut held, changes);
            }
            Ok(held)
        })?;
        prop_assert_eq!(without_zeros(held), oracle(&keys, &entries));
    }
}

#[test]
fn each_epoch_yields_the_change_of_each_key() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let c = Consolidator::start(shipped()).unwrap();
        let none = c.apply([]).await.unwrap();
        assert_eq!(none.rows().unwrap().iter().map(Rows::len).collect::<Vec<_>>(), vec![0; 4]);
        let e = entry(1, 3, true, 500);
        let changed = c.apply([Fact::from(&e)]).await.unwrap();
        let changed = changed.rows().unwrap();
        let five = DayTotals { creditos_cents: 500, debitos_cents: 0, quantidade: 1 };
        let (m, d) = (e.merchant_id.to_string(), e.data.to_string());
        assert_eq!(text(&changed[0]), vec![(vec![m.clone(), d.clone(), String::new()], five)]);
        assert_eq!(text(&changed[1]), vec![(vec![m.clone(), d.clone()], five)]);
        assert_eq!(text(&changed[2]), vec![(vec![m.clone(), d[..7].to_owned()], five)]);
        assert_eq!(text(&changed[3]), vec![(vec![m.clone()], five)]);
        let debit = categorised(1, 3, false, 200, Some("aluguel"));
        let changed = c.apply([Fact::from(&debit), Fact::from(&e)]).await.unwrap();
        let changed = changed.rows().unwrap();
        let two = DayTotals { creditos_cents: 0, debitos_cents: 200, quantidade: 1 };
        assert_eq!(changed[0].len(), 2, "{changed:?}");
        assert!(text(&changed[0]).contains(&(vec![m.clone(), d.clone(), "aluguel".into()], two)));
        let both = DayTotals { creditos_cents: 500, debitos_cents: 200, quantidade: 2 };
        assert_eq!(text(&changed[1]), vec![(vec![m, d], both)], "one change per day");
    });
}

#[test]
fn each_state_is_computed_from_the_coarsest_state_it_follows_from() {
    use Field::*;
    let key = |fields: &[Field]| Key::new(fields.to_vec()).unwrap();
    let keys = [
        key(&[MerchantId]),
        key(&[MerchantId, Mes]),
        key(&[MerchantId, Data]),
        key(&[MerchantId, Data, Categoria]),
        key(&[MerchantId, Mes, Tipo]),
    ];
    let from: BTreeMap<usize, Option<usize>> = plan(&keys).into_iter().collect();
    assert_eq!(from[&3], None, "the finest state reads the entries");
    assert_eq!(from[&2], Some(3), "a day from its categories");
    assert_eq!(from[&1], Some(2), "a month from its days");
    assert_eq!(from[&0], Some(1), "a merchant from its months (fewer than its days)");
    assert_eq!(from[&4], None, "no other state has tipo");
}

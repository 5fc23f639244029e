//! The daily consolidated balance (*saldo diário consolidado*).

use serde::Serialize;

use crate::{BusinessDate, Money};

/// One merchant-day's movement: the consolidated state the dataflow keeps and the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct DayTotals {
    pub creditos_cents: i64,
    pub debitos_cents: i64,
    pub quantidade: i64,
}

/// A total or balance that does not fit in 64-bit cents. Consolidation parks any entry whose
/// effect would make one (a merchant's credits and its debits each stay within `i64`, so every
/// day, month and running balance does); a store that holds one anyway is answered with this,
/// never with a wrapped figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a consolidated total does not fit in 64-bit cents")]
pub struct OutOfRange;

impl crate::failure::Transient for OutOfRange {
    fn is_transient(&self) -> bool {
        false
    }
}

impl DayTotals {
    pub fn saldo_cents(&self) -> Result<i64, OutOfRange> {
        self.creditos_cents.checked_sub(self.debitos_cents).ok_or(OutOfRange)
    }

    /// Both totals added, or [`OutOfRange`].
    pub fn checked_add(&self, other: &DayTotals) -> Result<DayTotals, OutOfRange> {
        Ok(DayTotals {
            creditos_cents: self.creditos_cents.checked_add(other.creditos_cents).ok_or(OutOfRange)?,
            debitos_cents: self.debitos_cents.checked_add(other.debitos_cents).ok_or(OutOfRange)?,
            quantidade: self.quantidade.checked_add(other.quantidade).ok_or(OutOfRange)?,
        })
    }
}

fn carry(balance: i64, t: &DayTotals) -> Result<i64, OutOfRange> {
    balance.checked_add(t.saldo_cents()?).ok_or(OutOfRange)
}

/// One day of the balance series, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DailyBalance {
    pub data: BusinessDate,
    pub creditos: Money,
    pub debitos: Money,
    pub saldo_do_dia: Money,
    /// The sum of every earlier day's `saldo_do_dia`.
    pub saldo_inicial: Money,
    pub saldo_final: Money,
    pub lancamentos: i64,
    /// The day comes after the last consolidation (the date of `atualizado_ate`): its figures are a
    /// projection (the carried balance plus any future-dated entries already consolidated), and
    /// entries for it may still be on their way.
    pub projetado: bool,
}

/// A merchant's consolidated days in date order, each with the balance carried into it: the
/// days of any range, and the balance before it, without summing every earlier day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayHistory {
    days: Vec<(BusinessDate, DayTotals)>,
    /// `carried[i]` is the sum of `saldo_cents` over `days[..i]`; one more than `days`.
    carried: Vec<i64>,
}

impl DayHistory {
    /// The history of these days, one row per day, in any order.
    pub fn new(mut days: Vec<(BusinessDate, DayTotals)>) -> Result<Self, OutOfRange> {
        days.sort_unstable_by_key(|(d, _)| *d);
        let mut carried = Vec::with_capacity(days.len() + 1);
        let mut balance = 0i64;
        carried.push(balance);
        for (_, t) in &days {
            balance = carry(balance, t)?;
            carried.push(balance);
        }
        Ok(DayHistory { days, carried })
    }

    /// How many days have entries.
    pub fn len(&self) -> usize {
        self.days.len()
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// The balance carried into `de` (the sum of every earlier day) and the days in `[de, ate]`,
    /// in order.
    pub fn range(&self, de: BusinessDate, ate: BusinessDate) -> (i64, &[(BusinessDate, DayTotals)]) {
        let start = self.days.partition_point(|(d, _)| *d < de);
        let end = self.days.partition_point(|(d, _)| *d <= ate).max(start);
        (self.carried[start], &self.days[start..end])
    }
}

/// The series for every day in `[de, ate]`, with no gaps: a day without entries shows zero
/// movement and carries the balance. `opening_cents` is the sum of all days before `de`; `days`
/// are the days with entries, in date order. Days after `consolidated_on` (every day, if
/// consolidation never ran) are marked `projetado`.
pub fn daily_series(
    de: BusinessDate,
    ate: BusinessDate,
    opening_cents: i64,
    days: &[(BusinessDate, DayTotals)],
    consolidated_on: Option<BusinessDate>,
) -> Result<Vec<DailyBalance>, OutOfRange> {
    let mut out = Vec::with_capacity(usize::try_from((ate.date() - de.date()).num_days() + 1).unwrap_or(0));
    let mut balance = opening_cents;
    let mut with_entries = days.iter().skip_while(|(d, _)| *d < de).peekable();
    let mut day = Some(de);
    while let Some(d) = day.filter(|d| *d <= ate) {
        let t = with_entries.next_if(|(on, _)| *on == d).map(|(_, t)| *t).unwrap_or_default();
        let inicial = balance;
        balance = carry(balance, &t)?;
        out.push(DailyBalance {
            data: d,
            creditos: Money::from_cents(t.creditos_cents),
            debitos: Money::from_cents(t.debitos_cents),
            saldo_do_dia: Money::from_cents(t.saldo_cents()?),
            saldo_inicial: Money::from_cents(inicial),
            saldo_final: Money::from_cents(balance),
            lancamentos: t.quantidade,
            projetado: consolidated_on.is_none_or(|on| d > on),
        });
        day = d.succ();
    }
    Ok(out)
}

/// One month of the balance series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonthlyBalance {
    /// `YYYY-MM`.
    #[cfg_attr(feature = "openapi", schema(example = "2026-11"))]
    pub mes: String,
    pub creditos: Money,
    pub debitos: Money,
    pub saldo_do_mes: Money,
    /// The closing balance of the month before.
    pub saldo_inicial: Money,
    /// The closing balance of the month.
    pub saldo_final: Money,
    pub lancamentos: i64,
}

/// The twelve months of `year`, from its months' totals (`1..=12`) and the balance carried into
/// it; a month without entries shows zero movement and carries the balance.
pub fn monthly_series(
    year: i32,
    opening_cents: i64,
    totals: &[(u32, DayTotals)],
) -> Result<Vec<MonthlyBalance>, OutOfRange> {
    let mut months = [DayTotals::default(); 12];
    for (month, t) in totals {
        let m = months.get_mut((*month as usize).wrapping_sub(1)).ok_or(OutOfRange)?;
        *m = m.checked_add(t)?;
    }
    let mut balance = opening_cents;
    months
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let inicial = balance;
            balance = carry(balance, t)?;
            Ok(MonthlyBalance {
                mes: format!("{year:04}-{:02}", i + 1),
                creditos: Money::from_cents(t.creditos_cents),
                debitos: Money::from_cents(t.debitos_cents),
                saldo_do_mes: Money::from_cents(t.saldo_cents()?),
                saldo_inicial: Money::from_cents(inicial),
                saldo_final: Money::from_cents(balance),
                lancamentos: t.quantidade,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> BusinessDate {
        s.parse().unwrap()
    }

    #[test]
    fn carries_the_balance_across_empty_days() {
        let totals = [
            (d("2026-01-01"), DayTotals { creditos_cents: 1000, debitos_cents: 0, quantidade: 1 }),
            (d("2026-01-03"), DayTotals { creditos_cents: 0, debitos_cents: 250, quantidade: 2 }),
        ];
        let s = daily_series(d("2026-01-01"), d("2026-01-04"), 50, &totals, Some(d("2026-01-02"))).unwrap();
        let finals: Vec<String> = s.iter().map(|b| b.saldo_final.to_string()).collect();
        assert_eq!(finals, ["10.50", "10.50", "8.00", "8.00"]);
        assert_eq!(s[2].saldo_inicial.to_string(), "10.50");
        assert_eq!(s[2].saldo_do_dia.to_string(), "-2.50");
        assert_eq!(s[1].lancamentos, 0);
        let projected: Vec<bool> = s.iter().map(|b| b.projetado).collect();
        assert_eq!(projected, [false, false, true, true], "days after the last consolidation");
        assert!(daily_series(d("2026-01-01"), d("2026-01-01"), 0, &totals, None).unwrap()[0].projetado);
    }

    /// Totals that a store should never hold (two days of i64::MAX credits) are an error on
    /// every path that sums them, never a wrapped balance.
    #[test]
    fn totals_beyond_64_bits_are_an_error_not_a_wrapped_balance() {
        let max = DayTotals { creditos_cents: i64::MAX, debitos_cents: 0, quantidade: 1 };
        let days = [(d("2026-01-01"), max), (d("2026-01-02"), max)];
        assert_eq!(DayHistory::new(days.to_vec()), Err(OutOfRange));
        assert_eq!(daily_series(d("2026-01-01"), d("2026-01-02"), 0, &days, None), Err(OutOfRange));
        assert_eq!(monthly_series(2026, 0, &[(1, max), (1, max)]), Err(OutOfRange));
        assert_eq!(monthly_series(2026, 0, &[(1, max), (2, max)]), Err(OutOfRange));
        assert_eq!(daily_series(d("2026-01-02"), d("2026-01-02"), 1, &days[1..], None), Err(OutOfRange));
        let owing = DayTotals { creditos_cents: 0, debitos_cents: i64::MAX, quantidade: 1 };
        assert_eq!(owing.saldo_cents(), Ok(-i64::MAX));
        assert_eq!(
            daily_series(d("2026-01-01"), d("2026-01-01"), -2, &[(d("2026-01-01"), owing)], None),
            Err(OutOfRange)
        );
    }

    proptest::proptest! {
        /// Any range of a history, against a plain recomputation from the days themselves.
        #[test]
        fn a_range_of_the_history_is_what_summing_the_days_gives(
            rows in proptest::collection::btree_map(0i32..120, (0i64..10_000, 0i64..10_000, 1i64..5), 0..60),
            from in -5i32..125,
            len in 0i32..40,
        ) {
            let base = d("2026-01-01").days();
            let day = |i: i32| BusinessDate::from_days(base + i).unwrap();
            let days: Vec<(BusinessDate, DayTotals)> = rows
                .iter()
                .rev()
                .map(|(i, (c, db, q))| (day(*i), DayTotals { creditos_cents: *c, debitos_cents: *db, quantidade: *q }))
                .collect();
            let history = DayHistory::new(days.clone()).unwrap();
            proptest::prop_assert_eq!(history.len(), days.len());
            let (de, ate) = (day(from), day(from + len));
            let (opening, in_range) = history.range(de, ate);
            let expected_opening: i64 = days.iter().filter(|(d, _)| *d < de).map(|(_, t)| t.saldo_cents().unwrap()).sum();
            proptest::prop_assert_eq!(opening, expected_opening);
            let mut expected: Vec<_> = days.iter().filter(|(d, _)| de <= *d && *d <= ate).copied().collect();
            expected.sort();
            proptest::prop_assert_eq!(in_range, &expected[..]);

            let series = daily_series(de, ate, opening, in_range, None).unwrap();
            proptest::prop_assert_eq!(series.len() as i32, len + 1);
            let mut balance = expected_opening;
            for b in &series {
                let t = days.iter().find(|(d, _)| *d == b.data).map(|(_, t)| *t).unwrap_or_default();
                proptest::prop_assert_eq!(b.saldo_inicial, Money::from_cents(balance));
                balance += t.saldo_cents().unwrap();
                proptest::prop_assert_eq!(b.saldo_final, Money::from_cents(balance));
                proptest::prop_assert_eq!(b.lancamentos, t.quantidade);
            }
        }
    }
}

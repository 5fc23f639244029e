//! The daily consolidated balance (*saldo diário consolidado*).

use std::collections::BTreeMap;

use chrono::Datelike as _;
use serde::Serialize;

use crate::{BusinessDate, Money};

/// One merchant-day's movement: the consolidated state the dataflow keeps and the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DayTotals {
    pub creditos_cents: i64,
    pub debitos_cents: i64,
    pub quantidade: i64,
}

impl DayTotals {
    pub fn saldo_cents(&self) -> i64 {
        self.creditos_cents - self.debitos_cents
    }
}

/// One day of the balance series, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// The series for every day in `[de, ate]`, with no gaps: a day without entries shows zero
/// movement and carries the balance. `opening_cents` is the sum of all days before `de`. Days
/// after `consolidated_on` (every day, if consolidation never ran) are marked `projetado`.
pub fn daily_series(
    de: BusinessDate,
    ate: BusinessDate,
    opening_cents: i64,
    totals: &BTreeMap<BusinessDate, DayTotals>,
    consolidated_on: Option<BusinessDate>,
) -> Vec<DailyBalance> {
    let mut out = Vec::new();
    let mut balance = opening_cents;
    let mut day = Some(de);
    while let Some(d) = day.filter(|d| *d <= ate) {
        let t = totals.get(&d).copied().unwrap_or_default();
        let inicial = balance;
        balance += t.saldo_cents();
        out.push(DailyBalance {
            data: d,
            creditos: Money::from_cents(t.creditos_cents),
            debitos: Money::from_cents(t.debitos_cents),
            saldo_do_dia: Money::from_cents(t.saldo_cents()),
            saldo_inicial: Money::from_cents(inicial),
            saldo_final: Money::from_cents(balance),
            lancamentos: t.quantidade,
            projetado: consolidated_on.is_none_or(|on| d > on),
        });
        day = d.succ();
    }
    out
}

/// One month of the balance series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MonthlyBalance {
    /// `YYYY-MM`.
    #[schema(example = "2026-11")]
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

/// The twelve months of `year`, from its days' totals and the balance carried into it; a month
/// without entries shows zero movement and carries the balance.
pub fn monthly_series(
    year: i32,
    opening_cents: i64,
    totals: &BTreeMap<BusinessDate, DayTotals>,
) -> Vec<MonthlyBalance> {
    let mut months = [DayTotals::default(); 12];
    for (day, t) in totals.iter().filter(|(d, _)| d.date().year() == year) {
        let m = &mut months[day.date().month0() as usize];
        m.creditos_cents += t.creditos_cents;
        m.debitos_cents += t.debitos_cents;
        m.quantidade += t.quantidade;
    }
    let mut balance = opening_cents;
    months
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let inicial = balance;
            balance += t.saldo_cents();
            MonthlyBalance {
                mes: format!("{year:04}-{:02}", i + 1),
                creditos: Money::from_cents(t.creditos_cents),
                debitos: Money::from_cents(t.debitos_cents),
                saldo_do_mes: Money::from_cents(t.saldo_cents()),
                saldo_inicial: Money::from_cents(inicial),
                saldo_final: Money::from_cents(balance),
                lancamentos: t.quantidade,
            }
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
        let totals = BTreeMap::from([
            (d("2026-01-01"), DayTotals { creditos_cents: 1000, debitos_cents: 0, quantidade: 1 }),
            (d("2026-01-03"), DayTotals { creditos_cents: 0, debitos_cents: 250, quantidade: 2 }),
        ]);
        let s = daily_series(d("2026-01-01"), d("2026-01-04"), 50, &totals, Some(d("2026-01-02")));
        let finals: Vec<String> = s.iter().map(|b| b.saldo_final.to_string()).collect();
        assert_eq!(finals, ["10.50", "10.50", "8.00", "8.00"]);
        assert_eq!(s[2].saldo_inicial.to_string(), "10.50");
        assert_eq!(s[2].saldo_do_dia.to_string(), "-2.50");
        assert_eq!(s[1].lancamentos, 0);
        let projected: Vec<bool> = s.iter().map(|b| b.projetado).collect();
        assert_eq!(projected, [false, false, true, true], "days after the last consolidation");
        assert!(daily_series(d("2026-01-01"), d("2026-01-01"), 0, &totals, None)[0].projetado);
    }
}
